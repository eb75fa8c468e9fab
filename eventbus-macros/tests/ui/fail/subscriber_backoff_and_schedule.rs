use eventbus::{subscriber, Envelope, HandlerResult};

#[subscriber("approval.*", backoff(initial = "1s", max = "1m"), schedule = ["1m", "5m"])]
async fn handle(env: Envelope<serde_json::Value>) -> HandlerResult {
    let _ = env;
    Ok(())
}

fn main() {}
