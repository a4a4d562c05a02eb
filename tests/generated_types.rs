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

        #[direct]
        async fn invite(&self, user: String) -> Result<(), HandlerError> {
            let _ = user;
            Ok(())
        }

        #[direct]
        async fn kick(&self, user: String) -> Result<(), HandlerError> {
            let _ = user;
            Ok(())
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

        #[direct]
        async fn invite(&self, user: String) -> Result<(), HandlerError> {
            let _ = user;
            Ok(())
        }

        #[direct]
        async fn kick(&self, user: String) -> Result<(), HandlerError> {
            let _ = user;
            Ok(())
        }
    }
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The TypeScript compiler, installed once: both tests ask for it at
/// once, and two `npm ci` in one directory break each other (on a clean
/// clone one failed with ENOTDIR while the other installed).
fn tsc() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
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
        })
        .clone()
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
    // The whole client library: its entry point imports its modules.
    for module in std::fs::read_dir(repository().join("clients/typescript/src")).unwrap() {
        let name = module.unwrap().file_name();
        copy(&format!(
            "clients/typescript/src/{}",
            name.to_str().unwrap()
        ));
    }
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

mod shapes {
    use super::*;

    /// Renamed fields, an `Option`, nested structs.
    #[derive(Debug, Deserialize, Serialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Profile {
        display_name: String,
        #[serde(rename = "e-mail")]
        email: Option<String>,
        home: Place,
        tags: Vec<String>,
    }

    /// A nested struct.
    #[derive(Debug, Deserialize, Serialize, JsonSchema)]
    pub(crate) struct Place {
        city: String,
    }

    /// An internally tagged enum.
    #[derive(Debug, Serialize, JsonSchema)]
    #[allow(dead_code)] // only described, never sent
    #[serde(tag = "kind", rename_all = "snake_case")]
    pub(crate) enum Update {
        Renamed { to: String },
        Moved { home: Place },
        Left,
    }

    /// An externally tagged enum, with a unit variant.
    #[derive(Debug, Deserialize, Serialize, JsonSchema)]
    pub(crate) enum Mood {
        Happy,
        Busy(String),
        Away { until: u64 },
    }

    /// A handler whose types take serde's common shapes.
    #[derive(Debug)]
    pub(crate) struct Shapes;

    #[realtime_handler(describe, state = (), user = String)]
    impl Shapes {
        #[direct]
        async fn get_profile(
            &self,
            user_id: String,
            mood: Option<Mood>,
        ) -> Result<Profile, HandlerError> {
            let _ = (user_id, mood);
            Err(HandlerError::bad_request("not here"))
        }

        #[broadcast]
        async fn update(&self, profile: Profile) -> Result<Update, HandlerError> {
            Ok(Update::Renamed {
                to: profile.display_name,
            })
        }
    }
}

/// What an application would write against those shapes; it must type-check.
const SHAPES_PAGE: &str = r#"import { ShapesClient, type Mood, type Profile, type ShapesEvent } from "./shapes.js";
declare const shapes: ShapesClient;
export async function use(): Promise<void> {
  const profile: Profile = await shapes.getProfile({ user_id: "u1", mood: { Away: { until: 3 } } });
  const name: string = profile.displayName;
  const mail: string | null | undefined = profile["e-mail"];
  const city: string = profile.home.city;
  await shapes.getProfile({ user_id: "u2" });
  const moods: Mood[] = ["Happy", { Busy: "in a call" }];
  await shapes.update({ profile: { displayName: name, home: { city }, tags: [] } });
  shapes.onEvent("t", (event: ShapesEvent) => {
    if (event.kind === "renamed") console.log(event.to);
    if (event.kind === "moved") console.log(event.home.city);
  });
  void mail;
  void moods;
}
"#;

#[test]
fn types_follow_serde() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated-shapes");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let library = repository().join("clients/typescript/src/index.js");
    let api = shapes::Shapes::describe();
    std::fs::write(
        dir.join("shapes.ts"),
        api.typescript(library.to_str().unwrap()),
    )
    .unwrap();
    std::fs::write(dir.join("page.ts"), SHAPES_PAGE).unwrap();
    let output = Command::new(tsc())
        .args([
            "--strict",
            "--noEmit",
            "--skipLibCheck",
            "--exactOptionalPropertyTypes",
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
    let generated = std::fs::read_to_string(dir.join("shapes.ts")).unwrap();
    assert!(
        output.status.success(),
        "tsc: {}\n{generated}",
        String::from_utf8_lossy(&output.stdout)
    );
}
