// A generic message method is refused, on its generics.
use realtime::prelude::*;

struct Chat;

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn double<T: Into<u64>>(&self, value: T) -> Result<u64, HandlerError> {
        Ok(value.into() * 2)
    }
}

fn main() {}
