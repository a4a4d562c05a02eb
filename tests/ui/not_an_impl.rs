// The attribute on something other than an impl block is refused, on the
// item's keyword and name.
use realtime::prelude::*;

#[realtime_handler]
struct Chat {
    name: String,
}

fn main() {}
