//! The bytes of the Native log: the file header, batch headers, and one
//! record per logical change of NEO's tables. Pure encoding and decoding,
//! no I/O. Integers are little-endian.
//!
//! ```text
//! file    = magic "NEOnativ" | version u32 | crc32(magic, version) u32
//! batch   = length u64 | crc32(records) u32 | crc32(length, crc) u32 | records
//! record  = tag u8 | fields
//! bytes   = length u32 | bytes           oids = count u32 | u64 ...
//! option  = 0 | 1 u64                    bool = 0 | 1
//! ```
//!
//! A data record is `tag | id u64 | compression u8 | length u32 | value |
//! checksum [20]`: a load reads value and checksum with one `pread` at
//! [`DATA_AT`] past the record's start.

use neo_proto::{CellState, Checksum, NodeId, Oid, Partition, Tid};

use crate::backend::{CellRow, PackOrder, TransactionMeta};

/// First bytes of every Native log.
pub(super) const MAGIC: [u8; 8] = *b"NEOnativ";
/// Format version this code reads and writes.
pub(super) const VERSION: u32 = 1;
/// Size of the file header.
pub(super) const FILE_HEADER_LEN: u64 = 16;
/// Size of a batch header.
pub(super) const BATCH_HEADER_LEN: usize = 16;
/// Largest batch (records of one commit) written or read: a batch is built
/// in memory before its one write, and read whole at open.
pub(super) const MAX_BATCH_BYTES: u64 = 1 << 30;
/// Where the value of a data record starts, from the record's tag.
pub(super) const DATA_AT: u64 = 14;

/// The file header of a new log.
pub(super) fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut header = [0; FILE_HEADER_LEN as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What a file header says.
pub(super) enum FileHeader {
    /// Ours, at this version.
    Version(u32),
    /// Not a Native log, or damaged.
    Bad,
}

pub(super) fn parse_file_header(header: &[u8; FILE_HEADER_LEN as usize]) -> FileHeader {
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if header[..8] != MAGIC || crc32fast::hash(&header[..12]) != crc {
        return FileHeader::Bad;
    }
    FileHeader::Version(u32::from_le_bytes([
        header[8], header[9], header[10], header[11],
    ]))
}

/// Fills the header reserved at the start of `batch` for the records
/// after it.
pub(super) fn seal_batch(batch: &mut [u8]) {
    let (header, records) = batch.split_at_mut(BATCH_HEADER_LEN);
    header[..8].copy_from_slice(&(records.len() as u64).to_le_bytes());
    header[8..12].copy_from_slice(&crc32fast::hash(records).to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
}

/// `(length, crc32 of the records)` of a batch header whose own checksum
/// holds.
pub(super) fn parse_batch_header(header: &[u8; BATCH_HEADER_LEN]) -> Option<(u64, u32)> {
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if crc32fast::hash(&header[..12]) != word(12) {
        return None;
    }
    let mut length = [0; 8];
    length.copy_from_slice(&header[..8]);
    Some((u64::from_le_bytes(length), word(8)))
}

/// One change of NEO's tables, as the [`Backend`](crate::backend::Backend)
/// method that made it: replaying the records in order rebuilds the tables
/// (`tables.rs` applies them, the same way when written and when replayed).
#[derive(Debug, PartialEq)]
pub(super) enum Record<'a> {
    SetConfig {
        key: String,
        value: Option<String>,
    },
    PutCell(CellRow),
    DeleteCell {
        partition: Partition,
        nid: NodeId,
    },
    DeleteCells,
    PutTransaction {
        partition: Partition,
        tid: u64,
        meta: TransactionMeta,
    },
    DeleteTransaction {
        partition: Partition,
        tid: u64,
    },
    DeleteTransactionsAfter {
        partition: Partition,
        tid: u64,
    },
    PutTemporaryTransaction {
        partition: Partition,
        ttid: u64,
        meta: TransactionMeta,
    },
    SetTemporaryTid {
        ttid: u64,
        tid: u64,
    },
    MakePermanent {
        ttid: u64,
        tid: u64,
    },
    DeleteTemporary {
        ttid: Option<u64>,
    },
    PutObject {
        temporary: bool,
        partition: Partition,
        tid: u64,
        oid: u64,
        data_id: Option<u64>,
        data_serial: Option<u64>,
    },
    DeleteObject {
        partition: Partition,
        oid: u64,
        serial: u64,
    },
    DeleteObjectsUpTo {
        partition: Partition,
        oid: u64,
        tid: u64,
    },
    DeleteObjectsAfter {
        partition: Partition,
        tid: u64,
    },
    DeletePartitionObjects {
        partition: Partition,
        limit: u64,
    },
    DeletePartitionTransactions {
        partition: Partition,
        limit: u64,
    },
    PutData {
        id: u64,
        compression: u8,
        value: &'a [u8],
        checksum: Checksum,
    },
    DeleteData {
        id: u64,
    },
    PutPackOrder(PackOrder),
    SignPackOrder {
        id: u64,
        approved: bool,
    },
    RekeyPackOrder {
        from: u64,
        to: u64,
    },
    DeletePackOrder {
        id: u64,
    },
    DeletePackOrdersAfter {
        tid: u64,
    },
}

// Record tags. Never reuse one: logs written with it would be misread.
const SET_CONFIG: u8 = 1;
const PUT_CELL: u8 = 2;
const DELETE_CELL: u8 = 3;
const DELETE_CELLS: u8 = 4;
const PUT_TRANSACTION: u8 = 5;
const DELETE_TRANSACTION: u8 = 6;
const DELETE_TRANSACTIONS_AFTER: u8 = 7;
const PUT_TEMPORARY_TRANSACTION: u8 = 8;
const SET_TEMPORARY_TID: u8 = 9;
const MAKE_PERMANENT: u8 = 10;
const DELETE_TEMPORARY: u8 = 11;
const PUT_OBJECT: u8 = 12;
const PUT_TEMPORARY_OBJECT: u8 = 13;
const DELETE_OBJECT: u8 = 14;
const DELETE_OBJECTS_UP_TO: u8 = 15;
const DELETE_OBJECTS_AFTER: u8 = 16;
const DELETE_PARTITION_OBJECTS: u8 = 17;
const DELETE_PARTITION_TRANSACTIONS: u8 = 18;
const PUT_DATA: u8 = 19;
const DELETE_DATA: u8 = 20;
const PUT_PACK_ORDER: u8 = 21;
const SIGN_PACK_ORDER: u8 = 22;
const REKEY_PACK_ORDER: u8 = 23;
const DELETE_PACK_ORDER: u8 = 24;
const DELETE_PACK_ORDERS_AFTER: u8 = 25;

impl Record<'_> {
    /// Appends the record to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Encoder(out);
        match self {
            Record::SetConfig { key, value } => {
                e.u8(SET_CONFIG);
                e.bytes(key.as_bytes());
                match value {
                    Some(value) => {
                        e.u8(1);
                        e.bytes(value.as_bytes());
                    }
                    None => e.u8(0),
                }
            }
            Record::PutCell(cell) => {
                e.u8(PUT_CELL);
                e.u32(cell.partition);
                e.i32(cell.nid.0);
                e.u8(cell.state as u8);
                e.option(cell.complete_up_to.map(|tid| tid.0));
                e.option(cell.pack.map(|tid| tid.0));
            }
            Record::DeleteCell { partition, nid } => {
                e.u8(DELETE_CELL);
                e.u32(*partition);
                e.i32(nid.0);
            }
            Record::DeleteCells => e.u8(DELETE_CELLS),
            Record::PutTransaction {
                partition,
                tid,
                meta,
            } => {
                e.u8(PUT_TRANSACTION);
                e.u32(*partition);
                e.u64(*tid);
                e.meta(meta);
            }
            Record::DeleteTransaction { partition, tid } => {
                e.u8(DELETE_TRANSACTION);
                e.u32(*partition);
                e.u64(*tid);
            }
            Record::DeleteTransactionsAfter { partition, tid } => {
                e.u8(DELETE_TRANSACTIONS_AFTER);
                e.u32(*partition);
                e.u64(*tid);
            }
            Record::PutTemporaryTransaction {
                partition,
                ttid,
                meta,
            } => {
                e.u8(PUT_TEMPORARY_TRANSACTION);
                e.u32(*partition);
                e.u64(*ttid);
                e.meta(meta);
            }
            Record::SetTemporaryTid { ttid, tid } => {
                e.u8(SET_TEMPORARY_TID);
                e.u64(*ttid);
                e.u64(*tid);
            }
            Record::MakePermanent { ttid, tid } => {
                e.u8(MAKE_PERMANENT);
                e.u64(*ttid);
                e.u64(*tid);
            }
            Record::DeleteTemporary { ttid } => {
                e.u8(DELETE_TEMPORARY);
                e.option(*ttid);
            }
            Record::PutObject {
                temporary,
                partition,
                tid,
                oid,
                data_id,
                data_serial,
            } => {
                e.u8(if *temporary {
                    PUT_TEMPORARY_OBJECT
                } else {
                    PUT_OBJECT
                });
                e.u32(*partition);
                e.u64(*tid);
                e.u64(*oid);
                e.option(*data_id);
                e.option(*data_serial);
            }
            Record::DeleteObject {
                partition,
                oid,
                serial,
            } => {
                e.u8(DELETE_OBJECT);
                e.u32(*partition);
                e.u64(*oid);
                e.u64(*serial);
            }
            Record::DeleteObjectsUpTo {
                partition,
                oid,
                tid,
            } => {
                e.u8(DELETE_OBJECTS_UP_TO);
                e.u32(*partition);
                e.u64(*oid);
                e.u64(*tid);
            }
            Record::DeleteObjectsAfter { partition, tid } => {
                e.u8(DELETE_OBJECTS_AFTER);
                e.u32(*partition);
                e.u64(*tid);
            }
            Record::DeletePartitionObjects { partition, limit } => {
                e.u8(DELETE_PARTITION_OBJECTS);
                e.u32(*partition);
                e.u64(*limit);
            }
            Record::DeletePartitionTransactions { partition, limit } => {
                e.u8(DELETE_PARTITION_TRANSACTIONS);
                e.u32(*partition);
                e.u64(*limit);
            }
            Record::PutData {
                id,
                compression,
                value,
                checksum,
            } => {
                e.u8(PUT_DATA);
                e.u64(*id);
                e.u8(*compression);
                // Values are bounded by the batch limit, far below 4 GiB.
                e.u32(value.len() as u32);
                e.0.extend_from_slice(value);
                e.0.extend_from_slice(&checksum.0);
            }
            Record::DeleteData { id } => {
                e.u8(DELETE_DATA);
                e.u64(*id);
            }
            Record::PutPackOrder(order) => {
                e.u8(PUT_PACK_ORDER);
                e.u64(order.id.0);
                e.u8(match order.approved {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                });
                e.u8(u8::from(order.partial));
                match &order.oids {
                    Some(oids) => {
                        e.u8(1);
                        e.oids(oids);
                    }
                    None => e.u8(0),
                }
                e.u64(order.pack_tid.0);
            }
            Record::SignPackOrder { id, approved } => {
                e.u8(SIGN_PACK_ORDER);
                e.u64(*id);
                e.u8(u8::from(*approved));
            }
            Record::RekeyPackOrder { from, to } => {
                e.u8(REKEY_PACK_ORDER);
                e.u64(*from);
                e.u64(*to);
            }
            Record::DeletePackOrder { id } => {
                e.u8(DELETE_PACK_ORDER);
                e.u64(*id);
            }
            Record::DeletePackOrdersAfter { tid } => {
                e.u8(DELETE_PACK_ORDERS_AFTER);
                e.u64(*tid);
            }
        }
    }
}

struct Encoder<'a>(&'a mut Vec<u8>);

impl Encoder<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn i32(&mut self, value: i32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn option(&mut self, value: Option<u64>) {
        match value {
            Some(value) => {
                self.u8(1);
                self.u64(value);
            }
            None => self.u8(0),
        }
    }

    /// Byte strings of records are user, description, extension and
    /// config values: each far below 4 GiB (a packet is at most 64 MiB).
    fn bytes(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
    }

    fn oids(&mut self, oids: &[Oid]) {
        self.u32(oids.len() as u32);
        for oid in oids {
            self.u64(oid.0);
        }
    }

    fn meta(&mut self, meta: &TransactionMeta) {
        self.oids(&meta.oids);
        self.bytes(&meta.user);
        self.bytes(&meta.description);
        self.bytes(&meta.extension);
        self.u8(u8::from(meta.packed));
        self.u64(meta.ttid.0);
    }
}

/// Reads the records of one batch, whose checksum held. Every length is
/// checked against what is left of the batch before anything is
/// allocated for it.
pub(super) struct Decoder<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Decoder<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, position: 0 }
    }

    /// Where the next record starts, from the start of the batch's
    /// records.
    pub(super) fn position(&self) -> usize {
        self.position
    }

    pub(super) fn is_empty(&self) -> bool {
        self.position == self.bytes.len()
    }

    fn take(&mut self, length: u64, what: &str) -> Result<&'a [u8], String> {
        let bytes = self.bytes;
        let left = bytes.len() - self.position;
        match usize::try_from(length) {
            Ok(length) if length <= left => {
                let taken = &bytes[self.position..self.position + length];
                self.position += length;
                Ok(taken)
            }
            _ => Err(format!(
                "{what} of {length} bytes goes past the end of its batch ({left} bytes left)"
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N as u64, what)?);
        Ok(array)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        self.array(what).map(i32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn flag(&mut self, what: &str) -> Result<bool, String> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{what}: {other} is neither 0 nor 1")),
        }
    }

    fn option(&mut self, what: &str) -> Result<Option<u64>, String> {
        if self.flag(what)? {
            self.u64(what).map(Some)
        } else {
            Ok(None)
        }
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let length = self.u32(what)?;
        self.take(u64::from(length), what)
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn oids(&mut self, what: &str) -> Result<Vec<Oid>, String> {
        let count = self.u32(what)?;
        let bytes = self.take(u64::from(count) * 8, what)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut oid = [0; 8];
                oid.copy_from_slice(chunk);
                Oid(u64::from_le_bytes(oid))
            })
            .collect())
    }

    fn meta(&mut self) -> Result<TransactionMeta, String> {
        Ok(TransactionMeta {
            oids: self.oids("oid list")?,
            user: self.bytes("user")?.to_vec(),
            description: self.bytes("description")?.to_vec(),
            extension: self.bytes("extension")?.to_vec(),
            packed: self.flag("packed")?,
            ttid: Tid(self.u64("ttid")?),
        })
    }

    fn cell(&mut self) -> Result<CellRow, String> {
        let partition = self.u32("partition")?;
        let nid = NodeId(self.i32("nid")?);
        let state = self.u8("cell state")?;
        let state = CellState::from_value(u64::from(state))
            .filter(|state| *state != CellState::Discarded)
            .ok_or_else(|| format!("invalid cell state {state}"))?;
        Ok(CellRow {
            partition,
            nid,
            state,
            complete_up_to: self.option("cell progress")?.map(Tid),
            pack: self.option("cell pack id")?.map(Tid),
        })
    }

    fn pack_order(&mut self) -> Result<PackOrder, String> {
        let id = Tid(self.u64("pack id")?);
        let approved = match self.u8("pack approval")? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            other => return Err(format!("invalid pack approval {other}")),
        };
        let partial = self.flag("pack partial")?;
        let oids = if self.flag("pack oids")? {
            Some(self.oids("pack oids")?)
        } else {
            None
        };
        Ok(PackOrder {
            id,
            approved,
            partial,
            oids,
            pack_tid: Tid(self.u64("pack tid")?),
        })
    }

    /// The next record.
    pub(super) fn record(&mut self) -> Result<Record<'a>, String> {
        let tag = self.u8("record tag")?;
        Ok(match tag {
            SET_CONFIG => Record::SetConfig {
                key: self.text("config key")?,
                value: if self.flag("config value")? {
                    Some(self.text("config value")?)
                } else {
                    None
                },
            },
            PUT_CELL => Record::PutCell(self.cell()?),
            DELETE_CELL => Record::DeleteCell {
                partition: self.u32("partition")?,
                nid: NodeId(self.i32("nid")?),
            },
            DELETE_CELLS => Record::DeleteCells,
            PUT_TRANSACTION => Record::PutTransaction {
                partition: self.u32("partition")?,
                tid: self.u64("tid")?,
                meta: self.meta()?,
            },
            DELETE_TRANSACTION => Record::DeleteTransaction {
                partition: self.u32("partition")?,
                tid: self.u64("tid")?,
            },
            DELETE_TRANSACTIONS_AFTER => Record::DeleteTransactionsAfter {
                partition: self.u32("partition")?,
                tid: self.u64("tid")?,
            },
            PUT_TEMPORARY_TRANSACTION => Record::PutTemporaryTransaction {
                partition: self.u32("partition")?,
                ttid: self.u64("ttid")?,
                meta: self.meta()?,
            },
            SET_TEMPORARY_TID => Record::SetTemporaryTid {
                ttid: self.u64("ttid")?,
                tid: self.u64("tid")?,
            },
            MAKE_PERMANENT => Record::MakePermanent {
                ttid: self.u64("ttid")?,
                tid: self.u64("tid")?,
            },
            DELETE_TEMPORARY => Record::DeleteTemporary {
                ttid: self.option("ttid")?,
            },
            PUT_OBJECT | PUT_TEMPORARY_OBJECT => Record::PutObject {
                temporary: tag == PUT_TEMPORARY_OBJECT,
                partition: self.u32("partition")?,
                tid: self.u64("tid")?,
                oid: self.u64("oid")?,
                data_id: self.option("data id")?,
                data_serial: self.option("data serial")?,
            },
            DELETE_OBJECT => Record::DeleteObject {
                partition: self.u32("partition")?,
                oid: self.u64("oid")?,
                serial: self.u64("serial")?,
            },
            DELETE_OBJECTS_UP_TO => Record::DeleteObjectsUpTo {
                partition: self.u32("partition")?,
                oid: self.u64("oid")?,
                tid: self.u64("tid")?,
            },
            DELETE_OBJECTS_AFTER => Record::DeleteObjectsAfter {
                partition: self.u32("partition")?,
                tid: self.u64("tid")?,
            },
            DELETE_PARTITION_OBJECTS => Record::DeletePartitionObjects {
                partition: self.u32("partition")?,
                limit: self.u64("limit")?,
            },
            DELETE_PARTITION_TRANSACTIONS => Record::DeletePartitionTransactions {
                partition: self.u32("partition")?,
                limit: self.u64("limit")?,
            },
            PUT_DATA => {
                let id = self.u64("data id")?;
                let compression = self.u8("compression")?;
                let length = self.u32("data length")?;
                Record::PutData {
                    id,
                    compression,
                    value: self.take(u64::from(length), "data value")?,
                    checksum: Checksum(self.array("data checksum")?),
                }
            }
            DELETE_DATA => Record::DeleteData {
                id: self.u64("data id")?,
            },
            PUT_PACK_ORDER => Record::PutPackOrder(self.pack_order()?),
            SIGN_PACK_ORDER => Record::SignPackOrder {
                id: self.u64("pack id")?,
                approved: self.flag("pack approval")?,
            },
            REKEY_PACK_ORDER => Record::RekeyPackOrder {
                from: self.u64("pack id")?,
                to: self.u64("pack id")?,
            },
            DELETE_PACK_ORDER => Record::DeletePackOrder {
                id: self.u64("pack id")?,
            },
            DELETE_PACK_ORDERS_AFTER => Record::DeletePackOrdersAfter {
                tid: self.u64("tid")?,
            },
            other => return Err(format!("unknown record tag {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn round_trip(record: Record<'_>) {
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.record().unwrap(), record);
        assert!(decoder.is_empty());
        // Cut anywhere, it is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(
                Decoder::new(&bytes[..cut]).record().is_err(),
                "{record:?} cut at {cut}"
            );
        }
    }

    #[test]
    fn every_record_kind_round_trips_and_refuses_to_be_cut() {
        let meta = TransactionMeta {
            oids: vec![Oid(1), Oid(u64::MAX)],
            user: b"user".to_vec(),
            description: b"desc".to_vec(),
            extension: vec![0; 3],
            packed: true,
            ttid: Tid(9),
        };
        round_trip(Record::SetConfig {
            key: "name".into(),
            value: Some("cluster".into()),
        });
        round_trip(Record::SetConfig {
            key: "nid".into(),
            value: None,
        });
        round_trip(Record::PutCell(CellRow {
            partition: 7,
            nid: NodeId(-3),
            state: CellState::OutOfDate,
            complete_up_to: Some(Tid(5)),
            pack: None,
        }));
        round_trip(Record::DeleteCell {
            partition: 1,
            nid: NodeId(2),
        });
        round_trip(Record::DeleteCells);
        round_trip(Record::PutTransaction {
            partition: 2,
            tid: 10,
            meta: meta.clone(),
        });
        round_trip(Record::DeleteTransaction {
            partition: 2,
            tid: 10,
        });
        round_trip(Record::DeleteTransactionsAfter {
            partition: 2,
            tid: 10,
        });
        round_trip(Record::PutTemporaryTransaction {
            partition: 2,
            ttid: 9,
            meta,
        });
        round_trip(Record::SetTemporaryTid { ttid: 9, tid: 10 });
        round_trip(Record::MakePermanent { ttid: 9, tid: 10 });
        round_trip(Record::DeleteTemporary { ttid: None });
        round_trip(Record::DeleteTemporary { ttid: Some(9) });
        for temporary in [false, true] {
            round_trip(Record::PutObject {
                temporary,
                partition: 1,
                tid: 2,
                oid: 3,
                data_id: Some(4),
                data_serial: None,
            });
        }
        round_trip(Record::DeleteObject {
            partition: 1,
            oid: 3,
            serial: 2,
        });
        round_trip(Record::DeleteObjectsUpTo {
            partition: 1,
            oid: 3,
            tid: 2,
        });
        round_trip(Record::DeleteObjectsAfter {
            partition: 1,
            tid: 2,
        });
        round_trip(Record::DeletePartitionObjects {
            partition: 1,
            limit: 1000,
        });
        round_trip(Record::DeletePartitionTransactions {
            partition: 1,
            limit: 1000,
        });
        round_trip(Record::PutData {
            id: 5,
            compression: 1,
            value: b"value",
            checksum: Checksum([7; 20]),
        });
        round_trip(Record::DeleteData { id: 5 });
        for approved in [None, Some(false), Some(true)] {
            round_trip(Record::PutPackOrder(PackOrder {
                id: Tid(20),
                approved,
                partial: true,
                oids: Some(vec![Oid(1)]),
                pack_tid: Tid(15),
            }));
        }
        round_trip(Record::SignPackOrder {
            id: 20,
            approved: true,
        });
        round_trip(Record::RekeyPackOrder { from: 20, to: 21 });
        round_trip(Record::DeletePackOrder { id: 21 });
        round_trip(Record::DeletePackOrdersAfter { tid: 21 });
    }

    #[test]
    fn a_data_value_starts_at_data_at() {
        let mut bytes = Vec::new();
        Record::PutData {
            id: 1,
            compression: 0,
            value: b"abc",
            checksum: Checksum::ZERO,
        }
        .encode(&mut bytes);
        let at = DATA_AT as usize;
        assert_eq!(&bytes[at..at + 3], b"abc");
    }

    #[test]
    fn unknown_tags_and_hostile_lengths_are_errors() {
        assert!(Decoder::new(&[0])
            .record()
            .unwrap_err()
            .contains("unknown record tag 0"));
        assert!(Decoder::new(&[200])
            .record()
            .unwrap_err()
            .contains("unknown record tag"));
        // A data value of 4 GiB in a batch of a few bytes.
        let mut bytes = vec![PUT_DATA];
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = Decoder::new(&bytes).record().unwrap_err();
        assert!(error.contains("goes past the end of its batch"), "{error}");
        // An oid list of 4 billion oids.
        let mut bytes = vec![PUT_PACK_ORDER];
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 1]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Decoder::new(&bytes).record().is_err());
    }

    #[test]
    fn headers_detect_their_damage() {
        let header = file_header();
        assert!(matches!(
            parse_file_header(&header),
            FileHeader::Version(VERSION)
        ));
        let mut batch = vec![0; BATCH_HEADER_LEN];
        batch.extend_from_slice(b"records");
        seal_batch(&mut batch);
        let mut sealed = [0; BATCH_HEADER_LEN];
        sealed.copy_from_slice(&batch[..BATCH_HEADER_LEN]);
        assert_eq!(
            parse_batch_header(&sealed),
            Some((7, crc32fast::hash(b"records")))
        );
        for byte in 0..BATCH_HEADER_LEN {
            let mut damaged = sealed;
            damaged[byte] ^= 0x10;
            assert_eq!(parse_batch_header(&damaged), None, "byte {byte}");
            let mut damaged = header;
            damaged[byte] ^= 0x10;
            assert!(
                matches!(parse_file_header(&damaged), FileHeader::Bad),
                "byte {byte}"
            );
        }
    }
}
