// An `#[on_join]` hook must take the topic last; without it the error
// points at the parameter list and says what to write.
use realtime::prelude::*;

struct Board;

#[realtime_handler(state = (), user = String)]
impl Board {
    #[direct]
    async fn ping(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }

    #[on_join]
    async fn joined(&self, ctx: &Context<(), String>) {
        let _ = ctx;
    }
}

fn main() {}
