//! Log files of a real cluster: plain lines that survive rotation, a
//! SIGTERM and a clean exit; the packet log switched at runtime; and
//! `neolog` filtering them by node, level, time and packet type, and
//! following them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{commit_new_object, Cluster, NEOADMIN, NEOMASTER, NEOSTORAGE};
use neo_client::BlockingClient;

const NEOLOG: &str = env!("CARGO_BIN_EXE_neolog");

/// One transaction of one new object.
fn commit_one(client: &BlockingClient) {
    commit_new_object(client, b"logged");
}

/// A cluster of one master, one storage and an admin, each logging to
/// `«node».neo.log` with these extra options.
fn start_logging_cluster(name: &str, storage_extra: &[&str]) -> (Cluster, [PathBuf; 3]) {
    let mut cluster = Cluster::new(name);
    let path = |node: &str| cluster.dir.path().join(format!("{node}.neo.log"));
    let files = [path("master"), path("storage"), path("admin")];
    let [master_log, storage_log, _] = files.clone().map(|p| p.display().to_string());
    let (name, master) = (cluster.name.clone(), cluster.master.clone());
    cluster.spawn(
        "master",
        NEOMASTER,
        &[
            "-c",
            &name,
            "-b",
            &master,
            "-p",
            "4",
            "-A",
            "1",
            "-l",
            &master_log,
        ],
    );
    let database = cluster.database(0);
    let mut storage_args = vec![
        "-c",
        &name,
        "-m",
        &master,
        "-a",
        "SQLite",
        "-d",
        &database,
        "-l",
        &storage_log,
    ];
    storage_args.extend_from_slice(storage_extra);
    cluster.spawn("storage0", NEOSTORAGE, &storage_args);
    start_admin(&mut cluster, &files[2]);
    cluster.wait_state("RUNNING");
    (cluster, files)
}

fn start_admin(cluster: &mut Cluster, log: &Path) {
    let (name, master, admin) = (
        cluster.name.clone(),
        cluster.master.clone(),
        cluster.admin.clone(),
    );
    let log = log.display().to_string();
    cluster.spawn(
        "admin",
        NEOADMIN,
        &["-c", &name, "-m", &master, "-b", &admin, "-l", &log],
    );
}

fn signal(cluster: &Cluster, label: &str, signal: &str) {
    let (_, child) = cluster
        .children
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no process {label}"));
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {label}");
}

/// SIGRTMIN+«n» as kill(1) takes it.
fn rtmin(n: i32) -> String {
    format!("-{}", libc::SIGRTMIN() + n)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every line of the file is one of ours, with no escape code.
fn check_format(path: &Path) {
    for line in lines(path) {
        assert!(!line.contains('\x1b'), "{}: {line:?}", path.display());
        neo_log::parse_line(&line).unwrap_or_else(|e| panic!("{}: {e}: {line:?}", path.display()));
    }
}

/// Waits (bounded) until `path` has a line containing `text`.
fn wait_for_line(path: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(path).is_ok_and(|log| log.contains(text)) {
        assert!(
            Instant::now() < deadline,
            "{} has no {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn logs_survive_rotation_a_sigterm_and_a_clean_exit() {
    let (mut cluster, files) = start_logging_cluster("rotation", &[]);
    let client = cluster.client();
    commit_one(&client);
    // logrotate: rename, then signal (SIGHUP, or NEO/py's SIGRTMIN+1).
    let rotated = files.clone().map(|path| path.with_extension("log.1"));
    for (path, old) in files.iter().zip(&rotated) {
        std::fs::rename(path, old).unwrap();
    }
    signal(&cluster, "master", "-HUP");
    signal(&cluster, "storage0", &rtmin(1));
    signal(&cluster, "admin", "-HUP");
    for path in &files {
        wait_for_line(path, "log file reopened");
    }
    commit_one(&client);
    client.close().unwrap();
    // SIGRTMIN and flush_log sync the files; they are no exit.
    signal(&cluster, "storage0", &rtmin(0));
    assert!(cluster.neoctl("flush_log").status.success());
    // SIGTERM stops the admin; a new one logs on to the same file, then
    // the cluster stops every node.
    signal(&cluster, "admin", "-TERM");
    wait_for_line(&files[2], "neoadmin stopped");
    cluster.kill("admin");
    start_admin(&mut cluster, &files[2]);
    cluster.wait_state("RUNNING");
    cluster.stop();

    for path in files.iter().chain(&rotated) {
        check_format(path);
    }
    let admin_stops = lines(&files[2])
        .iter()
        .filter(|line| line.ends_with("neoadmin stopped"))
        .count();
    assert_eq!(admin_stops, 2, "the SIGTERM, then the cluster's stop");
    for (path, old, program) in [
        (&files[0], &rotated[0], "neomaster"),
        (&files[1], &rotated[1], "neostorage"),
        (&files[2], &rotated[2], "neoadmin"),
    ] {
        let old_lines = lines(old);
        let new_lines = lines(path);
        assert!(
            old_lines
                .iter()
                .any(|l| l.contains("identified") || l.contains("listening")),
            "{old_lines:#?}"
        );
        assert!(
            !old_lines.iter().any(|l| l.contains("reopened")),
            "{old_lines:#?}"
        );
        assert!(new_lines[0].contains("log file reopened"), "{new_lines:#?}");
        let last = new_lines.last().unwrap();
        assert!(
            last.ends_with(&format!("{program} stopped")),
            "{program}'s log ends with {last:?}"
        );
    }
}

/// Runs neolog; returns its stdout lines.
fn neolog(args: &[&str], files: &[PathBuf]) -> Vec<String> {
    let output = Command::new(NEOLOG)
        .args(args)
        .args(files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "neolog {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `«unix time» «LEVEL» «node» «text»` of `neolog -d %s`.
fn columns(line: &str) -> (f64, &str, &str, &str) {
    let mut rest = line;
    let mut word = || {
        let (word, tail) = rest
            .trim_start()
            .split_once(' ')
            .unwrap_or_else(|| panic!("{line:?}"));
        rest = tail;
        word
    };
    let time = word().parse().unwrap();
    let level = word();
    let node = word();
    (time, level, node, rest.trim_start())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn neolog_filters_and_follows_a_real_clusters_logs() {
    // The storage logs packets from its start; the master once told to.
    let (mut cluster, files) =
        start_logging_cluster("neolog", &["--log-level", "info,neo::packet=debug"]);
    signal(&cluster, "master", "-USR1");
    wait_for_line(&files[0], "packet log switched on=true");
    let client = cluster.client();
    let before = unix_now();
    const COMMITS: usize = 5;
    for _ in 0..COMMITS {
        commit_one(&client);
    }
    let after = unix_now();

    // Merged by time, every node named.
    let all = neolog(&["-d", "%s"], &files);
    let times: Vec<f64> = all.iter().map(|line| columns(line).0).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not merged by time");
    for node in ["M1", "S1", "A1"] {
        assert!(
            all.iter().any(|line| columns(line).2 == node),
            "no line of {node}: {all:#?}"
        );
    }

    // By node.
    let storage = neolog(&["-d", "%s", "-n", "S1"], &files);
    assert!(!storage.is_empty());
    assert!(storage.iter().all(|line| columns(line).2 == "S1"));

    // By packet type: each commit locks once on the storage, and the
    // master sent each of those locks.
    let locks = neolog(&["-d", "%s", "-p", "AskLockInformation"], &files);
    let count = |node: &str, direction: &str| {
        locks
            .iter()
            .filter(|line| {
                let (_, level, n, text) = columns(line);
                level == "PACKET" && n == node && text.contains(direction)
            })
            .count()
    };
    assert_eq!(count("S1", " < "), COMMITS, "{locks:#?}");
    assert_eq!(count("M1", " > "), COMMITS, "{locks:#?}");
    assert_eq!(locks.len(), 2 * COMMITS, "{locks:#?}");
    // Arguments only with -a.
    assert!(!locks.iter().any(|line| line.contains(" \t| ")));
    let with_arguments = neolog(&["-a", "-p", "AskLockInformation"], &files);
    assert!(with_arguments
        .iter()
        .all(|line| line.contains(" \t| AskLockInformation")));

    // By time range: the commits' packets, nothing from the start-up.
    let from = format!("{before}");
    let until = format!("{after}");
    let window = neolog(
        &["-d", "%s", "--from", &from, "--until", &until, "-n", "S1"],
        &files,
    );
    assert!(window.iter().any(|line| line.contains("AskStoreObject")));
    for line in &window {
        let time = columns(line).0;
        // neolog prints 4 decimals of the time: a rounding margin.
        assert!(time >= before - 1e-3 && time <= after, "{line}");
    }
    assert!(!window.iter().any(|line| line.contains("identified")));

    // By level.
    for line in neolog(&["-d", "%s", "-l", "info"], &files) {
        let level = columns(&line).1;
        assert!(["INFO", "WARNING", "ERROR"].contains(&level), "{line}");
    }

    // Following: records written after neolog started come out.
    let mut follower = Command::new(NEOLOG)
        .args(["-f", "-s", "0.1", "-n", "S1", "-p", "AskLockInformation"])
        .args(&files)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let receive = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("neolog -f printed no {what}"))
            .unwrap()
    };
    for _ in 0..COMMITS {
        receive("past lock");
    }
    commit_one(&client);
    assert!(receive("new lock").contains("AskLockInformation"));
    follower.kill().unwrap();
    follower.wait().unwrap();
    client.close().unwrap();
    cluster.stop();
}

#[test]
fn neolog_refuses_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.log");
    let output = Command::new(NEOLOG).arg(&missing).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("neolog: error: ") && stderr.contains("missing.log"),
        "{stderr}"
    );
    // A file that is not a log: each line is reported, the run goes on.
    let garbage = dir.path().join("garbage.log");
    std::fs::write(&garbage, "not a log line\n\u{1b}[31mcolour\n").unwrap();
    let out = neolog(&["-d", ""], &[garbage]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(out.iter().all(|line| line.starts_with("LOG ")), "{out:#?}");
    assert!(out[0].contains("line 1"), "{out:#?}");
    // Bad options are usage errors.
    for args in [&["-s", "0"][..], &["--from", "someday"], &["-l", "loud"]] {
        let output = Command::new(NEOLOG)
            .args(args)
            .arg(dir.path().join("garbage.log"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}
