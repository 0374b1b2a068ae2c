//! A corrupt or truncated Data.fs gives an error naming the file and an
//! offset in it, never a panic, a loop or a huge allocation; a file cut
//! short reads as ZODB reads it: the transactions whole before the cut.
//!
//! The file is made by ZODB, then cut at every offset and damaged at every
//! byte; each copy is opened, iterated whole and every object loaded.

mod common;

use std::alloc::System;
use std::collections::HashMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{index_path, make, read_all, ZODB_MAXTID};
use neo_filestorage::{Error, FileStorage, Load, Transaction};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator's counts are global: the tests run one at a time, so that
/// each counts only its own allocations.
static SERIAL: Mutex<()> = Mutex::new(());

/// What reading a file of a few KiB may allocate in all: the read-ahead
/// window is bounded by the file's size, so a few times that, with room
/// for the index and the transactions read. A length believed from damaged
/// bytes would go far past it.
const ALLOCATION_MAX: usize = 4 << 20;

/// Opens, iterates whole, loads each record's revision (and the one
/// before it), every oid's newest and takes every history; returns the
/// transactions.
fn read_everything(path: &Path) -> Result<Vec<Transaction>, Error> {
    let fs = FileStorage::open(path)?;
    let txns = fs.iter(None, None).collect::<Result<Vec<_>, _>>()?;
    for txn in &txns {
        for record in &txn.records {
            fs.load_before(record.oid, txn.tid)?;
            fs.load_serial(record.oid, txn.tid)?;
        }
    }
    let last_oid = fs.last_oid().unwrap_or(0);
    for oid in 0..=last_oid + 1 {
        fs.history(oid)?;
        fs.load_before(oid, ZODB_MAXTID)?;
    }
    if let Some(middle) = txns.get(txns.len() / 2) {
        fs.iter(Some(middle.tid), None)
            .collect::<Result<Vec<_>, _>>()?;
    }
    Ok(txns)
}

/// `read_everything`, which must not panic nor allocate past the bound;
/// an error must be a format error naming `path` and an offset in it.
fn read_damaged(path: &Path, what: &str) -> Option<Vec<Transaction>> {
    let len = fs::metadata(path).expect("metadata").len();
    let region = Region::new(GLOBAL);
    let result = catch_unwind(AssertUnwindSafe(|| read_everything(path)))
        .unwrap_or_else(|_| panic!("{what}: the reader panicked"));
    let allocated = region.change().bytes_allocated;
    assert!(
        allocated <= ALLOCATION_MAX,
        "{what}: {allocated} bytes allocated"
    );
    match result {
        Ok(txns) => Some(txns),
        Err(e @ (Error::Corrupt { .. } | Error::Truncated { .. })) => {
            let offset = e.offset().expect("format errors have an offset");
            assert!(
                offset <= len,
                "{what}: offset {offset} past the end ({len}): {e}"
            );
            let message = e.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "{what}: {message}"
            );
            assert!(
                message.contains(&format!("offset {offset}")),
                "{what}: {message}"
            );
            None
        }
        Err(e) => panic!("{what}: not a format error: {e}"),
    }
}

/// Writes a copy (with an index, if given) under a name of its own: writing
/// over one file again and again would make the file system flush it each
/// time (ext4's auto_da_alloc), and the test crawl.
fn copy(dir: &Path, name: &str, bytes: &[u8], index: Option<&[u8]>) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write the copy");
    if let Some(index) = index {
        fs::write(index_path(&path), index).expect("write the index");
    }
    path
}

fn remove(path: &Path) {
    fs::remove_file(path).expect("remove the copy");
    let _ = fs::remove_file(index_path(path));
}

#[test]
fn a_file_cut_anywhere_reads_as_its_whole_transactions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let original = make(dir.path(), "Data.fs", &["--small"]);
    let bytes = fs::read(&original).expect("read");
    let full = read_all(&FileStorage::open(&original).expect("open"));
    let ends: Vec<u64> = full
        .iter()
        .skip(1)
        .map(|t| t.position)
        .chain([bytes.len() as u64])
        .collect();
    let index = fs::read(index_path(&original)).expect("ZODB's index");

    for with_index in [false, true] {
        for cut in 0..=bytes.len() {
            // With the index of the whole file, past the end of the cut one.
            let index = with_index.then_some(&index[..]);
            let cut_path = copy(dir.path(), &format!("Cut{cut}.fs"), &bytes[..cut], index);
            let what = format!("cut at {cut}, index {with_index}");
            let got = read_damaged(&cut_path, &what);
            if (1..4).contains(&cut) {
                assert!(got.is_none(), "{what}: the magic is cut");
                remove(&cut_path);
                continue;
            }
            let got = got.unwrap_or_else(|| panic!("{what}: ZODB reads up to the cut"));
            let whole = ends.iter().filter(|&&end| end <= cut as u64).count();
            assert_eq!(
                got,
                full[..whole],
                "{what}: the transactions whole before the cut"
            );
            assert_latest_revisions(&cut_path, &got, &what);
            remove(&cut_path);
        }
    }
}

/// load_before(oid, maxtid) gives each oid's last record among `txns`.
fn assert_latest_revisions(path: &Path, txns: &[Transaction], what: &str) {
    let mut latest = HashMap::new();
    for txn in txns {
        for record in &txn.records {
            latest.insert(record.oid, (txn.tid, record.data.clone()));
        }
    }
    let fs = FileStorage::open(path).expect("open");
    assert_eq!(fs.object_count(), latest.len(), "{what}: objects");
    for (oid, (tid, data)) in latest {
        match (fs.load_before(oid, ZODB_MAXTID).expect("load"), data) {
            (Load::Found(found), Some(data)) => {
                assert_eq!((found.serial, found.data), (tid, data), "{what}")
            }
            (
                Load::NoData {
                    serial,
                    next_serial: None,
                },
                None,
            ) => assert_eq!(serial, tid, "{what}"),
            (load, data) => panic!("{what}: oid {oid:x}: {load:?}, expected {data:?}"),
        }
    }
}

#[test]
fn a_damaged_byte_anywhere_gives_an_error_with_its_offset_or_a_readable_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let original = make(dir.path(), "Data.fs", &["--small"]);
    let bytes = fs::read(&original).expect("read");
    let index = fs::read(index_path(&original)).expect("ZODB's index");
    let mut errors = 0;
    // Without the index, every byte is read by the scan; with it, what the
    // index points at is trusted and only read on loads.
    for with_index in [false, true] {
        for at in 4..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let name = format!("Damaged{at}-{flip}.fs");
                let path = copy(
                    dir.path(),
                    &name,
                    &damaged,
                    with_index.then_some(&index[..]),
                );
                let what = format!("byte {at} ^ {flip:#x}, index {with_index}");
                if read_damaged(&path, &what).is_none() {
                    errors += 1;
                }
                remove(&path);
            }
        }
    }
    assert!(
        errors > bytes.len(),
        "most damage to headers is detected ({errors} errors)"
    );
}

#[test]
fn a_damaged_index_is_ignored_or_read_without_harm() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &["--small"]);
    let full = read_all(&FileStorage::open(&path).expect("open"));
    let bytes = fs::read(&path).expect("read");
    let index = fs::read(index_path(&path)).expect("ZODB's index");
    for at in 0..index.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut damaged = index.clone();
            damaged[at] ^= flip;
            let copy = copy(
                dir.path(),
                &format!("Index{at}-{flip}.fs"),
                &bytes,
                Some(&damaged),
            );
            let what = format!("index byte {at} ^ {flip:#x}");
            // The transactions come from the data file alone.
            if let Some(txns) = read_damaged(&copy, &what) {
                assert_eq!(txns, full, "{what}");
            }
            remove(&copy);
        }
    }
}
