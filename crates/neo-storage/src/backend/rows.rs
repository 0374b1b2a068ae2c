//! How NEO/py's schemas encode values in columns, the same in SQLite and
//! MySQL (architecture.md §12.3, §12.4): written once here so that both
//! engines read and write what NEO/py does.

use neo_proto::{CellState, Checksum, NodeId, Oid, Partition, Tid};

use super::{CellRow, DataId, FatalError, RequestError};

/// `trans.oids` and `pack.oids`: concatenated 8-byte big-endian oids.
pub(crate) fn oid_list(oids: &[Oid]) -> Vec<u8> {
    oids.iter().flat_map(|oid| oid.to_bytes()).collect()
}

/// The oids of a `trans.oids` / `pack.oids` column of the row of `tid`.
pub(crate) fn oids(blob: &[u8], tid: u64) -> Result<Vec<Oid>, FatalError> {
    let chunks = blob.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(FatalError::Corrupted(format!(
            "transaction {tid:016x}: oid list of {} bytes is not a multiple of 8",
            blob.len()
        )));
    }
    Ok(chunks
        .map(|chunk| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(chunk);
            Oid::from_bytes(bytes)
        })
        .collect())
}

/// `pt.tid` (§12.3): the progress of an OUT_OF_DATE cell (`>= 0`),
/// otherwise `-state`. A signed column in both schemas.
pub(crate) fn cell_tid(cell: &CellRow) -> Result<i64, RequestError> {
    match cell.state {
        CellState::OutOfDate => {
            let progress = cell.complete_up_to.unwrap_or(Tid::ZERO).0;
            i64::try_from(progress).map_err(|_| RequestError::OutOfRange {
                what: "cell tid",
                value: progress,
            })
        }
        state => Ok(-(state as i64)),
    }
}

/// A `pt` row from its columns `partition, nid, tid, pack`; the state is
/// `max(0, -tid)`.
pub(crate) fn cell(
    partition: i64,
    nid: i64,
    raw_tid: i64,
    pack: Option<Tid>,
) -> Result<CellRow, FatalError> {
    let partition = Partition::try_from(partition)
        .map_err(|_| FatalError::Corrupted(format!("invalid partition {partition} in pt")))?;
    let nid = i32::try_from(nid)
        .map_err(|_| FatalError::Corrupted(format!("invalid nid {nid} in pt")))?;
    let state = match u64::try_from(raw_tid) {
        Ok(_) => Some(CellState::OutOfDate),
        Err(_) => CellState::from_value(raw_tid.unsigned_abs()),
    }
    .filter(|state| *state != CellState::Discarded)
    .ok_or_else(|| {
        FatalError::Corrupted(format!(
            "partition {partition}: invalid cell state in pt.tid = {raw_tid}"
        ))
    })?;
    Ok(CellRow {
        partition,
        nid: NodeId(nid),
        state,
        complete_up_to: u64::try_from(raw_tid).ok().map(Tid),
        pack,
    })
}

/// `data.hash` of the row `data_id`: a SHA-1.
pub(crate) fn checksum(hash: &[u8], data_id: DataId) -> Result<Checksum, FatalError> {
    <[u8; 20]>::try_from(hash).map(Checksum).map_err(|_| {
        FatalError::Corrupted(format!(
            "data id {data_id}: hash has {} bytes instead of 20",
            hash.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cell_states_round_trip_through_pt_tid() {
        for (state, progress, raw) in [
            (CellState::UpToDate, None, -1),
            (CellState::Feeding, None, -2),
            (CellState::Corrupted, None, -3),
            (CellState::OutOfDate, Some(Tid(0)), 0),
            (CellState::OutOfDate, Some(Tid(77)), 77),
        ] {
            let row = CellRow {
                partition: 3,
                nid: NodeId(1),
                state,
                complete_up_to: progress,
                pack: None,
            };
            assert_eq!(cell_tid(&row).unwrap(), raw);
            assert_eq!(cell(3, 1, raw, None).unwrap(), row);
        }
        // DISCARDED is never stored; other negative values are not states.
        assert!(cell(0, 1, -(CellState::Discarded as i64), None).is_err());
        assert!(cell(0, 1, -99, None).is_err());
        assert!(cell(-1, 1, -1, None).is_err());
    }

    #[test]
    fn oid_lists_are_concatenated_big_endian_oids() {
        let list = [Oid(1), Oid(0x0102_0304_0506_0708)];
        let blob = oid_list(&list);
        assert_eq!(&blob[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(oids(&blob, 9).unwrap(), list);
        assert!(oids(&blob[..9], 9).is_err());
    }
}
