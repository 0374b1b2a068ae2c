//! Property: whatever transactions the writer is given (data, no data,
//! backpointers to any earlier revision, over several writer sessions
//! closed or dropped), the reader gives them back, and load_before,
//! load_serial and history answer as a model of the revisions says.

use std::collections::BTreeMap;

use neo_filestorage::{FileStorage, Load, Loaded, NewRecord, NewTransaction, Record, Writer};
use proptest::prelude::*;

const BASE_TID: u64 = 0x03e0_0000_0000_0000;

#[derive(Debug, Clone)]
enum Kind {
    Data(Vec<u8>),
    NoData,
    /// A backpointer to the n-th (modulo their number) earlier revision of
    /// the oid, if it has one; else data.
    Back(usize),
}

/// One revision as the model knows it: what a reader must return.
#[derive(Debug, Clone, PartialEq)]
struct Revision {
    tid: u64,
    data: Option<Vec<u8>>,
    data_txn: Option<u64>,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 1..200).prop_map(Kind::Data),
        1 => Just(Kind::NoData),
        2 => any::<usize>().prop_map(Kind::Back),
    ]
}

/// Transactions of up to 4 distinct oids among 6, each with a tid gap and
/// whether the writer session ends after it (closed, or dropped).
fn transactions() -> impl Strategy<Value = Vec<(u64, BTreeMap<u64, Kind>, Option<bool>)>> {
    let txn = (
        1..1000u64,
        prop::collection::btree_map(0..6u64, kind(), 1..4),
        prop_oneof![3 => Just(None), 1 => any::<bool>().prop_map(Some)],
    );
    prop::collection::vec(txn, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn what_is_written_is_read_back(txns in transactions()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Data.fs");
        let mut revisions: BTreeMap<u64, Vec<Revision>> = BTreeMap::new();
        let mut expected_txns = Vec::new();
        let mut writer = Some(Writer::open(&path).expect("create"));
        let mut tid = BASE_TID;
        for (gap, records, session_end) in &txns {
            tid += gap;
            let mut new_records = Vec::new();
            let mut expected = Vec::new();
            for (&oid, kind) in records {
                let earlier = revisions.get(&oid).map_or(&[][..], Vec::as_slice);
                let (record, revision) = match kind {
                    Kind::Back(n) if !earlier.is_empty() => {
                        let target = &earlier[n % earlier.len()];
                        let record = NewRecord { oid, data: None, data_txn: Some(target.tid) };
                        (record, Revision { tid, data: target.data.clone(), data_txn: Some(target.tid) })
                    }
                    Kind::NoData => {
                        (NewRecord { oid, data: None, data_txn: None }, Revision { tid, data: None, data_txn: None })
                    }
                    Kind::Data(data) => {
                        let record = NewRecord { oid, data: Some(data.as_slice()), data_txn: None };
                        (record, Revision { tid, data: Some(data.clone()), data_txn: None })
                    }
                    Kind::Back(_) => {
                        // No earlier revision to point at.
                        let record = NewRecord { oid, data: Some(b"fallback"), data_txn: None };
                        (record, Revision { tid, data: Some(b"fallback".to_vec()), data_txn: None })
                    }
                };
                new_records.push(record);
                expected.push(Record { oid, data: revision.data.clone(), data_txn: revision.data_txn });
                revisions.entry(oid).or_default().push(revision);
            }
            let txn = NewTransaction {
                tid, status: b' ', user: b"u", description: b"d", extension: b"", records: new_records,
            };
            let w = writer.get_or_insert_with(|| Writer::open(&path).expect("reopen"));
            w.append(&txn).expect("append");
            expected_txns.push((tid, expected));
            match session_end {
                Some(true) => writer.take().expect("writer").close().expect("close"),
                Some(false) => drop(writer.take()),
                None => {}
            }
        }
        if let Some(w) = writer.take() {
            w.close().expect("close");
        }

        let fs = FileStorage::open(&path).expect("open");
        let got: Vec<(u64, Vec<Record>)> = fs
            .iter(None, None)
            .map(|t| t.map(|t| (t.tid, t.records)))
            .collect::<Result<_, _>>()
            .expect("iterate");
        prop_assert_eq!(got, expected_txns);
        prop_assert_eq!(fs.object_count(), revisions.len());

        for (&oid, revs) in &revisions {
            for (i, rev) in revs.iter().enumerate() {
                let next_serial = revs.get(i + 1).map(|r| r.tid);
                let expected = match &rev.data {
                    Some(data) => Load::Found(Loaded {
                        data: data.clone(), serial: rev.tid, next_serial, data_txn: rev.data_txn,
                    }),
                    None => Load::NoData { serial: rev.tid, next_serial },
                };
                prop_assert_eq!(&fs.load_before(oid, rev.tid + 1).expect("load_before"), &expected);
                prop_assert_eq!(&fs.load_serial(oid, rev.tid).expect("load_serial"), &expected);
                if i == 0 {
                    prop_assert_eq!(fs.load_before(oid, rev.tid).expect("load_before"), Load::NoRevision);
                }
            }
            let history: Vec<(u64, usize)> =
                revs.iter().rev().map(|r| (r.tid, r.data.as_ref().map_or(0, Vec::len))).collect();
            prop_assert_eq!(fs.history(oid).expect("history"), history);
        }
        prop_assert_eq!(fs.load_before(6, u64::MAX).expect("load_before"), Load::NoSuchOid);
    }
}
