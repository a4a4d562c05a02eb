// A message method that is not `async` is refused, on its `fn` keyword.
use realtime::prelude::*;

struct Chat;

#[realtime_handler]
impl Chat {
    #[direct]
    fn history(&self, ctx: &Context<(), String>, limit: u32) -> Result<u32, HandlerError> {
        let _ = ctx;
        Ok(limit)
    }
}

fn main() {}
