#!/usr/bin/env bash
# Compile cost of #[realtime_handler]: a 50-method handler written with the
# macro against the same handler written by hand against the trait.
#
#   bash realtime-bench/compile-cost.sh [methods=50] [repeats=3]
#
# Both crates live in a scratch workspace that shares one target directory, so
# the dependencies (realtime, axum, serde, syn, ...) are built once and the
# timed builds are clean builds of the handler crate alone: `cargo clean -p`,
# then `cargo build`, the two crates alternating. A build from nothing costs
# the same dependencies either way (realtime re-exports the macro, so both pay
# for syn), so only the handler crate's own time can differ.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
methods="${1:-50}"
repeats="${2:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

manifest() { # name, extra dependency lines
  cat <<EOF
[package]
name = "$1"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
realtime = { path = "$root/realtime" }
serde = { version = "1", features = ["derive"] }
$2
EOF
}

mkdir -p "$work/cost-macro/src" "$work/cost-hand/src"
printf '[workspace]\nmembers = ["cost-macro", "cost-hand"]\nresolver = "3"\n' >"$work/Cargo.toml"
cp "$root/Cargo.lock" "$work/Cargo.lock"
manifest cost-macro "" >"$work/cost-macro/Cargo.toml"
manifest cost-hand 'axum = "0.8"' >"$work/cost-hand/Cargo.toml"

half=$((methods / 2))
event='#[derive(Debug, serde::Serialize)]
pub struct Ev {
    pub n: u64,
    pub text: String,
}

pub struct H;
'

{ # The macro version.
  echo 'use realtime::prelude::*;'
  echo "$event"
  echo '#[realtime_handler(state = (), user = String)]'
  echo 'impl H {'
  for ((i = 0; i < half; i++)); do
    cat <<EOF
    /// Direct $i.
    #[direct]
    async fn d$i(&self, text: String, n: u64) -> Result<String, HandlerError> {
        Ok(format!("{text}{n}"))
    }

    /// Broadcast $i.
    #[broadcast]
    async fn b$i(&self, text: String, n: u64) -> Result<Ev, HandlerError> {
        Ok(Ev { n, text })
    }

EOF
  done
  echo '}'
} >"$work/cost-macro/src/lib.rs"

{ # The same handler by hand.
  echo 'use realtime::handler::Outcome;'
  echo 'use realtime::{Context, HandlerError, MessageHandler};'
  echo "$event"
  echo '#[derive(Debug, serde::Deserialize)]'
  echo '#[serde(tag = "type", content = "data", rename_all = "snake_case")]'
  echo 'pub enum HClientMessage {'
  for ((i = 0; i < half; i++)); do
    echo "    /// Direct $i."
    echo "    D$i { text: String, n: u64 },"
    echo "    /// Broadcast $i."
    echo "    B$i { text: String, n: u64 },"
  done
  echo '}'
  echo 'impl H {'
  for ((i = 0; i < half; i++)); do
    cat <<EOF
    async fn d$i(&self, text: String, n: u64) -> Result<String, HandlerError> {
        Ok(format!("{text}{n}"))
    }

    async fn b$i(&self, text: String, n: u64) -> Result<Ev, HandlerError> {
        Ok(Ev { n, text })
    }

EOF
  done
  cat <<'EOF'
    pub fn router<B: realtime::Broker>(service: realtime::Service<Self, B>) -> axum::Router {
        realtime::route::router(service, "/ws/{topic}")
    }
}

impl MessageHandler for H {
    type ClientMessage = HClientMessage;
    type ServerEvent = Ev;
    type AppState = ();
    type UserId = String;

    async fn handle(
        &self,
        msg: HClientMessage,
        _ctx: &Context<(), String>,
    ) -> Result<Outcome<Ev>, HandlerError> {
        match msg {
EOF
  for ((i = 0; i < half; i++)); do
    echo "            HClientMessage::D$i { text, n } => Outcome::reply(&self.d$i(text, n).await?),"
    echo "            HClientMessage::B$i { text, n } => Ok(Outcome::Broadcast(self.b$i(text, n).await?)),"
  done
  cat <<'EOF'
        }
    }
}
EOF
} >"$work/cost-hand/src/lib.rs"

cd "$work"
export CARGO_TARGET_DIR="$work/target"
echo "building the dependencies once..."
cargo build -q --workspace

time_build() { # crate -> seconds of a clean build of that crate alone
  cargo clean -q -p "$1"
  local start end
  start=$(date +%s.%N)
  cargo build -q -p "$1"
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# One untimed round: the first clean build after the dependencies pays for
# loading them into the page cache, and that is not the macro's cost.
time_build cost-macro >/dev/null
time_build cost-hand >/dev/null

macro_times=()
hand_times=()
for ((r = 1; r <= repeats; r++)); do
  macro_times+=("$(time_build cost-macro)")
  hand_times+=("$(time_build cost-hand)")
  echo "run $r: macro ${macro_times[-1]} s, hand ${hand_times[-1]} s"
done
m=$(printf '%s\n' "${macro_times[@]}" | median)
h=$(printf '%s\n' "${hand_times[@]}" | median)
printf '%s methods, medians of %s clean builds: macro %.2f s, hand %.2f s, macro / hand %.2f\n' \
  "$methods" "$repeats" "$m" "$h" "$(echo "$m / $h" | bc -l)"
