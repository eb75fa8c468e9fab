use eventbus::saga::{Saga, SagaContext};
use eventbus::{event, saga, Envelope, HandlerResult};

#[event(name = "order.placed", version = 1, key = order_id)]
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct OrderPlaced {
    order_id: String,
}

#[event(name = "payment.settled", version = 1)]
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct PaymentSettled {
    order: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkout {
    paid: bool,
}

#[saga(name = "checkout", correlate = order_id)]
impl Checkout {
    #[start]
    fn placed(&mut self, _: &Envelope<OrderPlaced>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }

    /// Correlated by another field of this event.
    #[handle(correlate = order)]
    fn settled(&mut self, _: &Envelope<PaymentSettled>, saga: &mut SagaContext) -> HandlerResult {
        self.paid = true;
        saga.complete();
        Ok(())
    }

    /// Not a step.
    fn helper(&self) -> bool {
        self.paid
    }
}

fn main() {
    assert_eq!(Checkout::NAME, "checkout");
    let steps = Checkout::subscriptions::<eventbus::outbox::sqlx::Sqlite>();
    let names: Vec<&str> = steps.iter().map(|s| s.group_name()).collect();
    assert_eq!(names, ["checkout.order.placed", "checkout.payment.settled"]);
    assert!(!Checkout::default().helper());
}
