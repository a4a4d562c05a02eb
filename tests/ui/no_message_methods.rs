// A handler without any `#[direct]` or `#[broadcast]` method is refused, on
// the type.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    async fn say(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

fn main() {}
