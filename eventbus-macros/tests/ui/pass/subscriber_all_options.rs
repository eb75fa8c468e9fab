use eventbus::{
    event, subscriber, Backoff, Context, Envelope, EventGroup, HandlerResult, IntoSubscription,
    Subscription,
};
use std::time::Duration;

#[event(name = "approval.granted", key = approval_id)]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ApprovalGranted {
    pub approval_id: String,
}

#[event(name = "approval.rejected")]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ApprovalRejected {
    pub approval_id: String,
}

#[derive(EventGroup)]
pub enum ApprovalEvents {
    Granted(ApprovalGranted),
    Rejected(ApprovalRejected),
}

/// Bills granted approvals.
#[subscriber(
    "approval.*",
    group = "billing",
    retries = 5,
    backoff(initial = "250ms", max = "1m", multiplier = 3.0, jitter = false),
    concurrency = 4,
    dlq = true,
    timeout = "30s",
    park_keys = true,
    crate = "::eventbus"
)]
pub async fn bill(ctx: Context, env: Envelope<ApprovalGranted>) -> HandlerResult {
    let _ = (ctx.attempt(), env.data.approval_id);
    Ok(())
}

#[subscriber("#", schedule = ["1m", "5m", "30m"], delayed = ["1m", "5m", "30m"])]
async fn audit(env: Envelope<serde_json::Value>) -> HandlerResult {
    let _ = env.data;
    Ok(())
}

#[subscriber("approval.**", backoff(max = "2h"))]
async fn approvals(env: Envelope<ApprovalEvents>) -> HandlerResult {
    match env.data {
        ApprovalEvents::Granted(e) => drop(e.approval_id),
        ApprovalEvents::Rejected(e) => drop(e.approval_id),
    }
    Ok(())
}

mod nested {
    use eventbus::{subscriber, Envelope, HandlerResult};

    #[subscriber("approval.granted")]
    pub(crate) async fn exact(env: eventbus::Envelope<super::ApprovalGranted>) -> HandlerResult {
        let _: Envelope<_> = env;
        Ok(())
    }
}

fn main() {
    let sub: Subscription = bill.into_subscription();
    assert_eq!(sub.pattern(), "approval.*");
    assert_eq!(sub.name(), concat!(module_path!(), "::bill"));
    assert_eq!(sub.group_name(), "billing");
    assert_eq!(sub.payload_types(), ["approval.granted"]);
    let options = sub.options();
    assert_eq!(options.retry.max_attempts, 6);
    assert_eq!(
        options.retry.backoff,
        Backoff::Exponential {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(60),
            multiplier: 3.0,
            jitter: false,
        }
    );
    assert_eq!(options.concurrency, 4);
    assert_eq!(options.timeout, Some(Duration::from_secs(30)));
    assert!(options.park_keys);

    let sub = audit.into_subscription();
    assert_eq!(
        sub.options().retry.backoff,
        Backoff::Schedule(vec![
            Duration::from_secs(60),
            Duration::from_secs(300),
            Duration::from_secs(1800)
        ])
    );
    assert!(sub.payload_types().is_empty());
    assert_eq!(
        sub.options().retry.delayed,
        [60, 300, 1800].map(Duration::from_secs).to_vec()
    );

    let sub = approvals.into_subscription();
    assert_eq!(sub.payload_types(), ["approval.granted", "approval.rejected"]);
    match &sub.options().retry.backoff {
        Backoff::Exponential { max, .. } => assert_eq!(*max, Duration::from_secs(7200)),
        other => panic!("{other:?}"),
    }

    assert_eq!(nested::exact.into_subscription().name(), concat!(module_path!(), "::nested::exact"));

    let mut registered: Vec<String> = eventbus::subscription::registered()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    registered.sort();
    assert_eq!(
        registered,
        ["approvals", "audit", "bill", "nested::exact"].map(|n| format!("{}::{n}", module_path!()))
    );
}
