use eventbus::{subscriber, Envelope, HandlerResult, Payload};

#[subscriber("approval.*")]
async fn handle<T: Payload>(env: Envelope<T>) -> HandlerResult {
    let _ = env;
    Ok(())
}

fn main() {}
