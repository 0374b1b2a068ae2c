//! ZODB as the judge: files are made by ZODB (tests/zodb/helper.py, run
//! with the project's Python virtualenv) and what we read is compared with
//! what ZODB reads.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use neo_filestorage::{FileStorage, Load, Transaction};
use serde_json::Value;

/// ZODB's maxtid, which its loadBefore takes for "the newest".
pub const ZODB_MAXTID: u64 = 0x7fff_ffff_ffff_ffff;

/// The virtualenv's Python: `$NEO_PY_VENV/bin/python`, else the
/// workspace's `target/py-venv/bin/python`. Missing, the test fails: ZODB
/// is the judge here and a test that cannot ask it proves nothing.
pub fn python() -> PathBuf {
    let venv = match std::env::var_os("NEO_PY_VENV") {
        Some(venv) => PathBuf::from(venv),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv"),
    };
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} not found: these tests need ZODB in a virtualenv; set NEO_PY_VENV to one \
         (python3 -m venv target/py-venv && target/py-venv/bin/pip install ZODB)",
        python.display()
    );
    python
}

pub fn helper_command(args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zodb/helper.py");
    let mut command = Command::new(python());
    command.arg(script).args(args);
    command
}

/// Runs the helper and returns its output; fails the test if it fails.
pub fn helper(args: &[&str]) -> Output {
    let output = helper_command(args).output().expect("run the ZODB helper");
    assert!(
        output.status.success(),
        "helper {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A Data.fs made by ZODB in `dir` (see helper.py `make`).
pub fn make(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["make", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(flags);
    helper(&args);
    path
}

/// ZODB's view of a file (helper.py `dump`).
pub fn dump(path: &Path) -> Value {
    let output = helper(&["dump", path.to_str().expect("utf-8 path")]);
    serde_json::from_slice(&output.stdout).expect("the helper's JSON")
}

pub fn hex_u64(v: &Value) -> Option<u64> {
    v.as_str()
        .map(|s| u64::from_str_radix(s, 16).expect("hex u64"))
}

pub fn hex_bytes(v: &Value) -> Option<Vec<u8>> {
    v.as_str().map(|s| hex::decode(s).expect("hex bytes"))
}

pub fn index_path(data: &Path) -> PathBuf {
    PathBuf::from(format!("{}.index", data.display()))
}

pub fn read_all(fs: &FileStorage) -> Vec<Transaction> {
    fs.iter(None, None)
        .collect::<Result<_, _>>()
        .expect("iterate the whole file")
}

/// Everything our reader says about the file equals what ZODB said in
/// `zodb` (a dump): sizes, every transaction and record, loadBefore at and
/// after every revision, loadSerial, history.
pub fn assert_matches_zodb(fs: &FileStorage, zodb: &Value) {
    assert_eq!(Some(fs.size()), zodb["size"].as_u64(), "size");
    assert_eq!(fs.last_tid(), hex_u64(&zodb["last_tid"]), "last tid");
    assert_eq!(
        Some(fs.object_count() as u64),
        zodb["objects_count"].as_u64(),
        "object count"
    );
    if fs.object_count() > 0 {
        assert_eq!(fs.last_oid(), hex_u64(&zodb["max_oid"]), "last oid");
    }

    let ours = read_all(fs);
    let theirs = zodb["txns"].as_array().expect("txns");
    assert_eq!(ours.len(), theirs.len(), "number of transactions");
    assert_eq!(fs.first_tid(), ours.first().map(|t| t.tid), "first tid");
    let mut data_txns = HashMap::new();
    for (our, their) in ours.iter().zip(theirs) {
        let tid = hex_u64(&their["tid"]);
        assert_eq!(Some(our.tid), tid, "tid");
        let what = format!("transaction {:016x}", our.tid);
        assert_eq!(
            their["status"].as_str(),
            Some(&*String::from_utf8_lossy(&[our.status])),
            "{what}: status"
        );
        assert_eq!(
            Some(&our.user),
            hex_bytes(&their["user"]).as_ref(),
            "{what}: user"
        );
        assert_eq!(
            Some(&our.description),
            hex_bytes(&their["description"]).as_ref(),
            "{what}: description"
        );
        assert_eq!(
            Some(&our.extension),
            hex_bytes(&their["extension"]).as_ref(),
            "{what}: extension"
        );
        assert_eq!(
            Some(our.position),
            their["position"].as_u64(),
            "{what}: position"
        );
        let records = their["records"].as_array().expect("records");
        assert_eq!(
            our.records.len(),
            records.len(),
            "{what}: number of records"
        );
        for (r, z) in our.records.iter().zip(records) {
            assert_eq!(Some(r.oid), hex_u64(&z["oid"]), "{what}: oid");
            let what = format!("{what}, oid {:016x}", r.oid);
            assert_eq!(r.data, hex_bytes(&z["data"]), "{what}: data");
            assert_eq!(r.data_txn, hex_u64(&z["data_txn"]), "{what}: data_txn");
            data_txns.insert((r.oid, our.tid), r.data_txn);
        }
    }

    for object in zodb["objects"].as_array().expect("objects") {
        let oid = hex_u64(&object["oid"]).expect("oid");
        for load in object["loads"].as_array().expect("loads") {
            let tid = hex_u64(&load["tid"]).expect("tid");
            let what = format!("oid {oid:016x} at {tid:016x}");
            let before = fs.load_before(oid, tid).expect("load_before");
            assert_load(
                &before,
                &load["before"],
                &data_txns,
                oid,
                &format!("{what}: load_before"),
            );
            let after = fs.load_before(oid, tid + 1).expect("load_before");
            assert_load(
                &after,
                &load["before_next"],
                &data_txns,
                oid,
                &format!("{what}: load_before +1"),
            );
            let serial = fs.load_serial(oid, tid).expect("load_serial");
            assert_load(
                &serial,
                &load["serial"],
                &data_txns,
                oid,
                &format!("{what}: load_serial"),
            );
            if let Load::Found(found) = &serial {
                assert_eq!(found.serial, tid, "{what}: load_serial's serial");
            }
        }
        let latest = fs.load_before(oid, ZODB_MAXTID).expect("load_before");
        assert_load(
            &latest,
            &object["latest"],
            &data_txns,
            oid,
            &format!("oid {oid:016x}: latest"),
        );

        let history = fs.history(oid).expect("history");
        let tids: Vec<Option<u64>> = object["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(hex_u64)
            .collect();
        assert_eq!(
            history.iter().map(|&(t, _)| Some(t)).collect::<Vec<_>>(),
            tids,
            "oid {oid:016x}: history"
        );
        for (tid, len) in history {
            let expected = match fs.load_serial(oid, tid).expect("load_serial") {
                Load::Found(found) => found.data.len(),
                _ => 0,
            };
            assert_eq!(
                len, expected,
                "oid {oid:016x}: history length at {tid:016x}"
            );
        }
    }
    if let Some(last) = fs.last_oid() {
        assert_eq!(
            fs.load_before(last + 1, ZODB_MAXTID).expect("load_before"),
            Load::NoSuchOid
        );
    }
}

fn assert_load(
    ours: &Load,
    theirs: &Value,
    data_txns: &HashMap<(u64, u64), Option<u64>>,
    oid: u64,
    what: &str,
) {
    match (theirs["kind"].as_str().expect("kind"), ours) {
        ("found", Load::Found(found)) => {
            assert_eq!(
                Some(&found.data),
                hex_bytes(&theirs["data"]).as_ref(),
                "{what}: data"
            );
            if !theirs["serial"].is_null() {
                assert_eq!(
                    Some(found.serial),
                    hex_u64(&theirs["serial"]),
                    "{what}: serial"
                );
                assert_eq!(
                    found.next_serial,
                    hex_u64(&theirs["next"]),
                    "{what}: next serial"
                );
            }
            assert_eq!(
                Some(&found.data_txn),
                data_txns.get(&(oid, found.serial)),
                "{what}: data_txn"
            );
        }
        (
            "nodata",
            Load::NoData {
                serial,
                next_serial,
            },
        ) => {
            assert!(
                data_txns.contains_key(&(oid, *serial)),
                "{what}: NoData of a record that exists"
            );
            if let Some(next) = next_serial {
                assert!(next > serial, "{what}: next serial after serial");
            }
        }
        ("norevision", Load::NoRevision) => {}
        (kind, ours) => panic!("{what}: ZODB says {kind}, we say {ours:?}"),
    }
}
