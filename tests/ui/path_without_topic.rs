// A `path` option without a `{topic}` segment is refused, on the literal.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(path = "/ws", state = (), user = String)]
impl Chat {
    #[direct]
    async fn ping(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }
}

fn main() {}
