// The context after another argument is refused, on that argument.
use realtime::prelude::*;

struct Chat;

#[realtime_handler]
impl Chat {
    #[direct]
    async fn history(&self, limit: u32, ctx: &Context<(), String>) -> Result<u32, HandlerError> {
        let _ = ctx;
        Ok(limit)
    }
}

fn main() {}
