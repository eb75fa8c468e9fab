use eventbus::event;

#[event(name = "approval.granted")]
#[derive(serde::Serialize, serde::Deserialize)]
enum Approval {
    Granted,
    Rejected,
}

fn main() {}
