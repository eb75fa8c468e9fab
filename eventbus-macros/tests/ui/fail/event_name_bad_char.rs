use eventbus::event;

#[event(name = "approval.granted!")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

fn main() {}
