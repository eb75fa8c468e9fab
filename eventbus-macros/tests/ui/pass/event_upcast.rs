use eventbus::{event, Event};

#[derive(serde::Deserialize)]
struct V1 {
    user: String,
    name: String,
}

#[derive(serde::Serialize)]
struct V2 {
    user: String,
    first: String,
}

fn v1_to_v2(v1: V1) -> V2 {
    V2 {
        user: v1.user,
        first: v1.name,
    }
}

mod steps {
    pub fn v2_to_v3(mut v2: serde_json::Value) -> serde_json::Value {
        v2["given"] = v2["first"].take();
        v2
    }
}

#[event(
    name = "profile.updated",
    version = 3,
    upcast(from = 1, with = v1_to_v2),
    upcast(from = 2, with = steps::v2_to_v3)
)]
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct ProfileUpdated {
    user: String,
    given: String,
}

fn main() {
    assert_eq!(
        ProfileUpdated::UPCASTERS.iter().map(|u| u.from).collect::<Vec<_>>(),
        [1, 2]
    );
    let v1 = serde_json::value::to_raw_value(&serde_json::json!({"user": "u", "name": "Ada"}))
        .unwrap();
    let decoded =
        eventbus::event::decode_event::<ProfileUpdated>("profile.updated", 1, &v1).unwrap();
    assert_eq!(
        decoded,
        ProfileUpdated {
            user: "u".into(),
            given: "Ada".into()
        }
    );
}
