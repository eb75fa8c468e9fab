use eventbus::{subscriber, Envelope, HandlerResult};

#[subscriber("approval.*", dlq = false, park_keys = true)]
async fn handle(env: Envelope<serde_json::Value>) -> HandlerResult {
    let _ = env;
    Ok(())
}

fn main() {}
