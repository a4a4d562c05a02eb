// An argument written as a pattern is refused, on the pattern: it has no
// name to become a JSON field.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn add(&self, (a, b): (u32, u32)) -> Result<u32, HandlerError> {
        Ok(a + b)
    }
}

fn main() {}
