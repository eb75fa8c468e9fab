use eventbus::event;

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value {
    v1
}

fn v1_to_v2_again(v1: serde_json::Value) -> serde_json::Value {
    v1
}

#[event(
    name = "profile.updated",
    version = 2,
    upcast(from = 1, with = v1_to_v2),
    upcast(from = 1, with = v1_to_v2_again)
)]
#[derive(serde::Serialize, serde::Deserialize)]
struct ProfileUpdated {
    user: String,
}

fn main() {}
