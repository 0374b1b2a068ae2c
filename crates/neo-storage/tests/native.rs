//! The Native engine: the storage rules' suite (`database/`) run on it,
//! and what only it has: a log that survives a torn last write whatever
//! byte it ends at, refuses damage before it and hostile lengths with the
//! file and the offset, compacts at open without losing a row (even after
//! a compaction a crash interrupted), and one process per file.
//!
//! The log's format is in `src/backend/native/format.rs`; the hostile
//! logs here are written by hand after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod database;

use std::path::{Path, PathBuf};

use neo_proto::{Oid, Tid};
use neo_storage::backend::{self, Adapter, NativeBackend, NativeSnapshot, OpenError, OpenOptions};
use neo_storage::db::{Database, ObjectLookup};

use database::{found, new_database, vote, Engine, ObjectDump, NP};

/// A log in a directory of its own.
struct Native {
    dir: tempfile::TempDir,
}

impl Native {
    fn path(&self) -> PathBuf {
        self.dir.path().join("neo.native")
    }

    fn snapshot(&self) -> NativeSnapshot {
        NativeSnapshot::read(self.path()).unwrap()
    }
}

impl Engine for Native {
    fn create() -> Native {
        Native {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn open(&self) -> Database {
        open_at(&self.path())
    }

    fn count(&self, table: &str) -> u64 {
        self.snapshot().count(table).unwrap()
    }

    fn objects(&self) -> Vec<ObjectDump> {
        let snapshot = self.snapshot();
        let mut objects: Vec<ObjectDump> = snapshot
            .objects()
            .into_iter()
            .map(|row| ObjectDump {
                oid: row.oid,
                serial: row.serial,
                data_serial: row.data_serial,
                data_id: row
                    .data_id
                    .filter(|&id| snapshot.data(id).unwrap().is_some()),
            })
            .collect();
        objects.sort_by_key(|row| (row.oid, row.serial));
        objects
    }
}

database::suite!(Native);

fn open_at(path: &Path) -> Database {
    let backend = NativeBackend::open(path, &OpenOptions::default()).unwrap();
    Database::new(Box::new(backend)).unwrap()
}

fn open_error(path: &Path) -> String {
    NativeBackend::open(path, &OpenOptions::default())
        .expect_err("refused")
        .to_string()
}

/// TID number `n`, in partition 0 (TTIDs are `tid(n) - NP`, also there).
fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n * u64::from(NP) * 16)
}

fn commit(db: &mut Database, n: u64, objects: &[database::Write<'_>]) -> Tid {
    let tid = tid(n);
    database::commit(db, Tid(tid.0 - u64::from(NP)), tid, objects);
    tid
}

fn file_length(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

impl Native {
    /// Where the log's last whole batch ends.
    fn log_end(&self) -> u64 {
        self.snapshot().log_end()
    }

    /// The file up to the end of its last whole batch (the room after
    /// it left out).
    fn log_bytes(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(self.path()).unwrap();
        bytes.truncate(self.log_end() as usize);
        bytes
    }
}

/// A log with three committed transactions, then one voted (data and
/// all) in the last batch; where the log ends after each commit.
fn log_with_a_voted_transaction() -> (Native, Vec<u64>) {
    let (engine, mut db) = new_database::<Native>(&[]);
    let mut ends = vec![engine.log_end()];
    for n in 1..=3 {
        commit(
            &mut db,
            n,
            &[(Oid(n * 4), Some(format!("revision {n}").as_bytes()), None)],
        );
        ends.push(engine.log_end());
    }
    let value = [7; 150];
    vote(
        &mut db,
        Tid(tid(4).0 - u64::from(NP)),
        &[
            (Oid(4), Some(b"changed"), None),
            (Oid(8), Some(&value[..]), None),
            (Oid(1), None, None),
        ],
        None,
    );
    ends.push(engine.log_end());
    drop(db);
    (engine, ends)
}

/// `pt` rows keep what NEO/py's columns say (§12.3): a progress for
/// OUT_OF_DATE cells only (0 when unknown), a pack id for own cells only.
#[test]
fn pt_rows_hold_what_neopy_columns_hold() {
    let (engine, db) = database::partitions::changed_table::<Native>();
    drop(db);
    let rows: Vec<(i64, i64, i64, Option<i64>)> = engine
        .snapshot()
        .cells()
        .into_iter()
        .map(|cell| {
            let tid = match cell.state {
                neo_proto::CellState::OutOfDate => cell.complete_up_to.unwrap().0 as i64,
                state => -(state as i64),
            };
            let pack = cell.pack.map(|pack| pack.0 as i64);
            (i64::from(cell.partition), i64::from(cell.nid.0), tid, pack)
        })
        .collect();
    assert_eq!(rows, database::partitions::changed_table_rows());
}

/// The last batch of a log cut at any byte (a crash in the middle of its
/// one write), at the end of the file or written in part into the room
/// after it: the log opens with exactly the commits before it, cut back
/// to them with a warning, and takes new commits that survive a reopen.
#[test]
fn a_log_cut_anywhere_in_its_last_batch_keeps_every_earlier_commit() {
    let (engine, ends) = log_with_a_voted_transaction();
    let with_room = std::fs::read(engine.path()).unwrap();
    let bytes = engine.log_bytes();
    let (last_start, last_end) = (ends[ends.len() - 2], ends[ends.len() - 1]);
    assert_eq!(last_end, bytes.len() as u64);
    assert!(with_room.len() > bytes.len(), "no room after the log");
    let earlier = &bytes[..last_start as usize];
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cut.native");
    let torn_in_room = |cut: u64| {
        let mut torn = with_room.clone();
        torn[cut as usize..last_end as usize].fill(0);
        torn
    };
    let cases = (last_start + 1..last_end)
        .flat_map(|cut| [bytes[..cut as usize].to_vec(), torn_in_room(cut)]);
    for (case, file) in cases.enumerate() {
        std::fs::write(&copy, &file).unwrap();
        let mut db = open_at(&copy);
        let opened = std::fs::read(&copy).unwrap();
        assert_eq!(&opened[..last_start as usize], earlier, "case {case}");
        assert!(
            opened[last_start as usize..].iter().all(|&byte| byte == 0),
            "case {case}: torn bytes left after the log"
        );
        assert_eq!(
            found(db.get_object(Oid(4), None, None).unwrap()).data,
            b"revision 1"
        );
        assert_eq!(
            db.get_object(Oid(1), None, None).unwrap(),
            ObjectLookup::OidDoesNotExist
        );
        commit(&mut db, 5, &[(Oid(12), Some(b"after the cut"), None)]);
        drop(db);
        let mut db = open_at(&copy);
        let record = found(db.get_object(Oid(12), None, None).unwrap());
        assert_eq!(
            (record.serial, &record.data[..]),
            (tid(5), &b"after the cut"[..])
        );
        assert_eq!(
            found(db.get_object(Oid(8), None, None).unwrap()).data,
            b"revision 2"
        );
    }
}

/// Bytes after the last batch that are no batch (random bytes, after
/// room or not) are taken for the end a crash left: cut off, and the log
/// opens with every commit. Zeros alone are room: kept.
#[test]
fn garbage_after_the_last_batch_is_cut_off() {
    let (engine, _) = log_with_a_voted_transaction();
    let with_room = std::fs::read(engine.path()).unwrap();
    let bytes = engine.log_bytes();
    let expected = engine.snapshot().rows().unwrap();
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..3000)
        .map(|_| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random as u8
        })
        .collect();
    let mut room_then_noise = with_room.clone();
    room_then_noise.extend_from_slice(&noise);
    for (base, garbage) in [
        (&bytes, noise),
        (&bytes, vec![0xff; 7]),
        (&room_then_noise, vec![]),
    ] {
        let mut damaged = base.clone();
        damaged.extend_from_slice(&garbage);
        std::fs::write(engine.path(), &damaged).unwrap();
        drop(engine.open());
        assert_eq!(std::fs::read(engine.path()).unwrap(), bytes);
        assert_eq!(engine.snapshot().rows().unwrap(), expected);
    }
    for zeros in [with_room.clone(), [&bytes[..], &[0; 4096]].concat()] {
        std::fs::write(engine.path(), &zeros).unwrap();
        drop(engine.open());
        assert_eq!(std::fs::read(engine.path()).unwrap(), zeros);
        assert_eq!(engine.snapshot().rows().unwrap(), expected);
    }
}

/// A commit that makes the file grow leaves room after its batch, zeros
/// up to the next MiB, so that the next commits do not change the file's
/// size (whose write is a second one to the device on ext4); the room
/// is kept at open, and a batch too big to take room makes the file end
/// with it.
#[test]
fn small_commits_write_into_room_the_file_already_has() {
    let (engine, mut db) = new_database::<Native>(&[]);
    commit(&mut db, 1, &[(Oid(1), Some(b"first"), None)]);
    let length = file_length(&engine.path());
    assert_eq!(length, 1 << 20);
    for n in 2..=40 {
        let value = vec![n as u8; 1024];
        let writes: Vec<database::Write<'_>> = (0..10)
            .map(|i| (Oid(n * 16 + i), Some(&value[..]), None))
            .collect();
        commit(&mut db, n, &writes);
        assert_eq!(file_length(&engine.path()), length, "commit {n}");
    }
    let end = engine.log_end();
    assert!(end > 40 * 10 * 1024, "{end}");
    let rows = engine.snapshot().rows().unwrap();
    drop(db);
    let mut db = engine.open();
    assert_eq!(file_length(&engine.path()), length);
    assert_eq!(engine.snapshot().rows().unwrap(), rows);
    assert_eq!(
        found(db.get_object(Oid(1), None, None).unwrap()).data,
        b"first"
    );
    // Past the room: a big batch (the vote of 3 MiB) takes none.
    let value = vec![9; 3 << 20];
    let ttid = Tid(tid(41).0 - u64::from(NP));
    vote(&mut db, ttid, &[(Oid(2), Some(&value[..]), None)], None);
    assert!(engine.log_end() > length);
    assert_eq!(file_length(&engine.path()), engine.log_end());
    let rows = engine.snapshot().rows().unwrap();
    drop(db);
    drop(engine.open());
    assert_eq!(engine.snapshot().rows().unwrap(), rows);
}

/// Any byte changed before the last batch is damage, not a crash: the log
/// is refused, naming the file and the offset of the damaged batch (0
/// for the file header), and left as it is.
#[test]
fn a_byte_changed_in_an_earlier_batch_is_refused_with_its_offset() {
    let (engine, ends) = log_with_a_voted_transaction();
    let bytes = std::fs::read(engine.path()).unwrap();
    let last_start = ends[ends.len() - 2];
    let starts = batch_starts(&engine.log_bytes());
    assert!(starts.contains(&last_start), "{starts:?}");
    for position in 0..last_start {
        let mut damaged = bytes.clone();
        damaged[position as usize] ^= 0x40;
        std::fs::write(engine.path(), &damaged).unwrap();
        let error = open_error(&engine.path());
        let batch = starts
            .iter()
            .rev()
            .find(|&&start| start <= position)
            .copied()
            .unwrap_or(0);
        let expected = format!("{} at byte {batch}: ", engine.path().display());
        assert!(error.contains(&expected), "byte {position}: {error}");
        assert_eq!(std::fs::read(engine.path()).unwrap(), damaged);
    }
}

/// Where each batch of a log starts (after the 16 bytes of the file
/// header; a batch header starts with the length of its records).
fn batch_starts(log: &[u8]) -> Vec<u64> {
    let mut starts = Vec::new();
    let mut position = 16;
    while position < log.len() {
        starts.push(position as u64);
        let length = u64::from_le_bytes(log[position..position + 8].try_into().unwrap());
        position += 16 + length as usize;
    }
    assert_eq!(position, log.len());
    starts
}

/// A batch: its header (length, checksum of the records, checksum of
/// both), then the records.
fn batch(records: &[u8]) -> Vec<u8> {
    let mut batch = (records.len() as u64).to_le_bytes().to_vec();
    batch.extend_from_slice(&crc32fast::hash(records).to_le_bytes());
    let header_crc = crc32fast::hash(&batch);
    batch.extend_from_slice(&header_crc.to_le_bytes());
    batch.extend_from_slice(records);
    batch
}

/// A batch header claiming more than a batch may hold, a data record
/// claiming more than its batch holds, a record of an unknown kind: each
/// an error naming the file and the offset, and nothing allocated for
/// the lengths (they are checked against the file and the batch first).
#[test]
fn hostile_lengths_and_unknown_records_are_refused_with_their_offset() {
    let (engine, _) = log_with_a_voted_transaction();
    let bytes = engine.log_bytes();
    let end = bytes.len();
    let with = |tail: &[u8]| {
        let mut log = bytes.clone();
        log.extend_from_slice(tail);
        std::fs::write(engine.path(), &log).unwrap();
        open_error(&engine.path())
    };
    let at = |offset: usize| format!("{} at byte {offset}: ", engine.path().display());
    for length in [1u64 << 31, 1 << 40, u64::MAX] {
        let mut header = length.to_le_bytes().to_vec();
        header.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&[0; 64]);
        let error = with(&header);
        assert!(error.contains(&at(end)), "{error}");
        assert!(error.contains("over the limit"), "{error}");
    }
    // PutData (tag 19): id, compression, a value of 4 GiB - 1.
    let mut record = vec![19];
    record.extend_from_slice(&1u64.to_le_bytes());
    record.push(0);
    record.extend_from_slice(&u32::MAX.to_le_bytes());
    record.extend_from_slice(&[0; 40]);
    let error = with(&batch(&record));
    assert!(error.contains(&at(end + 16)), "{error}");
    assert!(error.contains("goes past the end of its batch"), "{error}");
    // A record of an unknown kind after a valid one (DeleteCells, tag 4).
    let error = with(&batch(&[4, 0xee]));
    assert!(error.contains(&at(end + 17)), "{error}");
    assert!(error.contains("unknown record tag 238"), "{error}");
    // Not a Native log at all.
    std::fs::write(engine.path(), b"SQLite format 3\0 and more").unwrap();
    let error = open_error(&engine.path());
    assert!(
        error.contains(&at(0)) && error.contains("not a Native log"),
        "{error}"
    );
}

/// Packs every partition completely.
fn pack_all(db: &mut Database, id: Tid, pack_tid: Tid) {
    let order = neo_storage::backend::PackOrder {
        id,
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid,
    };
    for partition in 0..NP {
        let mut next = Some(Oid(0));
        while let Some(min_oid) = next {
            next = db.pack(partition, &order, min_oid, 100).unwrap();
        }
    }
    db.commit().unwrap();
}

/// A log of 16 objects of 200 KiB in 4 revisions each, packed: about 3
/// MiB of live rows in 13 MiB of log.
fn packed_log() -> (Native, Database) {
    let (engine, mut db) = new_database::<Native>(&[]);
    let mut last = Tid::ZERO;
    for revision in 0..4u8 {
        for oid in 0..16u64 {
            let value = vec![revision ^ oid as u8; 200 << 10];
            let n = u64::from(revision) * 16 + oid + 1;
            last = commit(&mut db, n, &[(Oid(oid), Some(&value[..]), None)]);
        }
    }
    pack_all(&mut db, tid(100), last);
    (engine, db)
}

fn check_packed(db: &mut Database) {
    for oid in 0..16u64 {
        let record = found(db.get_object(Oid(oid), None, None).unwrap());
        assert_eq!(record.data, vec![3 ^ oid as u8; 200 << 10], "{oid}");
        assert_eq!(record.next_serial, None);
    }
}

/// A log mostly garbage after a pack is compacted at the next open: much
/// smaller, with the same rows (values, reference counts and indexes
/// included), and it goes on taking commits; the lock follows the new
/// file.
#[test]
fn a_log_mostly_garbage_is_compacted_at_open_with_the_same_rows() {
    let (engine, db) = packed_log();
    drop(db);
    let before = file_length(&engine.path());
    let rows = engine.snapshot().rows().unwrap();
    assert!(before > 12 << 20, "{before}");
    let mut db = engine.open();
    let after = file_length(&engine.path());
    assert!(after < before / 3, "{before} -> {after}");
    assert_eq!(engine.snapshot().rows().unwrap(), rows);
    assert!(!engine.dir.path().join("neo.native.compacting").exists());
    check_packed(&mut db);
    assert!(matches!(
        NativeBackend::open(engine.path(), &OpenOptions::default()),
        Err(OpenError::Locked { .. })
    ));
    commit(&mut db, 200, &[(Oid(99), Some(b"after"), None)]);
    drop(db);
    let mut db = engine.open();
    check_packed(&mut db);
    assert_eq!(
        found(db.get_object(Oid(99), None, None).unwrap()).data,
        b"after"
    );
}

/// A compaction that a crash interrupted leaves its temporary file: the
/// log is whole, the file is removed, and the compaction done again.
#[test]
fn a_compaction_interrupted_by_a_crash_loses_nothing() {
    let (engine, db) = packed_log();
    drop(db);
    let rows = engine.snapshot().rows().unwrap();
    let temporary = engine.dir.path().join("neo.native.compacting");
    let log = std::fs::read(engine.path()).unwrap();
    std::fs::write(&temporary, &log[..log.len() / 3]).unwrap();
    let mut db = engine.open();
    assert!(!temporary.exists());
    assert!(file_length(&engine.path()) < log.len() as u64 / 3);
    assert_eq!(engine.snapshot().rows().unwrap(), rows);
    check_packed(&mut db);
}

/// The temporary file of an interrupted compaction is removed at open
/// even when the log is too small to be compacted again (so it is not
/// the new compaction that replaces it), and the log is left as it was.
#[test]
fn an_interrupted_compaction_is_removed_from_a_log_not_compacted_again() {
    let (engine, _) = log_with_a_voted_transaction();
    let log = std::fs::read(engine.path()).unwrap();
    let temporary = engine.dir.path().join("neo.native.compacting");
    std::fs::write(&temporary, &log[..log.len() / 2]).unwrap();
    drop(engine.open());
    assert!(!temporary.exists());
    assert_eq!(std::fs::read(engine.path()).unwrap(), log);
}

#[test]
fn a_second_open_of_the_same_file_is_locked() {
    let (engine, db) = new_database::<Native>(&[]);
    let error = open_error(&engine.path());
    assert!(error.contains("database is locked"), "{error}");
    // Another path to the same file is the same lock.
    let link = engine.dir.path().join("link.native");
    std::fs::hard_link(engine.path(), &link).unwrap();
    assert!(matches!(
        NativeBackend::open(&link, &OpenOptions::default()),
        Err(OpenError::Locked { .. })
    ));
    drop(db);
    engine.open();
}

/// `-a Native -d PATH`: a path, created with its header; no `-e`.
#[test]
fn the_native_adapter_opens_a_path() {
    assert_eq!(Adapter::from_name("Native"), Some(Adapter::Native));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.native");
    let backend = backend::open(
        Adapter::Native,
        path.to_str().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    let mut db = Database::new(backend).unwrap();
    assert_eq!(db.name().unwrap(), None);
    assert_eq!(&std::fs::read(&path).unwrap()[..8], b"NEOnativ");
    drop(db);
    let engine = OpenOptions {
        engine: Some("InnoDB".into()),
        ..OpenOptions::default()
    };
    let error = backend::open(Adapter::Native, path.to_str().unwrap(), &engine)
        .err()
        .expect("no engine");
    assert_eq!(error.to_string(), "Unsupported engine: 'InnoDB'");
    let error = backend::open(Adapter::Native, "", &OpenOptions::default())
        .err()
        .expect("no path");
    assert!(matches!(error, OpenError::BadDatabase { .. }), "{error}");
}
