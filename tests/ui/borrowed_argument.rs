// A borrowed argument is refused, on its type, naming the owned one.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn echo(&self, text: &str) -> Result<String, HandlerError> {
        Ok(text.to_owned())
    }
}

fn main() {}
