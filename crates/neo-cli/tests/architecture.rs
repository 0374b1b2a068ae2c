//! The architecture invariants of ARCHITECTURE.md that are about absence,
//! checked on the sources: which crate may depend on which, and which
//! files may do I/O or read the clock. The state machines are tested
//! deterministically only as long as they stay free of both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The names of a crate's normal dependencies.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(crates_dir().join(krate).join("Cargo.toml")).unwrap();
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['.', '=', ' ']).next().unwrap();
            names.push(name.to_owned());
        }
    }
    names
}

/// The code lines (comments left out) of every `.rs` file under `dir` of
/// `krate`, with the file's path relative to the crate.
fn code_lines(krate: &str, dir: &str) -> Vec<(String, String)> {
    let root = crates_dir().join(krate);
    let mut lines = Vec::new();
    let mut pending = vec![root.join(dir)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(&root).unwrap().display().to_string();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let code = line.trim();
                if !code.starts_with("//") {
                    lines.push((relative.clone(), code.to_owned()));
                }
            }
        }
    }
    lines
}

#[test]
fn dependency_arrows_go_one_way() {
    let proto = dependencies("neo-proto");
    for name in &proto {
        assert!(
            ["bytes", "rmp", "thiserror"].contains(&name.as_str()),
            "neo-proto depends on {name}"
        );
    }
    let cluster = dependencies("neo-cluster");
    assert_eq!(cluster, ["neo-proto", "thiserror"], "neo-cluster");
    let roles = [
        "neo-master",
        "neo-storage",
        "neo-admin",
        "neo-client",
        "neo-py",
    ];
    for name in dependencies("neo-net") {
        assert!(
            !roles.contains(&name.as_str()) && name != "neo-cluster",
            "neo-net knows {name}"
        );
    }
    for role in ["neo-master", "neo-storage", "neo-admin", "neo-client"] {
        for name in dependencies(role) {
            assert!(!roles.contains(&name.as_str()), "{role} depends on {name}");
        }
    }
    for krate in [
        "neo-proto",
        "neo-net",
        "neo-cluster",
        "neo-master",
        "neo-storage",
        "neo-admin",
        "neo-client",
        "neo-py",
        "neo-cli",
        "neo-bench",
    ] {
        let names = dependencies(krate);
        // neolog reads NEO/py's log files, which are SQLite databases.
        if krate != "neo-storage" && krate != "neo-cli" {
            assert!(!names.contains(&"rusqlite".into()), "{krate} knows SQL");
        }
        if krate != "neo-storage" {
            assert!(!names.contains(&"mysql".into()), "{krate} knows SQL");
        }
        if krate != "neo-py" {
            assert!(!names.contains(&"pyo3".into()), "{krate} knows Python");
        }
    }
}

/// Node logic and the protocol neither do I/O nor read the clock: no
/// tokio, no sockets, no files, no `now()` outside the shells.
#[test]
fn state_machines_do_no_io_and_read_no_clock() {
    // Addresses are values (`std::net::SocketAddr` is fine); sockets,
    // files, sleeping and the clock are I/O.
    let forbidden = [
        "tokio",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "std::fs",
        "thread::sleep",
        "SystemTime::now",
        "Instant::now",
    ];
    let places = [
        ("neo-proto", "src"),
        ("neo-cluster", "src"),
        ("neo-net", "src/node.rs"),
        ("neo-master", "src"),
        ("neo-storage", "src/node"),
        ("neo-storage", "src/db"),
        ("neo-admin", "src/app.rs"),
        ("neo-admin", "src/summary.rs"),
        ("neo-admin", "src/monitor.rs"),
        ("neo-admin", "src/mail.rs"),
        ("neo-admin", "src/status.rs"),
        ("neo-client", "src/txn/machine.rs"),
    ];
    let mut checked = 0;
    for (krate, dir) in places {
        for (file, line) in code_lines(krate, dir) {
            // The shells are where I/O and the clock belong.
            if file.ends_with("shell.rs") || file.contains("fuzzing") {
                continue;
            }
            checked += 1;
            for word in forbidden {
                assert!(!line.contains(word), "{krate}/{file}: {line}");
            }
        }
    }
    assert!(checked > 5000, "only {checked} lines checked");
}

/// Of the programs, only neolog's reader of NEO/py's log databases knows
/// SQLite.
#[test]
fn only_neologs_reader_knows_sqlite_among_the_programs() {
    let mut users = Vec::new();
    for (file, line) in code_lines("neo-cli", "src") {
        if line.contains("rusqlite") {
            users.push(file);
        }
    }
    users.dedup();
    assert_eq!(users, ["src/neolog/source.rs"]);
}

/// Within the storage, only the SQLite engine knows SQLite and only the
/// MySQL engine knows MySQL's client.
#[test]
fn only_each_engine_knows_its_database() {
    for (file, line) in code_lines("neo-storage", "src") {
        if !file.starts_with("src/backend/sqlite") {
            assert!(!line.contains("rusqlite"), "neo-storage/{file}: {line}");
        }
        // `self::mysql` is the engine's module, not the client.
        let client = line.replace("self::mysql::", "");
        if !file.starts_with("src/backend/mysql") {
            assert!(!client.contains("mysql::"), "neo-storage/{file}: {line}");
        }
    }
}

/// The only hand-written `unsafe` code is the SQLite VFS's FFI: every
/// other crate forbids it (the workspace's lint) or denies it (neo-py,
/// whose PyO3 macros expand to some), and writes none.
#[test]
fn unsafe_code_lives_only_in_the_sqlite_vfs() {
    // Spelt in pieces, so that this test does not find itself.
    let word = ["un", "safe"].concat();
    let needles: Vec<String> = ["{", "fn", "extern", "impl"]
        .iter()
        .map(|next| format!("{word} {next}"))
        .chain([format!("allow({word}_code")])
        .collect();
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        let krate = entry.unwrap().file_name().to_string_lossy().into_owned();
        if krate == "neo-sqlite-wal" {
            continue;
        }
        for dir in ["src", "tests", "benches", "examples"] {
            if !crates_dir().join(&krate).join(dir).is_dir() {
                continue;
            }
            for (file, line) in code_lines(&krate, dir) {
                assert!(
                    !needles.iter().any(|needle| line.contains(needle.as_str())),
                    "{krate}/{file}: {line}"
                );
            }
        }
    }
    let manifest =
        std::fs::read_to_string(crates_dir().join("neo-sqlite-wal").join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("{word}_code = \"deny\"")),
        "{manifest}"
    );
}
