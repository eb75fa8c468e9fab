#[eventbus::catalog]
pub mod events {
    use eventbus::event;

    /// An approval was granted.
    #[event(name = "approval.granted", key = approval_id)]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct ApprovalGranted {
        pub approval_id: String,
    }

    #[eventbus::event(name = "approval.rejected", version = 2, topic = "approvals")]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct ApprovalRejected {
        pub approval_id: String,
        pub reason: String,
    }

    #[event(name = "user-profile.updated")]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct ProfileUpdated;

    /// Not an event: left out of the catalog.
    pub struct Helper;
}

#[eventbus::catalog(crate = "::eventbus")]
mod private_events {
    #[eventbus::event(name = "type")]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Typed;
}

async fn grant_then_reject(publisher: &events::Publisher) -> Result<(), eventbus::Error> {
    let id: eventbus::Uuid = publisher
        .approval_granted(events::ApprovalGranted { approval_id: "a-1".into() })
        .await?;
    publisher
        .approval_rejected(events::ApprovalRejected {
            approval_id: id.to_string(),
            reason: "late".into(),
        })
        .await?;
    publisher.user_profile_updated(events::ProfileUpdated).await?;
    let _: &eventbus::Publisher = publisher.inner();
    Ok(())
}

async fn typed(publisher: private_events::Publisher) -> Result<eventbus::Uuid, eventbus::Error> {
    publisher.r#type(private_events::Typed).await
}

fn main() {
    let names: Vec<&str> = events::CATALOG.iter().map(|e| e.name).collect();
    assert_eq!(names, ["approval.granted", "approval.rejected", "user-profile.updated"]);
    assert_eq!(events::CATALOG[0].key, Some("approval_id"));
    assert_eq!(events::CATALOG[1].version, 2);
    assert_eq!(events::CATALOG[1].topic, "approvals");
    assert_eq!(private_events::CATALOG.len(), 1);
    let _ = (grant_then_reject, typed, events::Publisher::new);
}
