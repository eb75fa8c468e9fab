#[eventbus::catalog]
mod events {
    use eventbus::event;

    #[event(name = "approval.granted")]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct ApprovalGranted {
        pub approval_id: String,
    }

    #[event(name = "approval.granted", version = 2)]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct ApprovalGrantedV2 {
        pub approval_id: String,
    }
}

fn main() {
    let _ = events::CATALOG;
}
