//! The chat example in a real browser: two instances on one private Redis,
//! one page on each, driven through headless Chromium and chromedriver.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them) and `redis-server`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::chat::{Process, start_chat, start_chat_on, terminate, wait_for_port};
use support::{BROWSER_DEADLINE, RedisServer, free_port};

fn start_chromedriver() -> (Process, u16) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (Debian: chromium-driver)");
    let process = Process(child);
    wait_for_port(port, "chromedriver");
    (process, port)
}

async fn browser(driver_port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=900,760", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a chromium session through chromedriver")
}

/// The text of the element with id `id`.
async fn text_of(page: &Client, id: &str) -> String {
    let element = page.find(Locator::Id(id)).await.unwrap();
    element.text().await.unwrap()
}

/// Clicks the element with id `id`.
async fn click(page: &Client, id: &str) {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Types `text` into the message box and sends it.
async fn say(page: &Client, text: &str) {
    let input = page.find(Locator::Id("text")).await.unwrap();
    input.send_keys(text).await.unwrap();
    click(page, "send").await;
}

/// A JS expression: the log shows a line of `from` saying `text`.
fn shows(from: &str, text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('{from}') && li.textContent.includes('{text}'))"
    )
}

/// A JS expression: the page's list of people is exactly `users`.
fn lists(users: &[&str]) -> String {
    format!(
        "JSON.stringify([...document.querySelectorAll('#users li')].map(li => li.dataset.user)) === '{}'",
        serde_json::to_string(users).unwrap()
    )
}

/// Writes a screenshot of `page` to `target/{name}` for a person to look at.
async fn screenshot(page: &Client, name: &str) {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let path = target.join(name);
    std::fs::write(&path, page.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Waits until `script` (a JS expression) is true on the page.
async fn wait_for(page: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + BROWSER_DEADLINE;
    loop {
        let value = page
            .execute(&format!("return Boolean({script});"), vec![])
            .await
            .expect("run a script in the page");
        if value == serde_json::Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let status = text_of(page, "status").await;
            let error = text_of(page, "error").await;
            panic!("timed out waiting until {what} (status: {status:?}, error: {error:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn join(page: &Client, port: u16, name: &str, room: &str) {
    page.goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    page.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    let room_input = page.find(Locator::Id("room")).await.unwrap();
    room_input.clear().await.unwrap();
    room_input.send_keys(room).await.unwrap();
    click(page, "connect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_typed_on_one_instance_appears_on_the_other() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let (node_a, port_a) = start_chat(&redis_url);
    let (_node_b, port_b) = start_chat(&redis_url);
    let (_driver, driver_port) = start_chromedriver();
    let profiles =
        std::env::temp_dir().join(format!("realtime-chat-browser-{}", std::process::id()));
    let page_a = browser(driver_port, &profiles.join("a")).await;
    let page_b = browser(driver_port, &profiles.join("b")).await;

    join(&page_a, port_a, "alice", "lobby").await;
    join(&page_b, port_b, "bob", "lobby").await;
    let connected = "document.getElementById('status').dataset.state === 'open'";
    wait_for(&page_a, "page A is connected", connected).await;
    wait_for(&page_b, "page B is connected", connected).await;

    // Each page lists who is in the room, across the two instances.
    for page in [&page_a, &page_b] {
        wait_for(
            page,
            "the page lists alice and bob",
            &lists(&["alice", "bob"]),
        )
        .await;
    }

    say(&page_a, "hello from node A").await;
    let seen = shows("alice", "hello from node A");
    wait_for(&page_b, "page B shows A's message", &seen).await;
    wait_for(&page_a, "page A shows its own message", &seen).await;

    // Chromium offers permessage-deflate and both instances take it: a line
    // long enough to be compressed goes from A to B, compressed both ways.
    let long = "a long line, long enough to be sent compressed both ways: ".repeat(4);
    say(&page_a, long.trim()).await;
    wait_for(
        &page_b,
        "page B shows A's long line",
        &shows("alice", long.trim()),
    )
    .await;
    for port in [port_a, port_b] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (status, metrics) = support::http_get(addr, "/metrics", "").await;
        assert_eq!(status, 200);
        let compressed = metrics
            .lines()
            .find_map(|line| line.strip_prefix("realtime_connections_compressed_total "))
            .and_then(|count| count.trim().parse::<f64>().ok());
        assert!(
            compressed.is_some_and(|count| count >= 1.0),
            "the page's connection negotiated compression on port {port}: {compressed:?}"
        );
    }

    // History lives in Redis: a page that joins later on node B sees the line.
    let page_c = browser(driver_port, &profiles.join("c")).await;
    join(&page_c, port_b, "carol", "lobby").await;
    wait_for(
        &page_c,
        "a late joiner on B gets A's line from history",
        &seen,
    )
    .await;

    // The admin room is refused to bob, and the page says why.
    join(&page_b, port_b, "bob", "admin").await;
    wait_for(
        &page_b,
        "the forbidden room shows its error",
        "document.getElementById('status').dataset.state === 'refused' && document.getElementById('error').textContent.includes('403')",
    )
    .await;
    assert_eq!(
        text_of(&page_b, "error").await,
        "cannot join admin: the server refused the upgrade: HTTP 403"
    );
    screenshot(&page_b, "chat-forbidden.png").await;

    join(&page_b, port_b, "bob", "lobby").await;
    wait_for(&page_b, "page B is back in the lobby", connected).await;

    // SIGTERM on node A: its page is told the server went away (1001) and
    // reconnects, with backoff, once a new instance listens on the port, 5 s
    // later. Meanwhile B says 20 lines; A resumes where it stopped (`since`)
    // and shows each of them once, in order.
    terminate(node_a);
    let stopped_at = Instant::now();
    wait_for(
        &page_a,
        "page A sees the server go away",
        "document.getElementById('status').dataset.state === 'reconnecting' && document.getElementById('error').textContent.includes('went away')",
    )
    .await;
    for n in 1..=20 {
        say(&page_b, &format!("offline {n}")).await;
    }
    wait_for(
        &page_b,
        "page B shows its 20 lines",
        &shows("bob", "offline 20"),
    )
    .await;
    // The server stays away for 5 s at least.
    let away = Duration::from_secs(5).saturating_sub(stopped_at.elapsed());
    tokio::time::sleep(away).await;
    let _node_a = start_chat_on(&redis_url, port_a);
    wait_for(&page_a, "page A reconnects", connected).await;
    wait_for(
        &page_a,
        "the reconnected page A shows what it missed",
        &shows("bob", "offline 20"),
    )
    .await;
    let shown = page_a
        .execute(
            "return [...document.querySelectorAll('#log li .text')].map(e => e.textContent).filter(t => t.startsWith('offline '));",
            vec![],
        )
        .await
        .expect("read page A's log");
    // Resumed, not reloaded: the log was not rebuilt from the history.
    let joined = page_a
        .execute(
            "return [...document.querySelectorAll('#log li.system')].filter(e => e.textContent === 'joined lobby').length;",
            vec![],
        )
        .await
        .expect("read page A's log");
    assert_eq!(
        joined,
        serde_json::json!(1),
        "page A resumed without reloading its log"
    );
    let expected: Vec<String> = (1..=20).map(|n| format!("offline {n}")).collect();
    assert_eq!(
        shown,
        serde_json::json!(expected),
        "each missed line once, in order"
    );
    say(&page_b, "welcome back").await;
    let back = shows("bob", "welcome back");
    wait_for(
        &page_a,
        "the reconnected page A receives B's message",
        &back,
    )
    .await;

    // Several rooms in one tab: page A follows `side` too (`$join` on its
    // connection), and shows what carol says there, tagged with the room.
    page_a
        .find(Locator::Id("extra"))
        .await
        .unwrap()
        .send_keys("side")
        .await
        .unwrap();
    click(&page_a, "follow").await;
    wait_for(
        &page_a,
        "page A has joined side",
        "[...document.querySelectorAll('#log li.system')].some(li => li.textContent === 'joined side')",
    )
    .await;
    join(&page_c, port_b, "carol", "side").await;
    wait_for(&page_c, "page C is in side", connected).await;
    say(&page_c, "over on side").await;
    wait_for(
        &page_a,
        "page A shows side's line, tagged",
        "[...document.querySelectorAll('#log li')].some(li => li.dataset.room === 'side' && li.querySelector('.room')?.textContent === 'side' && li.textContent.includes('over on side'))",
    )
    .await;

    screenshot(&page_a, "chat-page-a.png").await;
    screenshot(&page_b, "chat-page-b.png").await;

    // Alice closes her tab on A: she leaves B's list (after the 2 s the
    // framework waits for a reload to come back).
    wait_for(
        &page_b,
        "page B lists alice and bob",
        &lists(&["alice", "bob"]),
    )
    .await;
    let _ = page_a.close().await;
    wait_for(&page_b, "page B lists bob alone", &lists(&["bob"])).await;
    screenshot(&page_b, "chat-page-b-after-alice-left.png").await;

    for page in [page_b, page_c] {
        let _ = page.close().await;
    }
    let _ = std::fs::remove_dir_all(&profiles);
}

/// A page opened while Redis is down (the chat up, its broker away): the
/// upgrade is refused with 503 and the page keeps trying, rather than stop
/// for good, and comes up once Redis is back; then it talks as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_opened_while_redis_is_down_comes_up_once_redis_is_back() {
    let mut redis = RedisServer::start().await;
    let (_node, port) = start_chat(&redis.url());
    let (_driver, driver_port) = start_chromedriver();
    let profile = std::env::temp_dir().join(format!(
        "realtime-chat-browser-outage-{}",
        std::process::id()
    ));
    let page = browser(driver_port, &profile).await;

    redis.stop();
    join(&page, port, "dana", "lobby").await;
    wait_for(
        &page,
        "the page is trying again",
        "document.getElementById('status').dataset.state === 'reconnecting'",
    )
    .await;
    // Several refused attempts later it still is: no refusal stops it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = page
        .execute(
            "return document.getElementById('status').dataset.state;",
            vec![],
        )
        .await
        .expect("read the page's state");
    assert_eq!(state, serde_json::json!("reconnecting"));
    screenshot(&page, "chat-redis-down.png").await;

    redis.restart().await;
    wait_for(
        &page,
        "the page comes up once Redis is back",
        "document.getElementById('status').dataset.state === 'open'",
    )
    .await;
    say(&page, "back with Redis").await;
    wait_for(
        &page,
        "the page shows its own line",
        &shows("dana", "back with Redis"),
    )
    .await;
    wait_for(&page, "the page lists dana", &lists(&["dana"])).await;
    let _ = page.close().await;
    let _ = std::fs::remove_dir_all(&profile);
}

/// Types `user` into the moderation box and presses `button` (`invite` or
/// `kick`).
async fn moderate(page: &Client, button: &str, user: &str) {
    let input = page.find(Locator::Id("who")).await.unwrap();
    input.send_keys(user).await.unwrap();
    click(page, button).await;
}

/// How many lines of the page's log contain `text`.
async fn count_lines(page: &Client, text: &str) -> u64 {
    let script = format!(
        "return [...document.querySelectorAll('#log li')].filter(li => li.textContent.includes('{text}')).length;"
    );
    let value = page.execute(&script, vec![]).await.expect("count lines");
    value.as_u64().expect("a count")
}

/// The chat with JWTs of 3 s on two instances: three pages stay open for
/// 20 s on refreshed tokens (each refresh in their log, never a
/// reconnect); an invitation brings alice's page into bob's room, which it
/// shows; admin kicks bob, whose page stops and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_live_on_short_jwts_are_invited_and_kicked() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let jwt = [
        ("JWT_SECRET", "a browser test secret of 32 bytes"),
        ("TOKEN_SECS", "3"),
    ];
    let (port_a, port_b) = (free_port(), free_port());
    let _node_a = support::chat::start_chat_with(&redis_url, port_a, &jwt);
    let _node_b = support::chat::start_chat_with(&redis_url, port_b, &jwt);
    let (_driver, driver_port) = start_chromedriver();
    let profiles = std::env::temp_dir().join(format!("realtime-chat-jwt-{}", std::process::id()));
    let alice = browser(driver_port, &profiles.join("alice")).await;
    let bob = browser(driver_port, &profiles.join("bob")).await;
    let admin = browser(driver_port, &profiles.join("admin")).await;

    join(&alice, port_a, "alice", "lobby").await;
    join(&bob, port_b, "bob", "den").await;
    join(&admin, port_a, "admin", "lobby").await;
    let connected = "document.getElementById('status').dataset.state === 'open'";
    for page in [&alice, &bob, &admin] {
        wait_for(page, "the page is connected", connected).await;
    }

    tokio::time::sleep(Duration::from_secs(20)).await;
    for page in [&alice, &bob, &admin] {
        let opens = page
            .execute(
                "return document.getElementById('status').dataset.opens;",
                vec![],
            )
            .await
            .expect("read the page's opens");
        assert_eq!(opens, serde_json::json!("1"), "no reconnect in 20 s");
        let refreshes = count_lines(page, "token refreshed").await;
        assert!(
            refreshes >= 5,
            "{refreshes} refreshes in 20 s of 3 s tokens"
        );
    }
    screenshot(&alice, "chat-jwt-refreshes.png").await;

    moderate(&bob, "invite", "alice").await;
    wait_for(
        &alice,
        "alice's page shows the room she was invited to",
        "[...document.querySelectorAll('#log li')].some(li => li.textContent === 'invited to den') && document.getElementById('rooms').textContent === 'den'",
    )
    .await;
    say(&bob, "welcome to the den").await;
    wait_for(
        &alice,
        "alice's page shows the den's next line",
        &shows("bob", "welcome to the den"),
    )
    .await;
    screenshot(&alice, "chat-invited.png").await;

    moderate(&admin, "kick", "bob").await;
    wait_for(
        &bob,
        "bob's page stops and says why",
        "document.getElementById('status').dataset.state === 'stopped' && document.getElementById('error').textContent === 'stopped by the server: kicked by admin'",
    )
    .await;
    screenshot(&bob, "chat-kicked.png").await;
    // Stopped for good: no reconnect after 3003.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = bob
        .execute(
            "return document.getElementById('status').dataset.state;",
            vec![],
        )
        .await
        .expect("read the page's state");
    assert_eq!(state, serde_json::json!("stopped"));

    for page in [alice, bob, admin] {
        let _ = page.close().await;
    }
    let _ = std::fs::remove_dir_all(&profiles);
}
