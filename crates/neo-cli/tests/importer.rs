//! The Importer (`-a Importer`, operations.md §6) on real processes: a
//! FileStorage made by ZODB is served as soon as the cluster runs, clients
//! read and commit while it is imported, the importing storage is killed
//! with SIGKILL in the middle and restarted, and at the end every revision
//! of the source and every acknowledged commit is read back exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{python, Cluster, NEOSTORAGE};
use neo_proto::{Oid, Tid};
use sha1::{Digest, Sha1};

/// A revision as ZODB's iterator saw it: `(serial, SHA-1 of the data or
/// None, back-pointer)`.
type Revision = (Tid, Option<String>, Option<Tid>);

/// What ZODB wrote in a source.
struct Source {
    path: PathBuf,
    last_tid: Tid,
    /// Every oid's revisions, oldest first.
    objects: BTreeMap<Oid, Vec<Revision>>,
}

fn tid_of(hex: &str) -> Tid {
    Tid(u64::from_str_radix(hex, 16).unwrap())
}

/// Runs `tests/zodb/make_source.py` with `args`.
fn make_source_py(args: &[&std::ffi::OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zodb/make_source.py");
    let status = Command::new(python())
        .arg(script)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "make_source.py {args:?} failed");
}

/// Makes a FileStorage of about `megabytes` with ZODB.
fn make_source(dir: &Path, name: &str, megabytes: u32, seed: u32) -> Source {
    let path = dir.join(format!("{name}.fs"));
    let dump = dir.join(format!("{name}.json"));
    let (megabytes, seed) = (megabytes.to_string(), seed.to_string());
    make_source_py(&[
        path.as_os_str(),
        megabytes.as_ref(),
        seed.as_ref(),
        dump.as_os_str(),
    ]);
    read_dump(path, &dump)
}

/// What ZODB sees in the FileStorage at `path`, now.
fn zodb_view(path: &Path) -> Source {
    let dump = path.with_extension("view.json");
    make_source_py(&["--dump".as_ref(), path.as_os_str(), dump.as_os_str()]);
    read_dump(path.to_owned(), &dump)
}

fn read_dump(path: PathBuf, dump: &Path) -> Source {
    let dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump).unwrap()).unwrap();
    let objects = dump["objects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(oid, revisions)| {
            let revisions = revisions
                .as_array()
                .unwrap()
                .iter()
                .map(|revision| {
                    (
                        tid_of(revision[0].as_str().unwrap()),
                        revision[1].as_str().map(str::to_owned),
                        revision[2].as_str().map(tid_of),
                    )
                })
                .collect();
            (Oid(u64::from_str_radix(oid, 16).unwrap()), revisions)
        })
        .collect();
    Source {
        path,
        last_tid: tid_of(dump["last_tid"].as_str().unwrap()),
        objects,
    }
}

fn sha1_hex(data: &[u8]) -> String {
    hex::encode(Sha1::digest(data))
}

/// Writes the `importer.conf` of one source into a SQLite destination.
fn importer_conf(dir: &Path, source: &Path, writeback: bool) -> (PathBuf, PathBuf) {
    let destination = dir.join("destination.sqlite");
    let conf = dir.join("importer.conf");
    std::fs::write(
        &conf,
        format!(
            "[neo]\nadapter = SQLite\ndatabase = {}\nwriteback = {writeback}\n\n[root]\n\
             storage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            destination.display(),
            source.display()
        ),
    )
    .unwrap();
    (conf, destination)
}

fn start_importer(cluster: &mut Cluster, label: &str, conf: &Path) {
    let (name, master) = (cluster.name.clone(), cluster.master.clone());
    let conf = conf.to_str().unwrap().to_owned();
    let args = ["-c", &name, "-m", &master, "-a", "Importer", "-d", &conf];
    cluster.spawn(label, NEOSTORAGE, &args);
}

/// A master, a storage importing as `conf` says, and an admin; waits until
/// the cluster runs.
fn start_importing_cluster(cluster: &mut Cluster, conf: &Path) {
    cluster.start_master(&["--autostart", "1", "-r", "0"]);
    start_importer(cluster, "storage0", conf);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
}

/// The last tid imported, as the destination saved it (read beside the
/// storage, which writes it in WAL mode).
fn imported_tid(destination: &Path) -> Option<Tid> {
    let db = rusqlite::Connection::open_with_flags(
        destination,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    let value: String = db
        .query_row(
            "SELECT value FROM config WHERE name = 'import_tid'",
            [],
            |row| row.get(0),
        )
        .ok()?;
    Some(tid_of(&value))
}

/// Commits `count` transactions: each modifies an object of the source
/// and creates one; every acknowledged one is recorded in `committed`.
fn commit_during_import(
    client: &neo_client::BlockingClient,
    source: &Source,
    committed: &mut BTreeMap<Oid, Vec<(Tid, Bytes)>>,
    round: usize,
    count: usize,
) {
    let oids: Vec<Oid> = source.objects.keys().copied().collect();
    for index in 0..count {
        let existing = oids[(round * 131 + index * 977) % oids.len()];
        let base = match committed
            .get(&existing)
            .and_then(|revisions| revisions.last())
        {
            Some((tid, _)) => *tid,
            None => client
                .load(existing)
                .map_or(Tid::ZERO, |loaded| loaded.serial),
        };
        let new = client.new_oid().unwrap();
        let mut txn = client.begin(None).unwrap();
        let changed = Bytes::from(format!("changed in round {round}, #{index}"));
        let created = Bytes::from(format!("created in round {round}, #{index}"));
        let mut conflicts = txn.store(existing, base, changed.clone()).unwrap();
        conflicts.extend(txn.store(new, Tid::ZERO, created.clone()).unwrap());
        assert!(conflicts.is_empty(), "{conflicts:?}");
        txn.vote(&common::meta()).unwrap();
        let tid = txn.finish().unwrap();
        assert!(tid > source.last_tid, "new commits go above the source");
        committed.entry(existing).or_default().push((tid, changed));
        committed.entry(new).or_default().push((tid, created));
    }
}

/// Reads back, through the cluster, every revision of `oids`: their
/// history and each revision's data and back-pointer.
fn check_objects(
    client: &neo_client::BlockingClient,
    source: &Source,
    committed: &BTreeMap<Oid, Vec<(Tid, Bytes)>>,
    oids: impl Iterator<Item = Oid>,
) -> usize {
    let mut checked = 0;
    for oid in oids {
        let mut expected: Vec<Revision> = source.objects.get(&oid).cloned().unwrap_or_default();
        for (tid, data) in committed.get(&oid).into_iter().flatten() {
            expected.push((*tid, Some(sha1_hex(data)), None));
        }
        let history = client.history(oid, 0, 10_000).unwrap();
        let serials: Vec<Tid> = history.iter().rev().map(|entry| entry.serial).collect();
        let expected_serials: Vec<Tid> = expected.iter().map(|revision| revision.0).collect();
        assert_eq!(serials, expected_serials, "history of {oid}");
        for (serial, data, data_serial) in &expected {
            let record = client.object(oid, Some(*serial), None).unwrap();
            assert_eq!(record.serial, *serial);
            let found = record.data.as_deref().map(sha1_hex);
            assert_eq!(&found, data, "data of {oid} at {serial}");
            assert_eq!(
                &record.data_serial, data_serial,
                "back-pointer of {oid} at {serial}"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn a_filestorage_is_served_during_its_import_which_survives_kill_9() {
    let mut cluster = Cluster::new("importer");
    let source = make_source(cluster.dir.path(), "source", 100, 1);
    assert!(std::fs::metadata(&source.path).unwrap().len() >= 100 << 20);
    let (conf, destination) = importer_conf(cluster.dir.path(), &source.path, false);

    start_importing_cluster(&mut cluster, &conf);
    let client = cluster.client();

    // Served at once, from the source: a sample of objects, whole history.
    let mut committed = BTreeMap::new();
    let sample = source.objects.keys().copied().step_by(97).take(50);
    assert!(check_objects(&client, &source, &committed, sample) > 50);
    commit_during_import(&client, &source, &mut committed, 0, 5);
    // The admin shows the storage's progress.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let summary = cluster.neoctl_stdout("print summary");
        if summary.contains("S1: import: ") && summary.contains("MiB/s, ETA") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no import in the summary: {summary}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGKILL as soon as some progress is committed, in the middle.
    let deadline = Instant::now() + Duration::from_secs(120);
    let imported = loop {
        if let Some(tid) = imported_tid(&destination) {
            break tid;
        }
        assert!(
            Instant::now() < deadline,
            "no import progress; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.kill("storage0");
    assert!(
        imported < source.last_tid,
        "the import ended before it could be interrupted"
    );

    // Restarted, it goes on from where it was.
    start_importer(&mut cluster, "storage0-again", &conf);
    cluster.wait_state("RUNNING");
    let resumed = cluster.wait_log("storage0-again", "importing", Duration::from_secs(30));
    assert!(
        !resumed.contains("imported=0000000000000000"),
        "the import started again from the beginning:\n{resumed}"
    );
    commit_during_import(&client, &source, &mut committed, 1, 5);
    cluster.wait_log(
        "storage0-again",
        "All data are imported",
        Duration::from_secs(600),
    );
    commit_during_import(&client, &source, &mut committed, 2, 5);

    // Everything, from the destination now.
    let oids: Vec<Oid> = source
        .objects
        .keys()
        .chain(committed.keys())
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let checked = check_objects(&client, &source, &committed, oids.into_iter());
    let revisions: usize = source.objects.values().map(Vec::len).sum();
    assert!(checked >= revisions + 30, "{checked} < {revisions}");
    client.close().unwrap();
    cluster.stop();
}

#[test]
fn commits_are_written_back_to_the_source() {
    let mut cluster = Cluster::new("writeback");
    let source = make_source(cluster.dir.path(), "source", 2, 2);
    let (conf, _) = importer_conf(cluster.dir.path(), &source.path, true);
    start_importing_cluster(&mut cluster, &conf);
    let client = cluster.client();
    let mut committed = BTreeMap::new();
    commit_during_import(&client, &source, &mut committed, 0, 3);
    cluster.wait_log("storage0", "All data are imported", Duration::from_secs(60));
    commit_during_import(&client, &source, &mut committed, 1, 3);
    let last = committed
        .values()
        .flatten()
        .map(|(tid, _)| *tid)
        .max()
        .unwrap();
    // Asynchronous: the source catches up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while neo_filestorage::FileStorage::open(&source.path)
        .ok()
        .and_then(|file| file.last_tid())
        != Some(last.0)
    {
        assert!(
            Instant::now() < deadline,
            "not written back; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    client.close().unwrap();
    cluster.stop();

    // ZODB sees the source as it was, then every commit made through NEO.
    let view = zodb_view(&source.path);
    assert_eq!(view.last_tid, last);
    for (oid, revisions) in &source.objects {
        assert_eq!(
            &view.objects[oid][..revisions.len()],
            &revisions[..],
            "{oid}"
        );
    }
    for (oid, revisions) in &committed {
        let written: Vec<Revision> = view.objects[oid]
            .iter()
            .filter(|revision| revision.0 > source.last_tid)
            .cloned()
            .collect();
        let expected: Vec<Revision> = revisions
            .iter()
            .map(|(tid, data)| (*tid, Some(sha1_hex(data)), None))
            .collect();
        assert_eq!(written, expected, "{oid}");
    }
}

/// Waits until the process `label` exits by itself (bounded); its status.
fn wait_exit_of(cluster: &mut Cluster, label: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, child) = cluster
            .children
            .iter_mut()
            .find(|(l, _)| l == label)
            .unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{label} did not exit; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the first record of the source's second transaction point to
/// another transaction; returns the record's offset.
fn damage_second_transaction(path: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut length = [0; 8];
    // Magic (4 bytes), then the first transaction: tid (8), length (8).
    file.read_exact_at(&mut length, 12).unwrap();
    let second = 4 + u64::from_be_bytes(length) + 8;
    // Its header: tid, length, status, then the lengths of user,
    // description and extension (2 bytes each), 23 bytes in all.
    let mut lengths = [0; 6];
    file.read_exact_at(&mut lengths, second + 17).unwrap();
    let texts: u64 = lengths
        .chunks(2)
        .map(|pair| u64::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    let record = second + 23 + texts;
    // The record: oid, tid, prev, then its transaction's offset.
    file.write_all_at(&12u64.to_be_bytes(), record + 24)
        .unwrap();
    record
}

#[test]
fn a_damaged_source_is_refused_with_its_offset() {
    for keep_index in [false, true] {
        let mut cluster = Cluster::new("damaged");
        let source = make_source(cluster.dir.path(), "source", 1, 3);
        let offset = damage_second_transaction(&source.path);
        if !keep_index {
            std::fs::remove_file(source.path.with_extension("fs.index")).unwrap();
        }
        let (conf, _) = importer_conf(cluster.dir.path(), &source.path, false);
        cluster.start_master(&["--autostart", "1", "-r", "0"]);
        start_importer(&mut cluster, "storage0", &conf);
        // Without an index, the scan at start finds it; with a valid index,
        // the import does.
        let status = wait_exit_of(&mut cluster, "storage0");
        assert!(!status.success());
        let log = std::fs::read_to_string(cluster.dir.path().join("storage0.log")).unwrap();
        let path = source.path.display().to_string();
        assert!(
            log.lines()
                .any(|line| line.contains(&path) && line.contains(&offset.to_string())),
            "keep_index={keep_index}: no error naming {path} at {offset}:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn a_source_cut_short_in_a_transaction_is_refused() {
    let mut cluster = Cluster::new("cut");
    let source = make_source(cluster.dir.path(), "source", 1, 4);
    // A crash in the middle of ZODB's last commit, index not written:
    // ZODB itself would go on without that transaction, saying nothing.
    let size = std::fs::metadata(&source.path).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&source.path)
        .unwrap();
    file.set_len(size - 20).unwrap();
    std::fs::remove_file(source.path.with_extension("fs.index")).unwrap();
    let view = zodb_view(&source.path);
    assert!(view.last_tid < source.last_tid);

    let (conf, _) = importer_conf(cluster.dir.path(), &source.path, false);
    cluster.start_master(&["--autostart", "1", "-r", "0"]);
    start_importer(&mut cluster, "storage0", &conf);
    assert!(!wait_exit_of(&mut cluster, "storage0").success());
    let log = std::fs::read_to_string(cluster.dir.path().join("storage0.log")).unwrap();
    let path = source.path.display().to_string();
    assert!(
        log.lines()
            .any(|line| line.contains(&path) && line.contains("truncated at offset")),
        "{log}"
    );
}

/// Two sources merged into a MySQL destination, whose `config.value` is
/// widened for the long state (section names of 150 characters), as
/// NEO/py does: the main source keeps its oids, the mounted one comes
/// after them, every revision with its history.
#[test]
fn two_sources_are_merged_into_mysql() {
    use mysql::prelude::Queryable;
    let store = common::Store::mysql();
    let common::Store::MySql(socket) = &store else {
        unreachable!()
    };
    let socket = socket.clone();
    let mut cluster = Cluster::with_store("importmy", store);
    let main = make_source(cluster.dir.path(), "main", 2, 5);
    let mounted = make_source(cluster.dir.path(), "mounted", 1, 6);
    let database = cluster.mysql_database(0);
    let mut admin = common::mysql_admin(&socket);
    admin
        .query_drop(format!("CREATE DATABASE {database}"))
        .unwrap();
    let (main_name, mounted_name) = ("m".repeat(150), "n".repeat(150));
    let conf = cluster.dir.path().join("importer.conf");
    std::fs::write(
        &conf,
        format!(
            "[neo]\nadapter = MySQL\ndatabase = root@{database}{socket}\n\n\
             [{main_name}]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n\
             {mounted_name} = 1\n\n\
             [{mounted_name}]\noid = 1\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            main.path.display(),
            mounted.path.display()
        ),
    )
    .unwrap();
    start_importing_cluster(&mut cluster, &conf);
    cluster.wait_log(
        "storage0",
        "All data are imported",
        Duration::from_secs(120),
    );
    let client = cluster.client();
    // The main source's objects, as they were (nothing references its
    // mount point, oid 1, which is there still), its root aside.
    let main_oids = main.objects.keys().copied().filter(|oid| oid.0 != 0);
    assert!(check_objects(&client, &main, &BTreeMap::new(), main_oids) > 0);
    // The mounted source's, after the main's oids, same revisions (its root,
    // whose references moved, aside).
    let shift = main.objects.keys().map(|oid| oid.0).max().unwrap() + 1;
    let moved = Source {
        path: mounted.path.clone(),
        last_tid: mounted.last_tid,
        objects: mounted
            .objects
            .iter()
            .filter(|(oid, _)| oid.0 != 0)
            .map(|(oid, revisions)| (Oid(oid.0 + shift), revisions.clone()))
            .collect(),
    };
    let moved_oids: Vec<Oid> = moved.objects.keys().copied().collect();
    assert!(check_objects(&client, &moved, &BTreeMap::new(), moved_oids.into_iter()) > 0);
    let root = client.load(Oid(shift)).unwrap();
    assert_eq!(root.serial, mounted.objects[&Oid(0)].last().unwrap().0);
    client.close().unwrap();
    cluster.stop();
    let width: u64 = admin
        .query_first(format!(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME = 'config' \
             AND COLUMN_NAME = 'value'"
        ))
        .unwrap()
        .unwrap();
    assert!(width > 255, "{width}");
    admin
        .query_drop(format!("DROP DATABASE {database}"))
        .unwrap();
}
