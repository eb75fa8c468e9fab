use eventbus::{subscriber, Context, Envelope, HandlerResult};

#[subscriber("approval.*")]
async fn handle(ctx: Context, env: Envelope<serde_json::Value>, extra: u32) -> HandlerResult {
    let _ = (ctx, env, extra);
    Ok(())
}

fn main() {}
