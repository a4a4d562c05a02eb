// A wire name starting with `$` is refused, on the name: those are for
// control messages.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct(name = "$join")]
    async fn join(&self, room: String) -> Result<String, HandlerError> {
        Ok(room)
    }
}

fn main() {}
