use eventbus::event;

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value {
    v1
}

#[event(
    name = "profile.updated",
    version = 3,
    upcast(from = 1),
    upcast(with = v1_to_v2),
    upcast(from = 2, with = "v1_to_v2", by = v1_to_v2),
    upcast = v1_to_v2
)]
#[derive(serde::Serialize, serde::Deserialize)]
struct ProfileUpdated {
    user: String,
}

fn main() {}
