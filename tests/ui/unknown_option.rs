// An unknown marker option is refused, on its key, naming the only option.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[broadcast(nme = "talk")]
    async fn say(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

fn main() {}
