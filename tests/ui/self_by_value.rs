// A message method taking `self` by value is refused, on the receiver.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[broadcast]
    async fn say(self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

fn main() {}
