// Broadcast methods returning different event types are refused, on the
// type that differs from the first.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[broadcast]
    async fn say(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }

    #[broadcast]
    async fn count(&self, n: u32) -> Result<Option<u32>, HandlerError> {
        Ok(Some(n))
    }
}

fn main() {}
