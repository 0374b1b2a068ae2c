//! The admin's status page (`--status`): its routes (the server's limits
//! are `neo-net`'s, tested there), and the page itself in a real headless
//! Chromium on a real cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, Cluster};
use neo_admin::http;
use neo_client::TxnMeta;
use neo_net::http::HttpLimits as Limits;
use neo_proto::Tid;

/// Where Debian's package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

// --- the routes ------------------------------------------------------------

/// A status server with these limits on a free port, serving `{}` as
/// status, on a runtime of its own (kept alive by the returned value).
fn server(limits: Limits) -> (tokio::runtime::Runtime, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(http::serve(listener, limits, || async {
        Some("{\"state\": \"RUNNING\"}".to_owned())
    }));
    (runtime, port)
}

/// Sends `request` and reads the whole answer (the server closes).
fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(port: u16, path: &str) -> String {
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[test]
fn the_page_and_its_data_are_served_and_nothing_else() {
    let (_runtime, port) = server(Limits::default());
    let page = get(port, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    // Inline CSS and JS only: nothing fetched from elsewhere.
    let html = body(&page);
    assert!(html.contains("<style>") && html.contains("<script>"));
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "the page refers to {external}");
    }
    let json = get(port, "/status.json?t=1");
    assert!(json.starts_with("HTTP/1.1 200 OK\r\n"), "{json}");
    assert!(json.contains("Content-Type: application/json\r\n"));
    assert_eq!(body(&json), "{\"state\": \"RUNNING\"}");
    assert!(get(port, "/other").starts_with("HTTP/1.1 404 "));
    let post = exchange(port, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let head = exchange(port, b"HEAD / HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && body(&head).is_empty());
}

// --- the page in a browser ------------------------------------------------

/// The workspace's target directory (where `cargo` builds).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

/// Runs headless Chromium on `url` with `extra` arguments (bounded in
/// time); returns its standard output.
fn chromium(url: &str, extra: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: the status page test needs Chromium; install it with \
         `apt-get install -y --no-install-recommends chromium` (.ci/run does)"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// The page's DOM once its script ran.
fn dom(url: &str) -> String {
    chromium(url, &["--dump-dom"])
}

/// Polls `status.json` until `done` holds for it (bounded).
fn wait_status(port: u16, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(port, "/status.json");
        if let Ok(status) = serde_json::from_str(body(&answer)) {
            if done(&status) {
                return status;
            }
        }
        assert!(Instant::now() < deadline, "status still {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn headless_chromium_shows_a_stopped_storage_and_its_out_of_date_cells() {
    let port = free_port();
    let status = format!("127.0.0.1:{port}");
    let mut cluster = Cluster::new("alpha");
    cluster.start_with_admin(2, &["--status", &status]);
    // Some commits, for the last TID and the throughput.
    let client = cluster.client();
    for _ in 0..5 {
        let mut txn = client.begin(None).unwrap();
        for _ in 0..20 {
            let oid = client.new_oid().unwrap();
            txn.store(oid, Tid::ZERO, Bytes::from_static(b"data"))
                .unwrap();
        }
        let meta = TxnMeta {
            user: Bytes::from_static(b"tests"),
            description: Bytes::from_static(b"status page"),
            extension: Bytes::new(),
            pack: None,
        };
        txn.vote(&meta).unwrap();
        assert!(txn.finish().unwrap() > Tid::ZERO);
    }
    drop(client);
    let url = format!("http://{status}/");
    let running = wait_status(port, |status| {
        status["pt"]["not_up_to_date"] == 0
            && status["nodes"].as_array().is_some_and(|n| n.len() == 4)
            && status["last_tid"]["age_s"].is_number()
    });
    let storages: Vec<String> = running["pt"]["storages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|nid| nid.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(storages.len(), 2);

    let before = dom(&url);
    assert!(
        before.contains("id=\"state\" class=\"badge ok\" data-state=\"RUNNING\""),
        "{before}"
    );
    assert!(before.contains("last commit "), "{before}");
    for nid in &storages {
        assert!(
            before.contains(&format!("<tr data-nid=\"{nid}\" data-state=\"RUNNING\">")),
            "{nid} not shown running: {before}"
        );
    }

    cluster.kill("storage1");
    let after = wait_status(port, |status| {
        status["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|node| node["state"] == "DOWN"))
            && status["pt"]["not_up_to_date"] == 4
    });
    let lost = after["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["state"] == "DOWN")
        .unwrap()["nid"]
        .as_str()
        .unwrap()
        .to_owned();

    let page = dom(&url);
    assert!(
        page.contains(&format!("<tr data-nid=\"{lost}\" data-state=\"DOWN\">")),
        "{lost} not shown DOWN: {page}"
    );
    let out_of_date = format!("class=\"cell-OUT_OF_DATE\" data-nid=\"{lost}\"");
    assert_eq!(page.matches(&out_of_date).count(), 4, "{page}");
    assert!(page.contains("4 of 8 cells not up to date"), "{page}");
    assert!(page.contains(&format!("ERROR: {lost} is DOWN")), "{page}");

    let dir = target_dir().join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("after-storage-stopped.png");
    let _ = std::fs::remove_file(&png);
    chromium(&url, &[&format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    cluster.stop();
}
