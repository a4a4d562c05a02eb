//! The generated TypeScript client follows the handler: rename an argument
//! in a copy of the chat's handler, and a page written against the old name
//! no longer type-checks (`tsc --strict`).
//!
//! Runs the TypeScript compiler of `clients/typescript` (installed with
//! `npm ci` there; this test runs it when `node_modules` is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use realtime::prelude::*;
use schemars::JsonSchema;
use serde::Serialize;

/// What the room hears.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Said {
    /// Who said it.
    pub(crate) from: String,
    /// What was said.
    pub(crate) text: String,
}

mod before {
    use super::*;

    /// The handler as the page was written against it.
    #[derive(Debug)]
    pub(crate) struct Chat;

    #[realtime_handler(describe)]
    impl Chat {
        #[broadcast]
        async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<Said, HandlerError> {
            Ok(Said {
                from: ctx.user_id().clone(),
                text,
            })
        }
    }
}

mod after {
    use super::*;

    /// The same handler with `say`'s argument renamed from `text` to `body`.
    #[derive(Debug)]
    pub(crate) struct Chat;

    #[realtime_handler(describe)]
    impl Chat {
        #[broadcast]
        async fn say(&self, ctx: &Context<(), String>, body: String) -> Result<Said, HandlerError> {
            Ok(Said {
                from: ctx.user_id().clone(),
                text: body,
            })
        }
    }
}

/// A page written against the handler as it was.
const PAGE: &str = r#"import { ChatClient } from "./chat.js";
declare const chat: ChatClient;
export async function send(): Promise<null> {
  return chat.say({ text: "hi" });
}
"#;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript")
}

fn tsc() -> PathBuf {
    let dir = client_dir();
    let tsc = dir.join("node_modules/.bin/tsc");
    if !tsc.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed (Node 20)");
        assert!(status.success(), "npm ci in clients/typescript failed");
    }
    tsc
}

/// Writes `chat.ts` from `api` and the page into `dir`; runs `tsc --strict`
/// on the page and returns its output, or `None` if it passed.
fn check(dir: &Path, api: &realtime::describe::Api) -> Option<String> {
    std::fs::create_dir_all(dir).unwrap();
    let library = client_dir().join("src/index.js");
    std::fs::write(
        dir.join("chat.ts"),
        api.typescript(library.to_str().unwrap()),
    )
    .unwrap();
    std::fs::write(dir.join("page.ts"), PAGE).unwrap();
    let output = Command::new(tsc())
        .args([
            "--strict",
            "--noEmit",
            "--skipLibCheck",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--moduleResolution",
            "bundler",
            "--lib",
            "es2022,dom",
        ])
        .arg(dir.join("page.ts"))
        .output()
        .expect("run tsc");
    (!output.status.success()).then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn renaming_a_field_breaks_the_page_at_compile_time() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated-types");
    assert_eq!(check(&root.join("before"), &before::Chat::describe()), None);
    let errors = check(&root.join("after"), &after::Chat::describe())
        .expect("the page uses the old name: tsc must fail");
    assert!(
        errors.contains("'text' does not exist") && errors.contains("page.ts"),
        "tsc names the old field on the page: {errors}"
    );
}
