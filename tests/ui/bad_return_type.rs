// A direct method that does not return `Result` is refused, on its return
// type.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn count(&self) -> u32 {
        7
    }
}

fn main() {}
