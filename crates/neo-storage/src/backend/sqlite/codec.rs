//! Conversions between SQLite values and NEO's.
//!
//! SQLite integers are signed 64-bit: oids, tids and data ids above
//! `2^63 - 1` can not be stored (NEO's `MAX_TID` is `2^63 - 1` for this
//! reason). Going in, such a value is refused when it would be stored
//! ([`stored`]), matches no row when it is a key ([`key`]) and means "no
//! limit" when it bounds a range ([`bound`]). Coming out, a value NEO can
//! not have written is corruption.

use neo_proto::{Checksum, Oid, Tid};
use rusqlite::types::{FromSql, ValueRef};
use rusqlite::Row;

use crate::backend::{
    rows, CellRow, DataId, FatalError, ObjectRecord, ObjectRow, PackOrder, RequestError,
    TransactionMeta,
};

/// Attaches what was being done to SQLite errors.
pub(super) trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, FatalError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T, FatalError> {
        self.map_err(|source| FatalError::Engine {
            engine: "SQLite",
            context,
            source: Box::new(source),
        })
    }
}

// --- going in ------------------------------------------------------------

/// A value to store.
pub(super) fn stored(what: &'static str, value: u64) -> Result<i64, RequestError> {
    i64::try_from(value).map_err(|_| RequestError::OutOfRange { what, value })
}

/// A value looked up exactly; `None`: no row can have it.
pub(super) fn key(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

/// A range bound, a `LIMIT` or an `OFFSET`: anything above the storable
/// range means "no limit".
pub(super) fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

// --- coming out ----------------------------------------------------------

/// Column `index`, whose type SQLite's dynamic typing does not guarantee.
fn column<T: FromSql>(row: &Row<'_>, index: usize, what: &str) -> Result<T, FatalError> {
    row.get(index)
        .map_err(|error| FatalError::Corrupted(format!("{what}: {error}")))
}

/// A non-negative integer column (an id).
pub(super) fn id(row: &Row<'_>, index: usize, what: &str) -> Result<u64, FatalError> {
    unsigned(what, column(row, index, what)?)
}

/// A nullable id column.
pub(super) fn optional_id(
    row: &Row<'_>,
    index: usize,
    what: &str,
) -> Result<Option<u64>, FatalError> {
    column::<Option<i64>>(row, index, what)?
        .map(|value| unsigned(what, value))
        .transpose()
}

pub(super) fn tid(row: &Row<'_>, index: usize, what: &str) -> Result<Tid, FatalError> {
    id(row, index, what).map(Tid)
}

pub(super) fn optional_tid(
    row: &Row<'_>,
    index: usize,
    what: &str,
) -> Result<Option<Tid>, FatalError> {
    Ok(optional_id(row, index, what)?.map(Tid))
}

pub(super) fn oid(row: &Row<'_>, index: usize) -> Result<Oid, FatalError> {
    id(row, index, "oid").map(Oid)
}

pub(super) fn optional_oid(row: &Row<'_>, index: usize) -> Result<Option<Oid>, FatalError> {
    Ok(optional_id(row, index, "oid")?.map(Oid))
}

fn unsigned(what: &str, value: i64) -> Result<u64, FatalError> {
    u64::try_from(value)
        .map_err(|_| FatalError::Corrupted(format!("negative {what} {value} in database")))
}

/// A byte string column; tolerates TEXT for databases written by old
/// Python 2 versions.
pub(super) fn bytes(row: &Row<'_>, index: usize, what: &str) -> Result<Vec<u8>, FatalError> {
    optional_bytes(row, index, what)?
        .ok_or_else(|| FatalError::Corrupted(format!("{what} is null")))
}

pub(super) fn optional_bytes(
    row: &Row<'_>,
    index: usize,
    what: &str,
) -> Result<Option<Vec<u8>>, FatalError> {
    match value(row, index, what)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(value) | ValueRef::Text(value) => Ok(Some(value.to_vec())),
        other => Err(FatalError::Corrupted(format!(
            "{what} is a {} instead of a byte string",
            other.data_type()
        ))),
    }
}

/// A `config` value; NEO/py writes text, but accept what SQLite's dynamic
/// typing may have kept.
pub(super) fn text(row: &Row<'_>, index: usize, what: &str) -> Result<Option<String>, FatalError> {
    Ok(match value(row, index, what)? {
        ValueRef::Null => None,
        ValueRef::Integer(value) => Some(value.to_string()),
        ValueRef::Real(value) => Some(value.to_string()),
        ValueRef::Text(value) | ValueRef::Blob(value) => {
            Some(String::from_utf8_lossy(value).into_owned())
        }
    })
}

fn value<'a>(row: &'a Row<'_>, index: usize, what: &str) -> Result<ValueRef<'a>, FatalError> {
    row.get_ref(index)
        .map_err(|error| FatalError::Corrupted(format!("{what}: {error}")))
}

pub(super) fn compression(value: i64, data_id: DataId) -> Result<u8, FatalError> {
    u8::try_from(value).map_err(|_| {
        FatalError::Corrupted(format!("data id {data_id}: invalid compression {value}"))
    })
}

/// `partition, nid, tid, pack` of a `pt` row.
pub(super) fn cell(row: &Row<'_>) -> Result<CellRow, FatalError> {
    rows::cell(
        column(row, 0, "pt.partition")?,
        column(row, 1, "pt.nid")?,
        column(row, 2, "pt.tid")?,
        optional_tid(row, 3, "pt.pack")?,
    )
}

/// `oids, user, description, ext, packed, ttid` of the `trans` or `ttrans`
/// row of `of`.
pub(super) fn transaction(row: &Row<'_>, of: Tid) -> Result<TransactionMeta, FatalError> {
    Ok(TransactionMeta {
        oids: rows::oids(&bytes(row, 0, "transaction oids")?, of.0)?,
        user: bytes(row, 1, "transaction user")?,
        description: bytes(row, 2, "transaction description")?,
        extension: bytes(row, 3, "transaction extension")?,
        packed: column(row, 4, "transaction packed")?,
        ttid: tid(row, 5, "ttid")?,
    })
}

/// `data_id, value_tid` (from `offset`) of an `obj` row of `oid`.
pub(super) fn object_row(row: &Row<'_>, offset: usize, oid: Oid) -> Result<ObjectRow, FatalError> {
    Ok(ObjectRow {
        oid,
        data_id: optional_id(row, offset, "data id")?,
        data_serial: optional_tid(row, offset + 1, "value_tid")?,
    })
}

/// `obj.tid, obj.value_tid, obj.data_id, data.id, data.compression,
/// data.hash, data.value, next serial` of a load of `oid`.
pub(super) fn object_record(row: &Row<'_>, oid: Oid) -> Result<ObjectRecord, FatalError> {
    let serial = tid(row, 0, "serial")?;
    let data_serial = optional_tid(row, 1, "value_tid")?;
    let (compression, checksum, data) = match optional_id(row, 2, "data id")? {
        None => (None, Checksum::ZERO, Vec::new()),
        Some(data_id) => {
            if optional_id(row, 3, "data id")?.is_none() {
                return Err(FatalError::Corrupted(format!(
                    "object {oid} serial {serial} refers to missing data id {data_id}"
                )));
            }
            let (compression, checksum, data) = data(row, 4, data_id)?;
            (Some(compression), checksum, data)
        }
    };
    Ok(ObjectRecord {
        serial,
        next_serial: optional_tid(row, 7, "serial")?,
        compression,
        checksum,
        data,
        data_serial,
    })
}

/// `compression, hash, value` (from `offset`) of the `data` row `id`.
pub(super) fn data(
    row: &Row<'_>,
    offset: usize,
    id: DataId,
) -> Result<(u8, Checksum, Vec<u8>), FatalError> {
    Ok((
        compression(column(row, offset, "data compression")?, id)?,
        rows::checksum(&bytes(row, offset + 1, "data hash")?, id)?,
        bytes(row, offset + 2, "data value")?,
    ))
}

/// `tid, approved, partial, oids, pack_tid` of a `pack` row.
pub(super) fn pack_order(row: &Row<'_>) -> Result<PackOrder, FatalError> {
    let id = tid(row, 0, "pack id")?;
    Ok(PackOrder {
        id,
        approved: column(row, 1, "pack approved")?,
        partial: column(row, 2, "pack partial")?,
        oids: optional_bytes(row, 3, "pack oids")?
            .map(|blob| rows::oids(&blob, id.0))
            .transpose()?,
        pack_tid: tid(row, 4, "pack tid")?,
    })
}
