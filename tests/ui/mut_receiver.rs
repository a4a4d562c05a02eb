// A message method taking `&mut self` is refused, on the receiver.
use realtime::prelude::*;

struct Chat {
    said: u32,
}

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[broadcast]
    async fn say(&mut self, text: String) -> Result<String, HandlerError> {
        self.said += 1;
        Ok(text)
    }
}

fn main() {}
