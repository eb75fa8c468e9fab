use eventbus::event;

fn v1_to_v2(user: String, name: String) -> String {
    format!("{user}{name}")
}

#[event(name = "profile.updated", version = 2, upcast(from = 1, with = v1_to_v2))]
#[derive(serde::Serialize, serde::Deserialize)]
struct ProfileUpdated {
    user: String,
}

fn main() {}
