use eventbus::EventGroup;

#[derive(EventGroup)]
enum ApprovalEvents {
    Granted(String),
}

fn main() {}
