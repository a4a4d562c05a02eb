// An argument type that does not implement `Deserialize` is reported once,
// on that type (the macro reads each argument through a function whose
// path is spanned there, so serde's derive asks for the bound nowhere else).
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
