//! The chat page follows the chat's handler: its typed client is generated
//! from the handler, so renaming an argument in a copy of the handler makes
//! the page (`examples/chat/page/app.ts`) fail `tsc --strict`, before any
//! user sees it.
//!
//! Runs the TypeScript compiler of `clients/typescript` (installed with
//! `npm ci` there; this test runs it when `node_modules` is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use realtime::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The chat's event, as in `examples/chat`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct Said {
    from: String,
    text: String,
    at: u64,
}

/// The chat's history line, as in `examples/chat`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Line {
    offset: u64,
    #[serde(flatten)]
    said: Said,
}

mod before {
    use super::*;

    /// A copy of the chat's handler, as the page was written against it.
    #[derive(Debug)]
    pub(crate) struct Chat;

    #[realtime_handler(describe)]
    impl Chat {
        #[broadcast]
        async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<Said, HandlerError> {
            Ok(Said {
                from: ctx.user_id().clone(),
                text,
                at: 0,
            })
        }

        #[direct]
        async fn history(&self, limit: u32) -> Result<Vec<Line>, HandlerError> {
            let _ = limit;
            Ok(Vec::new())
        }
    }
}

mod after {
    use super::*;

    /// The same copy with `say`'s argument renamed from `text` to `body`.
    #[derive(Debug)]
    pub(crate) struct Chat;

    #[realtime_handler(describe)]
    impl Chat {
        #[broadcast]
        async fn say(&self, ctx: &Context<(), String>, body: String) -> Result<Said, HandlerError> {
            Ok(Said {
                from: ctx.user_id().clone(),
                text: body,
                at: 0,
            })
        }

        #[direct]
        async fn history(&self, limit: u32) -> Result<Vec<Line>, HandlerError> {
            let _ = limit;
            Ok(Vec::new())
        }
    }
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tsc() -> PathBuf {
    let dir = repository().join("clients/typescript");
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

/// Lays out the page, the client library and a client generated from `api`
/// under `root` as in the repository, and type-checks the page with its own
/// settings; returns tsc's output if it failed.
fn check(root: &Path, api: &realtime::describe::Api) -> Option<String> {
    let copy = |from: &str| {
        let to = root.join(from);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repository().join(from), &to).unwrap();
    };
    copy("examples/chat/page/app.ts");
    copy("examples/chat/page/tsconfig.json");
    copy("clients/typescript/src/index.ts");
    let generated = root.join("clients/typescript/generated");
    std::fs::create_dir_all(&generated).unwrap();
    std::fs::write(generated.join("chat.ts"), api.typescript("../src/index.js")).unwrap();
    let output = Command::new(tsc())
        .args(["--noEmit", "-p"])
        .arg(root.join("examples/chat/page/tsconfig.json"))
        .output()
        .expect("run tsc");
    (!output.status.success()).then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn renaming_an_argument_breaks_the_chat_page_at_compile_time() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated-types");
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(check(&root.join("before"), &before::Chat::describe()), None);
    let errors = check(&root.join("after"), &after::Chat::describe())
        .expect("the page uses the old name: tsc must fail");
    assert!(
        errors.contains("app.ts") && errors.contains("'text' does not exist"),
        "tsc names the old argument on the page: {errors}"
    );
}
