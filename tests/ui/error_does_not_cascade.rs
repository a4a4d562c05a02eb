// One misuse gives one error: the generated items the rest of the program
// uses (`Chat::router`, `ChatClientMessage`, the `MessageHandler` impl) are
// still there.
use realtime::Service;
use realtime::auth::validate_with;
use realtime::prelude::*;

struct Chat;

#[realtime_handler]
impl Chat {
    #[broadcast]
    fn say(&self, ctx: &Context<(), String>, text: String) -> Result<String, HandlerError> {
        let _ = ctx;
        Ok(text)
    }
}

fn main() {
    let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
        .build()
        .expect("default config");
    let _router = Chat::router(service);
    let _message: Option<ChatClientMessage> = None;
}
