use eventbus::{subscriber, Envelope, HandlerResult};

#[subscriber("approval.*", timeout = "thirty seconds")]
async fn handle(env: Envelope<serde_json::Value>) -> HandlerResult {
    let _ = env;
    Ok(())
}

fn main() {}
