use eventbus::{event, EventGroup};

#[event(name = "approval.granted")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

#[derive(EventGroup)]
enum ApprovalEvents {
    Granted(ApprovalGranted),
    Again(ApprovalGranted),
}

fn main() {}
