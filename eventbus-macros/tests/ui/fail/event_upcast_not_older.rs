use eventbus::event;

fn v2_to_v3(v2: serde_json::Value) -> serde_json::Value {
    v2
}

#[event(name = "profile.updated", version = 2, upcast(from = 2, with = v2_to_v3))]
#[derive(serde::Serialize, serde::Deserialize)]
struct ProfileUpdated {
    user: String,
}

fn main() {}
