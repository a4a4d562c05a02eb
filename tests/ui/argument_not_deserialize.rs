// An argument type that does not implement `Deserialize` is reported by
// rustc on that type.
use realtime::prelude::*;

struct Chat;

struct Point {
    x: i32,
}

#[realtime_handler(state = (), user = String)]
impl Chat {
    #[direct]
    async fn locate(&self, point: Point) -> Result<i32, HandlerError> {
        Ok(point.x)
    }
}

fn main() {}
