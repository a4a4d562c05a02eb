// An `impl Trait` argument is refused, on the type: it cannot be deserialized.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn shout(&self, text: impl Into<String>) -> Result<String, HandlerError> {
        Ok(text.into().to_uppercase())
    }
}

fn main() {}
