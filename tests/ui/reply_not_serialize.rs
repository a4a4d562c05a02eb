// A reply type that does not implement `Serialize` is reported by rustc on
// that type.
use realtime::prelude::*;

struct Chat;

struct Line {
    text: String,
}

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn last(&self) -> Result<Line, HandlerError> {
        Ok(Line {
            text: "hi".to_owned(),
        })
    }
}

fn main() {}
