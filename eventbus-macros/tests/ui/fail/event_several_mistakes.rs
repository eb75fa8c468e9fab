use eventbus::event;

// Every mistake is reported, not only the first.
#[event(name = "approval..granted", version = 0, topic = "approvals/eu", key = id, name = "x")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

fn main() {}
