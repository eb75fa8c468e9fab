use eventbus::event;

#[event(version = 2)]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

fn main() {}
