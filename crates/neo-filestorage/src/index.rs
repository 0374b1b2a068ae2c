//! The in-memory index (oid → position of its newest record), how it is
//! built by scanning the file as ZODB's `read_index` does, and the
//! `«path».index` file that saves it (ZODB's fsIndex format).
//!
//! The `.index` file is a stream of pickles (protocol 3): the file position
//! it covers up to, then one `(prefix, bucket)` pair per 6-byte oid prefix
//! in ascending order, then None. A bucket is the low 2 bytes of each oid,
//! ascending, followed by the 6-byte positions in the same order. It is only
//! trusted after the checks ZODB makes (`_check_sanity`); anything after its
//! position is scanned.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::file::{DataFile, Window};
use crate::format::{
    TxnHeader, FIRST_TXN_POS, STATUS_CHECKPOINT, STATUS_COMMITTED, STATUS_PACKED, STATUS_UNDONE,
    TXN_HEADER_LEN, U64_LEN,
};
use crate::pickle::{Pickler, Unpickler, Value};
use crate::{Oid, Result, Tid};

/// oid → position of its newest record. A HashMap of u64 pairs: 16 bytes
/// and a control byte per slot, at most 7/8 full and at least half, so
/// some 20 to 40 bytes per object: a million objects take 20–40 MB.
pub type OidIndex = HashMap<Oid, u64>;

/// ZODB's index cannot hold positions past 6 bytes.
pub const MAX_POSITION: u64 = 1 << 48;

/// How many records of the last transaction to compare with a saved index
/// before trusting it (ZODB checks as many).
const SANITY_RECORDS: usize = 5;

/// What opening a Data.fs learns, for the reader and the writer.
pub struct Scanned {
    pub index: OidIndex,
    /// End of the last whole committed transaction.
    pub size: u64,
    pub last_tid: Option<Tid>,
    /// (tid, position) of each transaction, when the whole file was
    /// scanned (not when a saved index spared that).
    pub txns: Option<Vec<(Tid, u64)>>,
    pub index_used: bool,
}

impl Scanned {
    pub fn empty() -> Scanned {
        Scanned {
            index: OidIndex::new(),
            size: FIRST_TXN_POS,
            last_tid: None,
            txns: Some(Vec::new()),
            index_used: false,
        }
    }
}

pub fn index_path(data_path: &Path) -> PathBuf {
    let mut name = data_path.as_os_str().to_owned();
    name.push(".index");
    PathBuf::from(name)
}

/// Builds the index of a file of `file_len` bytes whose magic was checked:
/// from the saved `.index` when it passes ZODB's checks, else by scanning.
pub fn build(data: &DataFile, file_len: u64) -> Result<Scanned> {
    let saved = index_path(&data.path);
    if let Some((pos, index)) = load_saved(&saved) {
        match trusted_tid(data, file_len, pos, &index) {
            Some(last_tid) => {
                let mut scanned = scan(data, file_len, pos, index, Some(last_tid), None)?;
                scanned.index_used = true;
                return Ok(scanned);
            }
            None => {
                tracing::warn!(index = %saved.display(), "index ignored: it does not match the data file")
            }
        }
    }
    scan(
        data,
        file_len,
        FIRST_TXN_POS,
        OidIndex::new(),
        None,
        Some(Vec::new()),
    )
}

/// The saved index (its position and entries), or None if there is none or
/// it cannot be read: then the file is scanned.
fn load_saved(path: &Path) -> Option<(u64, OidIndex)> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(index = %path.display(), error = %e, "index unreadable, scanning the data file");
            return None;
        }
    };
    match parse_saved(&bytes) {
        Ok(saved) => Some(saved),
        Err(reason) => {
            tracing::debug!(index = %path.display(), %reason, "index not understood, scanning the data file");
            None
        }
    }
}

fn parse_saved(bytes: &[u8]) -> std::result::Result<(u64, OidIndex), String> {
    let mut unpickler = Unpickler::new(bytes);
    let first = unpickler.load().map_err(|e| e.to_string())?;
    match first {
        Value::Int(pos) => {
            let pos = u64::try_from(pos).map_err(|_| format!("position {pos}"))?;
            let mut index = OidIndex::new();
            loop {
                match unpickler.load().map_err(|e| e.to_string())? {
                    Value::None => return Ok((pos, index)),
                    Value::Tuple(pair) => match pair.as_slice() {
                        [prefix, bucket] => add_bucket(&mut index, prefix, bucket)?,
                        _ => return Err("an item is not a pair".into()),
                    },
                    other => return Err(format!("unexpected item {other:?}")),
                }
            }
        }
        // ZODB before 3.4 saved {'pos': ..., 'index': {oid: pos}}.
        old @ Value::Dict(_) => parse_old_format(&old),
        other => Err(format!("unexpected first item {other:?}")),
    }
}

fn add_bucket(
    index: &mut OidIndex,
    prefix: &Value<'_>,
    bucket: &Value<'_>,
) -> std::result::Result<(), String> {
    let prefix = prefix
        .as_bytes()
        .filter(|p| p.len() == 6)
        .ok_or("bad prefix")?;
    let bucket = bucket
        .as_bytes()
        .filter(|b| b.len() % 8 == 0)
        .ok_or("bad bucket")?;
    let high = prefix.iter().fold(0u64, |n, &b| n << 8 | u64::from(b)) << 16;
    let (keys, positions) = bucket.split_at(bucket.len() / 4);
    index.reserve(keys.len() / 2);
    for (key, pos) in keys.chunks_exact(2).zip(positions.chunks_exact(6)) {
        let low = u64::from(u16::from_be_bytes([key[0], key[1]]));
        let pos = pos.iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
        index.insert(high | low, pos);
    }
    Ok(())
}

fn parse_old_format(dict: &Value<'_>) -> std::result::Result<(u64, OidIndex), String> {
    let pos = dict
        .get(b"pos")
        .and_then(Value::as_int)
        .ok_or("old format without pos")?;
    let pos = u64::try_from(pos).map_err(|_| format!("position {pos}"))?;
    let Some(Value::Dict(items)) = dict.get(b"index") else {
        return Err("old format whose index is not a plain dict".into());
    };
    let mut index = OidIndex::with_capacity(items.len());
    for (oid, pos) in items {
        let oid = oid
            .as_bytes()
            .and_then(crate::format::read_u64)
            .ok_or("old format: bad oid")?;
        let pos = pos
            .as_int()
            .and_then(|p| u64::try_from(p).ok())
            .ok_or("old format: bad position")?;
        index.insert(oid, pos);
    }
    Ok((pos, index))
}

/// The tid of the last transaction a saved index covers, if the index can
/// be trusted: its position ends a transaction whose two lengths agree, the
/// first records of that transaction are where the index says, and no entry
/// points past it (ZODB's `_check_sanity`, plus the last check, which keeps
/// a stale index from pointing into transactions it never saw).
fn trusted_tid(data: &DataFile, file_len: u64, pos: u64, index: &OidIndex) -> Option<Tid> {
    // Whatever fails to read here only means the index is not trusted: the
    // scan that follows reports what is wrong with the file, if anything.
    if pos > file_len || pos < FIRST_TXN_POS + (TXN_HEADER_LEN + U64_LEN) as u64 {
        return None;
    }
    if index
        .values()
        .any(|&p| p >= pos || p < FIRST_TXN_POS + TXN_HEADER_LEN as u64)
    {
        return None;
    }
    let tlen = data
        .read_u64(
            pos - U64_LEN as u64,
            file_len,
            "redundant transaction length",
        )
        .ok()?;
    let tpos = (pos - U64_LEN as u64)
        .checked_sub(tlen)
        .filter(|&t| t >= FIRST_TXN_POS)?;
    let header = data.read_txn_header(tpos, file_len).ok()?;
    if header.tlen != tlen
        || ![STATUS_COMMITTED, STATUS_PACKED].contains(&header.status)
        || tlen < header.header_len()
    {
        return None;
    }
    let tend = tpos + tlen;
    let mut rpos = tpos + header.header_len();
    for _ in 0..SANITY_RECORDS {
        if rpos >= tend {
            break;
        }
        let rec = data.read_record_header(rpos, tend, None).ok()?;
        if rec.header.tpos != tpos || index.get(&rec.header.oid) != Some(&rpos) {
            return None;
        }
        rpos += rec.header.record_len();
    }
    Some(header.tid)
}

/// Reads the transactions from `start` on, adding their records to
/// `index`, as ZODB's `read_index` does read-only: a tail that a crash can
/// leave (a transaction cut short, or still marked 'c') ends the scan with
/// a warning; damage before the tail is an error.
fn scan(
    data: &DataFile,
    file_len: u64,
    start: u64,
    mut index: OidIndex,
    mut last_tid: Option<Tid>,
    mut txns: Option<Vec<(Tid, u64)>>,
) -> Result<Scanned> {
    let mut window = Window::default();
    let mut new = Vec::new();
    let mut pos = start;
    while pos < file_len {
        if file_len - pos < TXN_HEADER_LEN as u64 {
            tracing::warn!(file = %data.path.display(), pos, "ignoring a partial transaction header at the end");
            break;
        }
        let header = window.txn_header(data, pos, file_len)?;
        if let Some(reason) = ignored_tail(data, file_len, pos, &header)? {
            tracing::warn!(file = %data.path.display(), pos, reason, "ignoring the end of the file, as ZODB does");
            break;
        }
        check_order(data, pos, &header, last_tid)?;
        let tend = pos + header.tlen;
        if header.status != STATUS_UNDONE {
            let mut rpos = pos + header.header_len();
            while rpos < tend {
                let rec = window.record_header(data, rpos, tend)?;
                if rec.header.tpos != pos {
                    return Err(data.corrupt(
                        rpos,
                        format!(
                            "record points to transaction {}, not {pos}",
                            rec.header.tpos
                        ),
                    ));
                }
                if rec.header.prev >= rpos
                    || index.get(&rec.header.oid).copied().unwrap_or(0) != rec.header.prev
                {
                    tracing::warn!(file = %data.path.display(), pos = rpos, "incorrect previous pointer");
                }
                new.push((rec.header.oid, rpos));
                rpos += rec.header.record_len();
            }
            index.extend(new.drain(..));
            if let Some(txns) = txns.as_mut() {
                txns.push((header.tid, pos));
            }
        }
        check_redundant_length(data, &mut window, tend, &header)?;
        last_tid = Some(header.tid);
        pos = tend + U64_LEN as u64;
    }
    Ok(Scanned {
        index,
        size: pos.min(file_len).max(FIRST_TXN_POS),
        last_tid,
        txns,
        index_used: false,
    })
}

/// Why the transaction at `pos` is a tail ZODB ignores, if it is one.
pub fn ignored_tail(
    data: &DataFile,
    file_len: u64,
    pos: u64,
    header: &TxnHeader,
) -> Result<Option<&'static str>> {
    if pos.saturating_add(header.total_len()) > file_len {
        return Ok(Some("transaction cut short"));
    }
    if header.status == STATUS_CHECKPOINT {
        return Ok(Some("transaction still being committed (status 'c')"));
    }
    if header.tlen < header.header_len() {
        // ZODB: garbage at the end after a crash if the file's last
        // redundant length makes no sense, else damage mid-file.
        let last_tlen = data.read_u64(
            file_len - U64_LEN as u64,
            file_len,
            "last transaction length",
        )?;
        if file_len.saturating_sub(last_tlen) < pos || last_tlen < TXN_HEADER_LEN as u64 {
            return Ok(Some("invalid transaction header"));
        }
        return Err(data.corrupt(
            pos,
            format!("transaction length {} shorter than its header", header.tlen),
        ));
    }
    Ok(None)
}

/// Transactions must come in tid order (ZODB only warns; everything here,
/// finding a tid included, relies on it) and have a known status.
pub fn check_order(
    data: &DataFile,
    pos: u64,
    header: &TxnHeader,
    last_tid: Option<Tid>,
) -> Result<()> {
    if let Some(last) = last_tid.filter(|&last| header.tid <= last) {
        return Err(data.corrupt(
            pos,
            format!(
                "tid {:016x} not after the previous one, {last:016x}",
                header.tid
            ),
        ));
    }
    if ![STATUS_COMMITTED, STATUS_PACKED, STATUS_UNDONE].contains(&header.status) {
        tracing::warn!(file = %data.path.display(), pos, status = header.status, "unknown transaction status");
    }
    Ok(())
}

/// The copy of tlen after the records must equal the one in the header.
pub fn check_redundant_length(
    data: &DataFile,
    window: &mut Window,
    tend: u64,
    header: &TxnHeader,
) -> Result<()> {
    let copy = window.u64(data, tend, tend + U64_LEN as u64)?;
    if copy != header.tlen {
        return Err(data.corrupt(
            tend,
            format!("redundant transaction length {copy} != {}", header.tlen),
        ));
    }
    Ok(())
}

/// Writes the index as ZODB's `fsIndex.save` does, byte for byte, through a
/// temporary file renamed over the old one.
pub fn save(data_path: &Path, pos: u64, index: &OidIndex) -> io::Result<()> {
    let mut entries: Vec<(Oid, u64)> = index.iter().map(|(&oid, &pos)| (oid, pos)).collect();
    entries.sort_unstable();
    let mut pickler = Pickler::new();
    pickler.dump_int(pos);
    let mut bucket = Vec::new();
    for group in entries.chunk_by(|a, b| a.0 >> 16 == b.0 >> 16) {
        bucket.clear();
        for (oid, _) in group {
            bucket.extend_from_slice(&(*oid as u16).to_be_bytes());
        }
        for (_, pos) in group {
            if *pos >= MAX_POSITION {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "position past fsIndex's 6 bytes",
                ));
            }
            bucket.extend_from_slice(&pos.to_be_bytes()[2..]);
        }
        let prefix = group.first().map_or(0, |(oid, _)| oid >> 16).to_be_bytes();
        pickler.dump_pair(&prefix[2..], &bucket);
    }
    pickler.dump_none();

    let path = index_path(data_path);
    let mut tmp_name = path.clone().into_os_string();
    tmp_name.push(".index_tmp");
    let mut tmp = File::create(&tmp_name)?;
    tmp.write_all(&pickler.out)?;
    // A torn index that passed the checks would send loads astray.
    tmp.sync_all()?;
    fs::rename(&tmp_name, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_index_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("Data.fs");
        let index: OidIndex = [
            (0, 100),
            (1, 200),
            (0x1_0000, 300),
            (u64::MAX, (1 << 48) - 1),
        ]
        .into();
        save(&data, 1000, &index).expect("save");
        let (pos, back) = load_saved(&index_path(&data)).expect("readable");
        assert_eq!(pos, 1000);
        assert_eq!(back, index);
    }

    #[test]
    fn positions_past_six_bytes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index: OidIndex = [(0, MAX_POSITION)].into();
        assert!(save(&dir.path().join("Data.fs"), 1000, &index).is_err());
    }

    #[test]
    fn old_format_plain_dicts_are_read() {
        // pickle.dumps({'pos': 300, 'index': {p64(1): 4, p64(2): 60}}, 3)
        let bytes = b"\x80\x03}q\x00(X\x03\x00\x00\x00posq\x01M,\x01X\x05\x00\x00\x00indexq\x02}q\x03(C\x08\x00\x00\x00\x00\x00\x00\x00\x01q\x04K\x04C\x08\x00\x00\x00\x00\x00\x00\x00\x02q\x05K<uu.";
        let (pos, index) = parse_saved(bytes).expect("old format");
        assert_eq!(pos, 300);
        assert_eq!(index, [(1, 4), (2, 60)].into());
    }

    #[test]
    fn garbage_is_not_an_index() {
        for bad in [
            &b""[..],
            b"garbage",
            b"\x80\x03K\x05.\x80\x03K\x06.",
            b"\x80\x03K\x05.\x80\x03C\x01xC\x08abcdefgh\x86.",
        ] {
            assert!(parse_saved(bad).is_err(), "{bad:?}");
        }
    }
}
