// Contexts naming different state types are refused, on the later type.
use realtime::prelude::*;

struct Chat;

#[realtime_handler]
impl Chat {
    #[direct]
    async fn a(&self, ctx: &Context<(), String>) -> Result<String, HandlerError> {
        Ok(ctx.user_id().clone())
    }

    #[direct]
    async fn b(&self, ctx: &Context<u8, String>) -> Result<u8, HandlerError> {
        Ok(*ctx.state())
    }
}

fn main() {}
