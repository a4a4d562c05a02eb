// A message method without `&self` is refused, on its parameter list.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[broadcast]
    async fn say(text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

fn main() {}
