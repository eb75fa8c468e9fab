use eventbus::{subscriber, Envelope, IntoSubscription};

#[subscriber("approval.*")]
async fn handle(env: Envelope<serde_json::Value>) -> bool {
    let _ = env;
    true
}

fn main() {
    let _ = handle.into_subscription();
}
