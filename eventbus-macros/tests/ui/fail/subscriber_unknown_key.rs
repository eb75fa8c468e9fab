use eventbus::{subscriber, Envelope, HandlerResult};

#[subscriber("approval.*", max_retries = 3)]
async fn handle(env: Envelope<serde_json::Value>) -> HandlerResult {
    let _ = env;
    Ok(())
}

fn main() {}
