use eventbus::event;

#[event(name = "approval.granted", partition = approval_id)]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

fn main() {}
