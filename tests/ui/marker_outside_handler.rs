// A marker in a block without `#[realtime_handler]` says what is missing,
// on the marker.
use realtime::prelude::*;

struct Chat;

impl Chat {
    #[direct]
    async fn ping(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }
}

fn main() {}
