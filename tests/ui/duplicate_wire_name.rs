// Two methods with one wire name are refused, on the later name.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[broadcast]
    async fn talk(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }

    #[broadcast(name = "talk")]
    async fn say(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

fn main() {}
