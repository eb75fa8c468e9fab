use eventbus::event;

#[event(name = "approval.*")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

fn main() {}
