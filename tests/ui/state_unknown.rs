// Without a context argument and without `state`/`user` options, the
// handler's types are unknown; the error says which options to add.
use realtime::prelude::*;

struct Chat;

#[realtime_handler]
impl Chat {
    #[direct]
    async fn ping(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }
}

fn main() {}
