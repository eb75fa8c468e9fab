use eventbus::EventGroup;

#[derive(EventGroup)]
struct ApprovalEvents {
    granted: u32,
}

fn main() {}
