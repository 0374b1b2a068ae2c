//! `neomigrate` end to end: a FileStorage made by ZODB is imported into a
//! cluster of our processes and exported back, and ZODB's iteration of
//! both files must be the same; its errors and its output.
//!
//! ZODB runs in the Python of `$NEO_PY_VENV` (else `target/py-venv` of the
//! workspace), as CI sets it up: without it these tests fail, they do not
//! skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, python, Cluster};
use neo_cli::neomigrate::IMPORT_WARNING;
use neo_proto::Tid;

const NEOMIGRATE: &str = env!("CARGO_BIN_EXE_neomigrate");

/// The scripts run by ZODB's Python.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/neomigrate")
        .join(name)
}

/// Runs a script of ours with ZODB's Python; its stdout.
fn run_python(name: &str, args: &[&Path]) -> String {
    let output = Command::new(python())
        .arg(script(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A ZODB FileStorage with the history described in `make_source.py`.
fn zodb_source(dir: &Path) -> PathBuf {
    let path = dir.join("source.fs");
    run_python("make_source.py", &[&path]);
    path
}

/// ZODB's iteration of a FileStorage, one JSON value per transaction.
fn zodb_dump(path: &Path) -> Vec<serde_json::Value> {
    run_python("dump.py", &[path])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn neomigrate(args: &[&str]) -> Output {
    Command::new(NEOMIGRATE).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

/// Checks `stdout` is NEO/py's lines (§11.9) around a copy.
fn assert_migration_lines(stdout: &str, warning: bool, source: &str, destination: &str) {
    let mut lines: Vec<&str> = stdout.lines().collect();
    if warning {
        let expected: Vec<&str> = IMPORT_WARNING.lines().collect();
        assert_eq!(lines[..expected.len()], expected[..], "{stdout}");
        lines.drain(..expected.len());
    }
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(
        lines[0],
        format!("Migrating from {source} to {destination}")
    );
    let seconds = lines[1].strip_prefix("Migration done in ").unwrap();
    let (whole, decimals) = seconds.split_once('.').unwrap();
    assert!(
        whole.parse::<u64>().is_ok() && decimals.len() == 5,
        "{seconds}"
    );
}

/// The whole history makes it through NEO: import, export, and ZODB sees
/// the same transactions and records in both files — everything but the
/// status, as NEO's commits cannot mark a transaction packed.
#[test]
fn round_trip_keeps_zodb_history() {
    let mut cluster = Cluster::new("migrate");
    cluster.start(2, 0);
    let source = zodb_source(cluster.dir.path());
    let source_text = source.to_str().unwrap().to_owned();
    let expected = zodb_dump(&source);
    // The history holds what the test is about.
    let records = || {
        expected
            .iter()
            .flat_map(|t| t["records"].as_array().unwrap())
    };
    assert!(
        expected.iter().any(|t| t["status"] == "p"),
        "no packed transaction"
    );
    assert!(
        records().any(|r| !r["data_txn"].is_null()),
        "no back-pointer"
    );
    assert!(
        records().any(|r| r["data"].is_null()),
        "no record without data"
    );
    assert!(
        records().any(|r| r["data"][0].as_u64().unwrap_or(0) > 1 << 20),
        "no big record"
    );

    let output = neomigrate(&["-c", "migrate", &source_text, &cluster.master]);
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stderr),
        cluster.logs()
    );
    assert_migration_lines(text(&output.stdout), true, &source_text, &cluster.master);

    let exported = cluster.dir.path().join("export.fs");
    let exported_text = exported.to_str().unwrap();
    let output = neomigrate(&["-q", "-c", "migrate", &cluster.master, exported_text]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "", "-q prints nothing");
    // No terminal: no progress bar either.
    assert_eq!(text(&output.stderr), "");
    assert!(cluster.dir.path().join("export.fs.index").is_file());

    let mut actual = zodb_dump(&exported);
    let mut expected = expected;
    for transaction in actual.iter_mut().chain(expected.iter_mut()) {
        transaction.as_object_mut().unwrap().remove("status");
    }
    assert_eq!(actual.len(), expected.len(), "number of transactions");
    for (actual, expected) in actual.iter().zip(&expected) {
        assert_eq!(actual, expected, "transaction {}", expected["tid"]);
    }

    // Exporting again prints NEO/py's two lines, without the warning.
    let again = cluster.dir.path().join("again.fs");
    let again_text = again.to_str().unwrap();
    let output = neomigrate(&["-c", "migrate", &cluster.master, again_text]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_migration_lines(text(&output.stdout), false, &cluster.master, again_text);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&exported).unwrap()
    );
    // Into a file that has these transactions already: refused, the file
    // as it was.
    let line = failure(&["-q", "-c", "migrate", &cluster.master, again_text], 1);
    assert!(
        line.contains(again_text) && line.contains("not after"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&exported).unwrap()
    );
}

/// Into a cluster that has data already, each oid's first store is based
/// on its revision there (NEO/py's `importFrom`): the import conflicts
/// with nothing and the source's history follows the cluster's.
#[test]
fn import_follows_what_the_cluster_has() {
    let mut cluster = Cluster::new("migrate-more");
    cluster.start(1, 0);
    let client = cluster.client();
    let oid = client.new_oid().unwrap();
    let mut transaction = client.begin(None).unwrap();
    let data = bytes::Bytes::from_static(b"before the import");
    assert!(transaction.store(oid, Tid::ZERO, data).unwrap().is_empty());
    transaction.vote(&common::meta()).unwrap();
    let before = transaction.finish().unwrap();
    client.close().unwrap();
    // Made after that commit, so its TIDs come after it.
    let source = zodb_source(cluster.dir.path());
    let mut expected = zodb_dump(&source);
    let mut records = expected
        .iter()
        .flat_map(|t| t["records"].as_array().unwrap());
    assert!(
        records.any(|r| r["oid"] == hex(oid.0)),
        "oid {oid} not in the source"
    );

    let output = neomigrate(&[
        "-q",
        "-c",
        "migrate-more",
        source.to_str().unwrap(),
        &cluster.master,
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "",
        "-q prints nothing, warning included"
    );

    let exported = cluster.dir.path().join("export.fs");
    let output = neomigrate(&[
        "-q",
        "-c",
        "migrate-more",
        &cluster.master,
        exported.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut actual = zodb_dump(&exported);
    assert_eq!(actual[0]["tid"], hex(before.0));
    assert_eq!(actual[0]["records"][0]["oid"], hex(oid.0));
    actual.remove(0);
    for transaction in actual.iter_mut().chain(expected.iter_mut()) {
        transaction.as_object_mut().unwrap().remove("status");
    }
    assert!(
        actual == expected,
        "the source's history differs once imported"
    );
}

/// An id as `dump.py` prints it.
fn hex(id: u64) -> String {
    format!("{id:016x}")
}

/// `--ca --cert --key` reach the cluster's TLS; an empty cluster exports
/// to a FileStorage with no transaction.
#[test]
fn tls_and_an_empty_cluster() {
    let mut cluster = Cluster::with_tls("migrate-tls");
    cluster.start(1, 0);
    let exported = cluster.dir.path().join("empty.fs");
    let mut args = cluster.tls_args();
    args.extend(["-q", "-c", "migrate-tls", &cluster.master].map(str::to_owned));
    args.push(exported.to_str().unwrap().to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = neomigrate(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(zodb_dump(&exported).is_empty());
}

/// Runs neomigrate expecting a failure with one line on stderr; that line.
fn failure(args: &[&str], status: i32) -> String {
    let output = neomigrate(args);
    let stderr = text(&output.stderr).to_owned();
    assert_eq!(output.status.code(), Some(status), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim_end().to_owned()
}

/// A damaged or truncated source is reported with its file and offset
/// before any cluster is contacted; a source that is neither a file nor
/// masters too.
#[test]
fn bad_sources_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let source = zodb_source(dir.path());
    std::fs::remove_file(dir.path().join("source.fs.index")).unwrap();
    // The first transaction's redundant length, after it, made wrong
    // (a length past the end would be a crash-truncated tail, which ZODB
    // ignores silently).
    let mut bytes = std::fs::read(&source).unwrap();
    // A copy cut in its last transaction, which ZODB would ignore silently.
    let end = bytes.len();
    let last_length = u64::from_be_bytes(bytes[end - 8..].try_into().unwrap());
    let last = end - 8 - last_length as usize;
    let cut = dir.path().join("cut.fs");
    std::fs::write(&cut, &bytes[..end - 10]).unwrap();
    let cut_text = cut.to_str().unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let line = failure(&["-c", "x", cut_text, &nowhere], 1);
    assert!(line.contains(cut_text), "{line}");
    assert!(
        line.contains(&format!("truncated at offset {last}")),
        "{line}"
    );

    let length = u64::from_be_bytes(bytes[12..20].try_into().unwrap());
    let trailer = 4 + length as usize;
    bytes[trailer..trailer + 8].copy_from_slice(&(length + 1).to_be_bytes());
    std::fs::write(&source, &bytes).unwrap();
    let source_text = source.to_str().unwrap();
    let line = failure(&["-c", "x", source_text, &nowhere], 1);
    assert!(line.starts_with("neomigrate: error: "), "{line}");
    assert!(line.contains(source_text), "{line}");
    assert!(line.contains(&format!("offset {trailer}")), "{line}");

    let missing = dir.path().join("missing.fs");
    let line = failure(&["-c", "x", missing.to_str().unwrap(), &nowhere], 1);
    assert!(line.contains("missing.fs: no such file"), "{line}");
}

/// No master, or masters of another cluster: a clear error once the
/// client gave up waiting, not a hang.
#[test]
fn unreachable_clusters_fail_in_bounded_time() {
    let mut cluster = Cluster::new("migrate-name");
    cluster.start(1, 0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.fs");
    let out = out.to_str().unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let start = Instant::now();
    // Both at once: each waits for the client's ready timeout.
    let spawn = |args: &[&str]| {
        Command::new(NEOMIGRATE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let no_master = spawn(&["-c", "migrate-name", &nowhere, out]);
    let wrong_name = spawn(&["-c", "another-name", &cluster.master, out]);
    let outputs = [
        (no_master.wait_with_output().unwrap(), &nowhere),
        (wrong_name.wait_with_output().unwrap(), &cluster.master),
    ];
    let elapsed = start.elapsed();
    for (output, address) in outputs {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("cannot reach cluster"), "{stderr}");
        assert!(stderr.contains(address.as_str()), "{stderr}");
    }
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    // Nothing was created for a copy that never started.
    assert!(!Path::new(out).exists());
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["source.fs", "127.0.0.1:1"],
        &["-c", "x", "source.fs"],
        &["-c", "x", "--bogus", "a", "b"],
    ] {
        let line = failure(args, 2);
        assert!(line.starts_with("neomigrate: error: "), "{line}");
    }
    let output = neomigrate(&["--help"]);
    assert!(output.status.success());
    assert!(text(&output.stdout).starts_with("usage: neomigrate [-h]"));
}
