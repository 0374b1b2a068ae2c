use std::path::Path;

use super::*;

fn logging_to(path: &Path, filter: &str) -> (impl Subscriber + Send + Sync, Logging) {
    build(LogOptions {
        program: "storage",
        file: Some(path),
        filter: Some(filter),
    })
    .unwrap()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn records_are_plain_lines_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storage.log");
    let (subscriber, _logging) = logging_to(&path, "info");
    let before = SystemTime::now();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(partition = 3, "replicated\nin two lines");
        tracing::warn!("disk almost full");
        tracing::debug!("below the level: not written");
    });
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|line| !line.contains('\x1b')), "{lines:?}");
    let parsed: Vec<Line<'_>> = lines.iter().map(|line| parse_line(line).unwrap()).collect();
    assert_eq!(parsed[0].level, Level::INFO);
    assert_eq!(parsed[0].target, "neo_log::tests");
    assert_eq!(parsed[0].message, "replicated");
    assert_eq!(parsed[1].message, "in two lines partition=3");
    assert_eq!(parsed[0].time, parsed[1].time, "one prefix for every line");
    assert!(parsed[0].time >= before && parsed[2].time <= SystemTime::now());
    assert_eq!(parsed[2].level, Level::WARN);
    assert_eq!(parsed[2].message, "disk almost full");
}

#[test]
fn the_node_column_names_the_program_then_the_nid() {
    // NODE is global: this is the only test that looks at it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storage.log");
    let (subscriber, _logging) = logging_to(&path, "info");
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("starting");
        set_node("S 1");
        tracing::info!("identified");
    });
    let nodes: Vec<String> = lines_of(&path)
        .iter()
        .map(|line| parse_line(line).unwrap().node.to_owned())
        .collect();
    assert_eq!(nodes, ["storage", "S_1"]);
}

#[test]
fn reopening_after_a_rename_starts_a_new_file_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.log");
    let rotated = dir.path().join("master.log.1");
    let (subscriber, logging) = logging_to(&path, "info");
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("first");
        std::fs::rename(&path, &rotated).unwrap();
        tracing::info!("second, still to the renamed file");
        logging.reopen().unwrap();
        tracing::info!("third");
        logging.flush().unwrap();
    });
    let messages = |path: &Path| -> Vec<String> {
        lines_of(path)
            .iter()
            .map(|line| parse_line(line).unwrap().message.to_owned())
            .collect()
    };
    assert_eq!(
        messages(&rotated),
        ["first", "second, still to the renamed file"]
    );
    assert_eq!(messages(&path), ["third"]);
    assert_eq!(logging.path().as_deref(), Some(path.as_path()));
}

#[test]
fn the_packet_log_is_switched_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.log");
    let (subscriber, logging) = logging_to(&path, "info,neo::packet=off");
    tracing::subscriber::with_default(subscriber, || {
        let packet =
            |n: u32| tracing::debug!(target: PACKET_TARGET, "#0x{n:04x} Ping > 127.0.0.1:1");
        packet(1);
        assert!(!packet_log_enabled());
        logging.set_packet_log(true).unwrap();
        assert!(packet_log_enabled());
        packet(2);
        tracing::debug!("other debug records stay filtered");
        logging.set_packet_log(false).unwrap();
        packet(3);
    });
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = parse_line(&lines[0]).unwrap();
    assert_eq!(line.packet(), Some("Ping"));
    assert!(line.message.starts_with("#0x0002 "));
}

#[test]
fn a_bad_filter_is_an_error_naming_it() {
    let error = build(LogOptions {
        program: "master",
        file: None,
        filter: Some("neo_master=loud"),
    })
    .err()
    .unwrap();
    let text = error.to_string();
    assert!(
        text.contains("neo_master=loud") && text.contains("option"),
        "{text}"
    );
}

#[test]
fn a_log_file_that_cannot_be_opened_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("x.log");
    let error = build(LogOptions {
        program: "master",
        file: Some(&path),
        filter: Some("info"),
    })
    .err()
    .unwrap();
    assert!(error.to_string().contains("no-such-dir"), "{error}");
}

#[test]
fn lines_not_in_the_format_are_refused() {
    for (text, expected) in [
        ("", ParseLineError::Missing("time")),
        (
            "yesterday INFO S1 m: x",
            ParseLineError::Time("yesterday".into()),
        ),
        (
            "2026-12-06T07:52:08.123456Z",
            ParseLineError::Missing("level"),
        ),
        (
            "2026-12-06T07:52:08.123456Z LOUD S1 m: x",
            ParseLineError::Level("LOUD".into()),
        ),
        (
            "2026-12-06T07:52:08.123456Z INFO S1",
            ParseLineError::Missing("module"),
        ),
        (
            "2026-12-06T07:52:08.123456Z INFO S1 module x",
            ParseLineError::Missing("module"),
        ),
    ] {
        assert_eq!(parse_line(text), Err(expected), "{text:?}");
    }
    let line = parse_line("2026-12-06T07:52:08.123456Z WARN  M1 neo_master::app: ").unwrap();
    assert_eq!((line.node, line.message, line.packet()), ("M1", "", None));
}
