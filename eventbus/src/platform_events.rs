//! A ready catalog of common platform events (feature `platform-events`): approvals, users,
//! orders and agent runs, each carrying the tenant it belongs to. Import it
//! (`BusBuilder::catalog(eventbus::platform_events::CATALOG)`) or copy it into your service
//! as a start.
//!
//! Every payload holds `tenant_id`; publish with the envelope's tenant set too
//! (`Envelope::new(event).with_tenant(tenant)`), so handlers, dead letters and the inbox see
//! it without decoding the data.
//!
//! ```
//! use eventbus::platform_events::{ApprovalRequested, CATALOG};
//! use eventbus::{Envelope, Event};
//!
//! assert!(CATALOG.iter().any(|e| e.name == "agent.error"));
//! let request = ApprovalRequested {
//!     tenant_id: "acme".into(),
//!     approval_id: "a-1".into(),
//!     requested_by: "u-7".into(),
//!     subject: "expense #42".into(),
//! };
//! let envelope = Envelope::new(request).with_tenant("acme");
//! assert_eq!(envelope.event_type, "approval.requested");
//! assert_eq!(envelope.data.partition_key().as_deref(), Some("a-1"));
//! ```

/// The events, with the generated `CATALOG`.
#[crate::catalog(crate = "crate")]
pub mod events {
    use serde::{Deserialize, Serialize};

    /// Someone asked for an approval.
    #[crate::event(name = "approval.requested", version = 1, key = approval_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct ApprovalRequested {
        /// The tenant.
        pub tenant_id: String,
        /// The approval.
        pub approval_id: String,
        /// Who asked.
        pub requested_by: String,
        /// What is to be approved.
        pub subject: String,
    }

    /// An approval was granted.
    #[crate::event(name = "approval.granted", version = 1, key = approval_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct ApprovalGranted {
        /// The tenant.
        pub tenant_id: String,
        /// The approval.
        pub approval_id: String,
        /// Who granted it.
        pub granted_by: String,
    }

    /// An approval was rejected.
    #[crate::event(name = "approval.rejected", version = 1, key = approval_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct ApprovalRejected {
        /// The tenant.
        pub tenant_id: String,
        /// The approval.
        pub approval_id: String,
        /// Who rejected it.
        pub rejected_by: String,
        /// Why.
        pub reason: String,
    }

    /// Nobody answered an approval in time.
    #[crate::event(name = "approval.expired", version = 1, key = approval_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct ApprovalExpired {
        /// The tenant.
        pub tenant_id: String,
        /// The approval.
        pub approval_id: String,
    }

    /// A user was invited.
    #[crate::event(name = "user.invited", version = 1, key = email, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct UserInvited {
        /// The tenant.
        pub tenant_id: String,
        /// The invitee's email.
        pub email: String,
        /// Who invited them.
        pub invited_by: String,
    }

    /// An invited user joined.
    #[crate::event(name = "user.joined", version = 1, key = user_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct UserJoined {
        /// The tenant.
        pub tenant_id: String,
        /// The new user.
        pub user_id: String,
        /// Their email.
        pub email: String,
    }

    /// An order was placed.
    #[crate::event(name = "order.created", version = 1, key = order_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct OrderCreated {
        /// The tenant.
        pub tenant_id: String,
        /// The order.
        pub order_id: String,
        /// The customer.
        pub customer_id: String,
        /// Total, in the currency's smallest unit.
        pub total_minor: i64,
        /// ISO 4217 currency code.
        pub currency: String,
    }

    /// An order's status changed.
    #[crate::event(name = "order.updated", version = 1, key = order_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct OrderUpdated {
        /// The tenant.
        pub tenant_id: String,
        /// The order.
        pub order_id: String,
        /// The new status.
        pub status: String,
    }

    /// An order was cancelled.
    #[crate::event(name = "order.cancelled", version = 1, key = order_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct OrderCancelled {
        /// The tenant.
        pub tenant_id: String,
        /// The order.
        pub order_id: String,
        /// Why, when known.
        pub reason: Option<String>,
    }

    /// An order was fulfilled.
    #[crate::event(name = "order.completed", version = 1, key = order_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct OrderCompleted {
        /// The tenant.
        pub tenant_id: String,
        /// The order.
        pub order_id: String,
    }

    /// An agent run started.
    #[crate::event(name = "agent.started", version = 1, key = run_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct AgentStarted {
        /// The tenant.
        pub tenant_id: String,
        /// The run.
        pub run_id: String,
        /// Which agent.
        pub agent: String,
    }

    /// An agent run completed.
    #[crate::event(name = "agent.completed", version = 1, key = run_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct AgentCompleted {
        /// The tenant.
        pub tenant_id: String,
        /// The run.
        pub run_id: String,
        /// Which agent.
        pub agent: String,
        /// How long it ran, in milliseconds.
        pub duration_ms: u64,
    }

    /// An agent run failed.
    #[crate::event(name = "agent.error", version = 1, key = run_id, crate = "crate")]
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct AgentError {
        /// The tenant.
        pub tenant_id: String,
        /// The run.
        pub run_id: String,
        /// Which agent.
        pub agent: String,
        /// What went wrong.
        pub error: String,
    }
}

pub use events::*;
