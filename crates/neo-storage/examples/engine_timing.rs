//! A rough figure of the embedded engines under NEO's pattern, through
//! `Database` (no network): 1000 commits of 10 new objects of 1 KiB (a
//! vote, then lock and unlock, each a commit as a storage node makes
//! them), then 10000 loads; and the memory the Native engine holds for
//! those rows once it replayed its log. Run in release mode:
//! `cargo run --release -p neo-storage --example engine_timing [DIR]`
//! (DIR: where the databases go, the current directory by default; the
//! figures depend on its disk's fsync).

use std::alloc::System;
use std::error::Error;
use std::path::Path;
use std::time::Instant;

use neo_proto::{CellState, Checksum, NodeId, NodeType, Oid, Tid};
use neo_storage::backend::{NativeBackend, ObjectRow, OpenOptions, SqliteBackend, TransactionMeta};
use neo_storage::db::{Database, ObjectLookup};
use sha1::{Digest, Sha1};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const COMMITS: u64 = 1000;
const OBJECTS: u64 = 10;
const LOADS: u64 = 10_000;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".to_owned());
    let dir = tempfile::tempdir_in(dir)?;
    let sqlite = SqliteBackend::open(dir.path().join("timing.sqlite"), &OpenOptions::default())?;
    run("SQLite", Database::new(Box::new(sqlite))?)?;
    let log = dir.path().join("timing.native");
    let native = NativeBackend::open(&log, &OpenOptions::default())?;
    run("Native", Database::new(Box::new(native))?)?;
    report_size(dir.path())?;
    let region = Region::new(GLOBAL);
    let native = NativeBackend::open(&log, &OpenOptions::default())?;
    let change = region.change();
    let held = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    println!(
        "Native: {held} bytes held after replaying {} object rows and {COMMITS} transactions \
         ({} bytes per object row, transactions included)",
        COMMITS * OBJECTS,
        held / (COMMITS * OBJECTS) as isize
    );
    drop(native);
    Ok(())
}

fn run(engine: &str, mut db: Database) -> Result<(), Box<dyn Error>> {
    let nid = NodeId::new(NodeType::Storage, 1).ok_or("no node id")?;
    db.set_name("timing")?;
    db.set_nid(nid)?;
    let cells: Vec<_> = (0..4).map(|p| (p, nid, CellState::UpToDate)).collect();
    db.change_partition_table(1, 0, &cells, true)?;
    let value = vec![0x5a; 1024];
    let checksum = Checksum(Sha1::digest(&value).into());
    let started = Instant::now();
    for n in 0..COMMITS {
        let tid = Tid(0x03f0_0000_0000_0000 + n * 16);
        let mut rows = Vec::new();
        for i in 0..OBJECTS {
            let oid = Oid(n * OBJECTS + i);
            let data_id = db.store_data(oid, checksum, &value, 0, None)?;
            rows.push(ObjectRow {
                oid,
                data_id,
                data_serial: None,
            });
        }
        let meta = TransactionMeta {
            oids: rows.iter().map(|row| row.oid).collect(),
            ttid: tid,
            ..TransactionMeta::default()
        };
        db.store_transaction(tid, &rows, Some(&meta), true)?;
        db.commit()?;
        db.lock_transaction(tid, tid)?;
        db.unlock_transaction(tid, tid)?;
        db.commit()?;
    }
    let commits = started.elapsed();
    let started = Instant::now();
    for n in 0..LOADS {
        let oid = Oid(n * 7919 % (COMMITS * OBJECTS));
        if !matches!(db.get_object(oid, None, None)?, ObjectLookup::Found(_)) {
            return Err(format!("{oid} not found").into());
        }
    }
    let loads = started.elapsed();
    println!(
        "{engine}: {COMMITS} commits of {OBJECTS} x 1 KiB in {:.2} s ({:.2} ms each); \
         {LOADS} loads in {:.1} ms ({:.1} µs each)",
        commits.as_secs_f64(),
        commits.as_secs_f64() * 1000.0 / COMMITS as f64,
        loads.as_secs_f64() * 1000.0,
        loads.as_secs_f64() * 1e6 / LOADS as f64,
    );
    Ok(())
}

fn report_size(dir: &Path) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        println!(
            "{}: {} bytes",
            entry.file_name().to_string_lossy(),
            entry.metadata()?.len()
        );
    }
    Ok(())
}
