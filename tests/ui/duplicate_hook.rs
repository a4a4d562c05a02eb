// A second `#[on_connect]` hook is refused, on its marker.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn ping(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }

    #[on_connect]
    async fn hello(&self) {}

    #[on_connect]
    async fn welcome(&self) {}
}

fn main() {}
