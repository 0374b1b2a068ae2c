//! Conversions between MySQL values and NEO's, and the format of the
//! `bigdata` table (§12.4).
//!
//! OIDs, TIDs and data ids are `BIGINT UNSIGNED`: every 64-bit value is
//! stored as it is. Coming out, a value of the wrong type or range is
//! corruption.

use mysql::prelude::FromValue;
use mysql::Row;
use neo_proto::{Checksum, Oid, Tid};

use crate::backend::{
    rows, CellRow, DataId, FatalError, ObjectRecord, ObjectRow, PackOrder, TransactionMeta,
};

/// Bit of `data.compression` saying that `data.value` is a [`BigData`]
/// header, not the data.
pub(super) const BIG: u8 = 0x80;

/// Values this long or longer do not fit a `MEDIUMBLOB` (16 MiB - 1) and
/// go to `bigdata`.
pub(super) const BIG_THRESHOLD: usize = 1 << 24;

/// Size of each `bigdata` row but the last.
pub(super) const CHUNK: usize = 1 << 23;

/// Where a big value is: `data.value` holds the id of its first
/// `bigdata` row and its length, as two big-endian 32-bit integers; the
/// value is split in [`CHUNK`]-byte rows of consecutive ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BigData {
    pub first: u32,
    pub length: u32,
}

impl BigData {
    pub fn encode(self) -> [u8; 8] {
        let mut header = [0; 8];
        header[..4].copy_from_slice(&self.first.to_be_bytes());
        header[4..].copy_from_slice(&self.length.to_be_bytes());
        header
    }

    pub fn decode(header: &[u8], data_id: DataId) -> Result<BigData, FatalError> {
        let fields: Option<([u8; 4], [u8; 4])> = header
            .get(..4)
            .zip(header.get(4..))
            .and_then(|(first, length)| Some((first.try_into().ok()?, length.try_into().ok()?)));
        let (first, length) = fields.ok_or_else(|| {
            FatalError::Corrupted(format!(
                "data id {data_id}: a big value's header has {} bytes instead of 8",
                header.len()
            ))
        })?;
        Ok(BigData {
            first: u32::from_be_bytes(first),
            length: u32::from_be_bytes(length),
        })
    }

    /// Ids of its `bigdata` rows: one per started chunk.
    pub fn ids(self) -> std::ops::Range<u64> {
        let chunks = (u64::from(self.length)).div_ceil(CHUNK as u64);
        u64::from(self.first)..u64::from(self.first) + chunks
    }
}

/// Column `index` of `row`, of type `T`.
pub(super) fn column<T: FromValue>(
    row: &mut Row,
    index: usize,
    what: &str,
) -> Result<T, FatalError> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => Err(FatalError::Corrupted(format!("{what}: {error}"))),
        None => Err(FatalError::Corrupted(format!("{what}: no column {index}"))),
    }
}

pub(super) fn tid(row: &mut Row, index: usize, what: &str) -> Result<Tid, FatalError> {
    column(row, index, what).map(Tid)
}

pub(super) fn optional_tid(
    row: &mut Row,
    index: usize,
    what: &str,
) -> Result<Option<Tid>, FatalError> {
    Ok(column::<Option<u64>>(row, index, what)?.map(Tid))
}

pub(super) fn oid(row: &mut Row, index: usize) -> Result<Oid, FatalError> {
    column(row, index, "oid").map(Oid)
}

/// `partition, nid, tid, pack` of a `pt` row.
pub(super) fn cell(row: &mut Row) -> Result<CellRow, FatalError> {
    rows::cell(
        column(row, 0, "pt.partition")?,
        column(row, 1, "pt.nid")?,
        column(row, 2, "pt.tid")?,
        optional_tid(row, 3, "pt.pack")?,
    )
}

/// `oids, user, description, ext, packed, ttid` of the `trans` or `ttrans`
/// row of `of`.
pub(super) fn transaction(row: &mut Row, of: Tid) -> Result<TransactionMeta, FatalError> {
    Ok(TransactionMeta {
        oids: rows::oids(&column::<Vec<u8>>(row, 0, "transaction oids")?, of.0)?,
        user: column(row, 1, "transaction user")?,
        description: column(row, 2, "transaction description")?,
        extension: column(row, 3, "transaction extension")?,
        packed: column(row, 4, "transaction packed")?,
        ttid: tid(row, 5, "ttid")?,
    })
}

/// `data_id, value_tid` (from `offset`) of an `obj` row of `oid`.
pub(super) fn object_row(row: &mut Row, offset: usize, oid: Oid) -> Result<ObjectRow, FatalError> {
    Ok(ObjectRow {
        oid,
        data_id: column(row, offset, "data id")?,
        data_serial: optional_tid(row, offset + 1, "value_tid")?,
    })
}

/// A `data` row as stored: the value may be a [`BigData`] header.
pub(super) struct StoredData {
    pub id: DataId,
    pub compression: u8,
    pub checksum: Checksum,
    pub value: Vec<u8>,
}

impl StoredData {
    /// Where the value is, if it is in `bigdata`.
    pub fn big(&self) -> Result<Option<BigData>, FatalError> {
        if self.compression & BIG == 0 {
            return Ok(None);
        }
        BigData::decode(&self.value, self.id).map(Some)
    }
}

/// `compression, hash, value` (from `offset`) of the `data` row `id`.
pub(super) fn data(row: &mut Row, offset: usize, id: DataId) -> Result<StoredData, FatalError> {
    let compression: Option<u8> = column(row, offset, "data compression")?;
    Ok(StoredData {
        id,
        compression: compression
            .ok_or_else(|| FatalError::Corrupted(format!("data id {id}: compression is null")))?,
        checksum: rows::checksum(&column::<Vec<u8>>(row, offset + 1, "data hash")?, id)?,
        value: column(row, offset + 2, "data value")?,
    })
}

/// `obj.tid, obj.value_tid, obj.data_id, data.id, data.compression,
/// data.hash, data.value, next serial` of a load of `oid`; the data is
/// returned apart, as it may have to be read from `bigdata`.
pub(super) fn object_record(
    row: &mut Row,
    oid: Oid,
) -> Result<(ObjectRecord, Option<StoredData>), FatalError> {
    let serial = tid(row, 0, "serial")?;
    let data_serial = optional_tid(row, 1, "value_tid")?;
    let data = match column::<Option<u64>>(row, 2, "data id")? {
        None => None,
        Some(data_id) => {
            if column::<Option<u64>>(row, 3, "data id")?.is_none() {
                return Err(FatalError::Corrupted(format!(
                    "object {oid} serial {serial} refers to missing data id {data_id}"
                )));
            }
            Some(data(row, 4, data_id)?)
        }
    };
    let record = ObjectRecord {
        serial,
        next_serial: optional_tid(row, 7, "serial")?,
        compression: None,
        checksum: Checksum::ZERO,
        data: Vec::new(),
        data_serial,
    };
    Ok((record, data))
}

/// `tid, approved, partial, oids, pack_tid` of a `pack` row.
pub(super) fn pack_order(row: &mut Row) -> Result<PackOrder, FatalError> {
    let id = tid(row, 0, "pack id")?;
    Ok(PackOrder {
        id,
        approved: column(row, 1, "pack approved")?,
        partial: column(row, 2, "pack partial")?,
        oids: column::<Option<Vec<u8>>>(row, 3, "pack oids")?
            .map(|blob| rows::oids(&blob, id.0))
            .transpose()?,
        pack_tid: tid(row, 4, "pack tid")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn big_data_headers_are_first_id_and_length_big_endian() {
        let big = BigData {
            first: 0x0102_0304,
            length: (CHUNK * 2 + 1) as u32,
        };
        let header = big.encode();
        assert_eq!(header, [1, 2, 3, 4, 0x01, 0x00, 0x00, 0x01]);
        assert_eq!(BigData::decode(&header, 7).unwrap(), big);
        assert_eq!(big.ids(), 0x0102_0304..0x0102_0304 + 3);
        let exact = BigData {
            first: 5,
            length: BIG_THRESHOLD as u32,
        };
        assert_eq!(exact.ids(), 5..7);
        assert!(BigData::decode(&header[..7], 7).is_err());
    }
}
