use eventbus::saga;

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkout {}

#[saga]
impl Checkout {}

#[saga(name = "checkout", correlate = order_id)]
struct NotAnImpl;

fn main() {}
