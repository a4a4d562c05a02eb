// An unknown option of `#[realtime_handler]` is refused, on its key, naming
// the known ones.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(stat = (), user = String)]
impl Chat {
    #[broadcast]
    async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<String, HandlerError> {
        let _ = ctx;
        Ok(text)
    }
}

fn main() {}
