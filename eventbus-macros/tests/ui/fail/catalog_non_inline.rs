#[eventbus::catalog]
mod events;

fn main() {}
