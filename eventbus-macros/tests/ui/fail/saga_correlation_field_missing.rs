use eventbus::saga::SagaContext;
use eventbus::{event, saga, Envelope, HandlerResult};

#[event(name = "order.placed", version = 1)]
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct OrderPlaced {
    order_id: String,
}

#[event(name = "payment.settled", version = 1)]
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct PaymentSettled {
    payment_id: String,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkout {}

#[saga(name = "checkout", correlate = order_id)]
impl Checkout {
    #[start]
    fn placed(&mut self, _: &Envelope<OrderPlaced>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }

    #[handle]
    fn settled(&mut self, _: &Envelope<PaymentSettled>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
