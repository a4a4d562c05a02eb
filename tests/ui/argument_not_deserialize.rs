// An argument type that does not implement `Deserialize` is reported by
// rustc on that type. serde's derive reports the bound a second time on the
// derive, which is the attribute here: serde does the same for a plain
// `#[derive(Deserialize)]`, and no span we give moves it.
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
