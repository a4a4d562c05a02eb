// A method marked both `#[direct]` and `#[broadcast]` is refused, on the
// second marker.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    #[broadcast]
    async fn say(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

fn main() {}
