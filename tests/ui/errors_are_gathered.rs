// Independent misuses in one block are all reported in one build: a method
// that is not async, a pattern argument, and a direct method that does not
// return `Result`.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    fn ping(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }

    #[direct]
    async fn add(&self, (a, b): (u32, u32)) -> Result<u32, HandlerError> {
        Ok(a + b)
    }

    #[direct]
    async fn count(&self) -> u32 {
        7
    }
}

fn main() {}
