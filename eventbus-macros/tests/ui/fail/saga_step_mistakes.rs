use eventbus::saga::SagaContext;
use eventbus::{event, saga, Envelope, HandlerResult};

#[event(name = "order.placed", version = 1)]
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct OrderPlaced {
    order_id: String,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkout {}

#[saga(name = "checkout", correlate = order_id, timeout = 5)]
impl Checkout {
    #[handle]
    async fn placed(&mut self, _: &Envelope<OrderPlaced>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }

    #[handle]
    fn again(&mut self, _: &Envelope<OrderPlaced>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }

    #[handle]
    fn by_value(&mut self, _: OrderPlaced, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }

    #[handle]
    fn not_mut(&self, _: &Envelope<OrderPlaced>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
