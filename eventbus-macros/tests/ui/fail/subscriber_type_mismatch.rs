use eventbus::{event, subscriber, Envelope, HandlerResult};

#[event(name = "approval.granted")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

#[subscriber("user.*")]
async fn handle(env: Envelope<ApprovalGranted>) -> HandlerResult {
    let _ = env;
    Ok(())
}

fn main() {}
