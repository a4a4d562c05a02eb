// The attribute on a trait impl is refused, on the trait's path.
use realtime::prelude::*;

struct Chat;

trait Greet {
    fn greet(&self) -> String;
}

#[realtime_handler]
impl Greet for Chat {
    fn greet(&self) -> String {
        "hello".to_owned()
    }
}

fn main() {}
