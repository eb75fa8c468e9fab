use eventbus::{event, EventGroup};

#[event(name = "approval.granted")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
}

#[event(name = "approval.rejected")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalRejected {
    approval_id: String,
}

#[derive(EventGroup)]
enum ApprovalEvents {
    Granted(ApprovalGranted),
    Both(ApprovalGranted, ApprovalRejected),
}

fn main() {}
