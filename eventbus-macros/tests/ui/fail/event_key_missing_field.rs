use eventbus::event;

#[event(name = "approval.granted", key = approvalid)]
#[derive(serde::Serialize, serde::Deserialize)]
struct ApprovalGranted {
    approval_id: String,
    amount: u64,
}

fn main() {}
