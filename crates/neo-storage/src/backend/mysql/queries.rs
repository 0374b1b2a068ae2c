//! [`Backend`] on MySQL: one or a few statements per method, plus what
//! `bigdata` needs (values of 16 MiB and more, §12.4).

use std::path::PathBuf;

use mysql::{Row, Value};
use neo_proto::{Checksum, NodeId, Oid, Partition, Tid};

use super::codec::{self, column, BigData, StoredData, BIG, BIG_THRESHOLD, CHUNK};
use super::schema::id_list;
use super::MysqlBackend;
use crate::backend::{
    rows, Backend, CellRow, DataId, FatalError, HistoryEntry, ObjectRecord, ObjectRow,
    PackCandidate, PackOrder, RequestError, Result, Revision, TransactionMeta,
};

/// Ids per statement when deleting lists of data rows: a statement stays
/// far below `max_allowed_packet`.
const IDS_PER_STATEMENT: usize = 1000;

/// Width of `config.value` as created (NEO/py's `VARBINARY(255)`).
const CONFIG_VALUE_WIDTH: usize = 255;

/// An object row joined with its data and followed by the serial of the
/// next revision, as read by `load_object`, with the given condition; one
/// statement per load, the next serial included.
macro_rules! select_object {
    ($condition:literal) => {
        concat!(
            "SELECT obj.tid, obj.value_tid, obj.data_id, data.id, data.compression, \
             data.hash, data.value, \
             (SELECT MIN(next.tid) FROM obj AS next WHERE next.`partition` = obj.`partition` \
              AND next.oid = obj.oid AND next.tid > obj.tid) \
             FROM obj FORCE INDEX (PRIMARY) LEFT JOIN data ON data.id = obj.data_id WHERE ",
            $condition
        )
    };
}

fn v(value: impl Into<Value>) -> Value {
    value.into()
}

/// Decodes every row with `decode`.
fn decode_all<T>(
    rows: Vec<Row>,
    mut decode: impl FnMut(&mut Row) -> Result<T, FatalError>,
) -> Result<Vec<T>, FatalError> {
    rows.into_iter().map(|mut row| decode(&mut row)).collect()
}

/// The single nullable value of a one-row aggregate (`MIN`, `MAX`).
fn aggregate(row: Option<Row>, what: &str) -> Result<Option<u64>, FatalError> {
    match row {
        Some(mut row) => column::<Option<u64>>(&mut row, 0, what),
        None => Ok(None),
    }
}

impl MysqlBackend {
    /// Makes `config.value` hold `length` bytes, as NEO/py does for the
    /// Importer's state (several sources take more than 255 bytes). The
    /// `ALTER TABLE` commits what was pending: only done at an import's
    /// first start, before anything else is written.
    fn widen_config_values(&mut self, length: usize) -> Result<(), FatalError> {
        const CONTEXT: &str = "widening config values";
        let row = self.row(
            CONTEXT,
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'config' AND COLUMN_NAME = 'value'",
            Vec::new(),
        )?;
        let width = aggregate(row, "config value width")?.unwrap_or(0);
        if width < length as u64 {
            self.write_text(
                CONTEXT,
                &format!("ALTER TABLE config MODIFY value VARBINARY({length}) NULL"),
            )?;
        }
        Ok(())
    }

    /// The value of a `data` row, read back from `bigdata` if it is there.
    fn value_of(&mut self, data: StoredData) -> Result<(u8, Checksum, Vec<u8>), FatalError> {
        let Some(big) = data.big()? else {
            return Ok((data.compression, data.checksum, data.value));
        };
        let ids = big.ids();
        let rows = self.rows(
            "loading big data",
            "SELECT value FROM bigdata WHERE id >= ? AND id < ? ORDER BY id",
            vec![v(ids.start), v(ids.end)],
        )?;
        let mut value = Vec::with_capacity(big.length as usize);
        let chunks = rows.len();
        for mut row in rows {
            value.extend_from_slice(&column::<Vec<u8>>(&mut row, 0, "big data")?);
        }
        if chunks as u64 != ids.end - ids.start || value.len() != big.length as usize {
            return Err(FatalError::Corrupted(format!(
                "data id {}: {} bytes in {chunks} bigdata rows from id {}, {} expected",
                data.id,
                value.len(),
                big.first,
                big.length
            )));
        }
        Ok((data.compression & !BIG, data.checksum, value))
    }

    /// Deletes the `data` rows among `ids` that no `obj` or `tobj` row
    /// references, with their `bigdata` rows.
    pub(super) fn delete_unreferenced(&mut self, ids: &[DataId]) -> Result<(), FatalError> {
        for ids in ids.chunks(IDS_PER_STATEMENT) {
            let rows = self.rows_text(
                "finding unreferenced data",
                &format!(
                    "SELECT id, compression, IF(compression >= 128, value, NULL) FROM data \
                     WHERE id IN ({}) \
                     AND NOT EXISTS (SELECT 1 FROM obj WHERE obj.data_id = data.id) \
                     AND NOT EXISTS (SELECT 1 FROM tobj WHERE tobj.data_id = data.id)",
                    id_list(ids)
                ),
            )?;
            let mut unreferenced = Vec::with_capacity(rows.len());
            let mut chunks = Vec::new();
            for mut row in rows {
                let id: u64 = column(&mut row, 0, "data id")?;
                let compression: Option<u8> = column(&mut row, 1, "data compression")?;
                let header: Option<Vec<u8>> = column(&mut row, 2, "data value")?;
                if let (Some(compression), Some(header)) = (compression, header) {
                    if compression & BIG != 0 {
                        chunks.push(BigData::decode(&header, id)?.ids());
                    }
                }
                unreferenced.push(id);
            }
            if unreferenced.is_empty() {
                continue;
            }
            self.write_text(
                "pruning unreferenced data",
                &format!("DELETE FROM data WHERE id IN ({})", id_list(&unreferenced)),
            )?;
            for range in chunks {
                self.write(
                    "pruning unreferenced big data",
                    "DELETE FROM bigdata WHERE id >= ? AND id < ?",
                    vec![v(range.start), v(range.end)],
                )?;
            }
        }
        Ok(())
    }

    /// Stores a value of [`BIG_THRESHOLD`] bytes or more in `bigdata`, in
    /// rows of consecutive ids; returns its header.
    fn put_big(&mut self, data: &[u8]) -> Result<BigData> {
        let length = u32::try_from(data.len()).map_err(|_| RequestError::OutOfRange {
            what: "data size",
            value: data.len() as u64,
        })?;
        let mut first = None;
        for (index, chunk) in data.chunks(CHUNK).enumerate() {
            match first {
                None => {
                    self.write(
                        "storing big data",
                        "INSERT INTO bigdata (value) VALUES (?)",
                        vec![v(chunk)],
                    )?;
                    let id = self.run("storing big data", |conn| Ok(conn.last_insert_id()))?;
                    let id = u32::try_from(id).map_err(|_| {
                        FatalError::Corrupted(format!("bigdata id {id} beyond 32 bits"))
                    })?;
                    first = Some(id);
                }
                Some(first) => {
                    // The ids follow the first one: the header only says
                    // where the value starts.
                    let id = u64::from(first) + index as u64;
                    self.write(
                        "storing big data",
                        "INSERT INTO bigdata VALUES (?, ?)",
                        vec![v(id), v(chunk)],
                    )?;
                }
            }
        }
        let first = first.ok_or_else(|| FatalError::Corrupted("empty big value".to_owned()))?;
        Ok(BigData { first, length })
    }
}

impl Backend for MysqlBackend {
    fn commit(&mut self) -> Result<()> {
        Ok(self.commit_now()?)
    }

    fn has_uncommitted(&self) -> bool {
        self.uncommitted
    }

    fn reset(&mut self) -> Result<()> {
        self.drop_tables()?;
        Ok(self.create_tables()?)
    }

    fn erase(&mut self) -> Result<()> {
        Ok(self.drop_tables()?)
    }

    fn data_path(&mut self) -> Result<Option<PathBuf>> {
        // The server runs on this machine (NEO/py's rule): its data
        // directory is ours to look at.
        let row = self.row("reading the data directory", "SELECT @@datadir", Vec::new())?;
        let datadir = match row {
            Some(mut row) => column::<Option<String>>(&mut row, 0, "datadir")?,
            None => None,
        };
        Ok(datadir.map(PathBuf::from))
    }

    fn config(&mut self, key: &str) -> Result<Option<String>> {
        let row = self.row(
            "reading configuration",
            "SELECT value FROM config WHERE name = ?",
            vec![v(key)],
        )?;
        let value = match row {
            Some(mut row) => column::<Option<Vec<u8>>>(&mut row, 0, "config value")?,
            None => None,
        };
        Ok(value.map(|value| String::from_utf8_lossy(&value).into_owned()))
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        const CONTEXT: &str = "writing configuration";
        if let Some(value) = value.filter(|value| value.len() > CONFIG_VALUE_WIDTH) {
            self.widen_config_values(value.len())?;
        }
        match value {
            Some(value) => self.write(
                CONTEXT,
                "REPLACE INTO config VALUES (?, ?)",
                vec![v(key), v(value)],
            ),
            None => self.write(CONTEXT, "DELETE FROM config WHERE name = ?", vec![v(key)]),
        }?;
        Ok(())
    }

    fn cells(&mut self) -> Result<Vec<CellRow>> {
        let rows = self.rows(
            "reading the partition table",
            "SELECT `partition`, nid, tid, pack FROM pt ORDER BY `partition`, nid",
            Vec::new(),
        )?;
        Ok(decode_all(rows, codec::cell)?)
    }

    fn put_cell(&mut self, cell: &CellRow) -> Result<()> {
        let tid = rows::cell_tid(cell)?;
        self.write(
            "writing a cell",
            "REPLACE INTO pt VALUES (?, ?, ?, ?)",
            vec![
                v(cell.partition),
                v(cell.nid.0),
                v(tid),
                v(cell.pack.map(|pack| pack.0)),
            ],
        )?;
        Ok(())
    }

    fn delete_cell(&mut self, partition: Partition, nid: NodeId) -> Result<()> {
        self.write(
            "deleting a cell",
            "DELETE FROM pt WHERE `partition` = ? AND nid = ?",
            vec![v(partition), v(nid.0)],
        )?;
        Ok(())
    }

    fn delete_cells(&mut self) -> Result<()> {
        self.write("deleting the partition table", "DELETE FROM pt", Vec::new())?;
        Ok(())
    }

    fn transaction(&mut self, partition: Partition, tid: Tid) -> Result<Option<TransactionMeta>> {
        let row = self.row(
            "reading transaction metadata",
            "SELECT oids, user, description, ext, packed, ttid FROM trans
             WHERE `partition` = ? AND tid = ?",
            vec![v(partition), v(tid.0)],
        )?;
        Ok(row
            .map(|mut row| codec::transaction(&mut row, tid))
            .transpose()?)
    }

    fn put_transaction(
        &mut self,
        partition: Partition,
        tid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()> {
        self.write(
            "storing transaction metadata",
            "REPLACE INTO trans VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                v(partition),
                v(tid.0),
                v(meta.packed),
                v(rows::oid_list(&meta.oids)),
                v(meta.user.as_slice()),
                v(meta.description.as_slice()),
                v(meta.extension.as_slice()),
                v(meta.ttid.0),
            ],
        )?;
        Ok(())
    }

    fn final_tid(&mut self, partition: Partition, ttid: Tid) -> Result<Option<Tid>> {
        let row = self.row(
            "finding the final TID of a transaction",
            "SELECT tid FROM trans WHERE `partition` = ? AND tid >= ? AND ttid = ? LIMIT 1",
            vec![v(partition), v(ttid.0), v(ttid.0)],
        )?;
        Ok(row
            .map(|mut row| codec::tid(&mut row, 0, "tid"))
            .transpose()?)
    }

    fn tids(&mut self, partitions: &[Partition], offset: u64, length: u64) -> Result<Vec<Tid>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let list = partitions
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows = self.rows_text(
            "listing transactions",
            &format!(
                "SELECT tid FROM trans WHERE `partition` IN ({list}) \
                 ORDER BY tid DESC LIMIT {length} OFFSET {offset}"
            ),
        )?;
        Ok(decode_all(rows, |row| codec::tid(row, 0, "tid"))?)
    }

    fn tids_between(
        &mut self,
        partition: Partition,
        min: Tid,
        max: Tid,
        length: u64,
    ) -> Result<Vec<Tid>> {
        let rows = self.rows(
            "listing transactions of a partition",
            "SELECT tid FROM trans WHERE `partition` = ? AND ? <= tid AND tid <= ?
             ORDER BY tid LIMIT ?",
            vec![v(partition), v(min.0), v(max.0), v(length)],
        )?;
        Ok(decode_all(rows, |row| codec::tid(row, 0, "tid"))?)
    }

    fn first_tid(&mut self, partition: Partition) -> Result<Option<Tid>> {
        let row = self.row(
            "reading the first TID",
            "SELECT MIN(tid) FROM trans WHERE `partition` = ?",
            vec![v(partition)],
        )?;
        Ok(aggregate(row, "tid")?.map(Tid))
    }

    fn last_tid(&mut self, partition: Partition) -> Result<Option<Tid>> {
        let mut last = None;
        for query in [
            "SELECT MAX(tid) FROM trans WHERE `partition` = ?",
            "SELECT MAX(tid) FROM obj FORCE INDEX (tid) WHERE `partition` = ?",
        ] {
            let row = self.row(
                "reading the last TID of a partition",
                query,
                vec![v(partition)],
            )?;
            last = last.max(aggregate(row, "tid")?.map(Tid));
        }
        Ok(last)
    }

    fn last_oid(&mut self, partition: Partition) -> Result<Option<Oid>> {
        let row = self.row(
            "reading the last oid of a partition",
            "SELECT MAX(oid) FROM obj WHERE `partition` = ?",
            vec![v(partition)],
        )?;
        Ok(aggregate(row, "oid")?.map(Oid))
    }

    fn delete_transactions_after(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        self.write(
            "deleting transactions",
            "DELETE FROM trans WHERE `partition` = ? AND tid > ?",
            vec![v(partition), v(tid.0)],
        )?;
        Ok(())
    }

    fn temporary_transaction(&mut self, ttid: Tid) -> Result<Option<TransactionMeta>> {
        let row = self.row(
            "reading metadata of a transaction in progress",
            "SELECT oids, user, description, ext, packed, ttid FROM ttrans WHERE ttid = ?",
            vec![v(ttid.0)],
        )?;
        Ok(row
            .map(|mut row| codec::transaction(&mut row, ttid))
            .transpose()?)
    }

    fn put_temporary_transaction(
        &mut self,
        partition: Partition,
        ttid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()> {
        self.write(
            "storing metadata of a transaction in progress",
            "REPLACE INTO ttrans VALUES (?, NULL, ?, ?, ?, ?, ?, ?)",
            vec![
                v(partition),
                v(meta.packed),
                v(rows::oid_list(&meta.oids)),
                v(meta.user.as_slice()),
                v(meta.description.as_slice()),
                v(meta.extension.as_slice()),
                v(ttid.0),
            ],
        )?;
        Ok(())
    }

    fn set_temporary_tid(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        self.write(
            "locking a transaction",
            "UPDATE ttrans SET tid = ? WHERE ttid = ?",
            vec![v(tid.0), v(ttid.0)],
        )?;
        Ok(())
    }

    fn temporary_transactions(&mut self) -> Result<Vec<(Tid, Option<Tid>)>> {
        let rows = self.rows(
            "listing unfinished transactions",
            "SELECT ttid, tid FROM ttrans",
            Vec::new(),
        )?;
        Ok(decode_all(rows, |row| {
            Ok((
                codec::tid(row, 0, "ttid")?,
                codec::optional_tid(row, 1, "tid")?,
            ))
        })?)
    }

    fn temporary_object_ttids(&mut self) -> Result<Vec<Tid>> {
        let rows = self.rows(
            "listing unfinished transactions",
            "SELECT DISTINCT tid FROM tobj",
            Vec::new(),
        )?;
        Ok(decode_all(rows, |row| codec::tid(row, 0, "ttid"))?)
    }

    fn make_permanent(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        const CONTEXT: &str = "unlocking a transaction";
        let (tid, ttid) = (v(tid.0), v(ttid.0));
        self.write(
            CONTEXT,
            "REPLACE INTO obj
             SELECT `partition`, oid, ?, data_id, value_tid FROM tobj WHERE tid = ?",
            vec![tid.clone(), ttid.clone()],
        )?;
        self.write(
            CONTEXT,
            "DELETE FROM tobj WHERE tid = ?",
            vec![ttid.clone()],
        )?;
        self.write(
            CONTEXT,
            "REPLACE INTO trans
             SELECT `partition`, ?, packed, oids, user, description, ext, ttid
             FROM ttrans WHERE ttid = ?",
            vec![tid, ttid.clone()],
        )?;
        self.write(CONTEXT, "DELETE FROM ttrans WHERE ttid = ?", vec![ttid])?;
        Ok(())
    }

    fn delete_temporary(&mut self, ttid: Option<Tid>) -> Result<()> {
        const CONTEXT: &str = "deleting rows of transactions in progress";
        match ttid {
            Some(ttid) => {
                self.write(CONTEXT, "DELETE FROM tobj WHERE tid = ?", vec![v(ttid.0)])?;
                self.write(
                    CONTEXT,
                    "DELETE FROM ttrans WHERE ttid = ?",
                    vec![v(ttid.0)],
                )?;
            }
            None => {
                self.write(CONTEXT, "DELETE FROM tobj", Vec::new())?;
                self.write(CONTEXT, "DELETE FROM ttrans", Vec::new())?;
            }
        }
        Ok(())
    }

    fn put_object(
        &mut self,
        temporary: bool,
        partition: Partition,
        tid: Tid,
        row: &ObjectRow,
    ) -> Result<Option<DataId>> {
        const CONTEXT: &str = "storing an object record";
        // Literals per table: no SQL built on the vote path.
        let (select, insert) = if temporary {
            (
                "SELECT data_id FROM tobj WHERE `partition` = ? AND oid = ? AND tid = ?",
                "REPLACE INTO tobj VALUES (?, ?, ?, ?, ?)",
            )
        } else {
            (
                "SELECT data_id FROM obj WHERE `partition` = ? AND oid = ? AND tid = ?",
                "REPLACE INTO obj VALUES (?, ?, ?, ?, ?)",
            )
        };
        let key = vec![v(partition), v(row.oid.0), v(tid.0)];
        let replaced = match self.row(CONTEXT, select, key.clone())? {
            Some(mut found) => column::<Option<u64>>(&mut found, 0, "data id")?,
            None => None,
        };
        let mut values = key;
        values.push(v(row.data_id));
        values.push(v(row.data_serial.map(|tid| tid.0)));
        self.write(CONTEXT, insert, values)?;
        Ok(replaced)
    }

    fn object(&mut self, partition: Partition, oid: Oid, serial: Tid) -> Result<Option<ObjectRow>> {
        let row = self.row(
            "reading an object record",
            "SELECT data_id, value_tid FROM obj WHERE `partition` = ? AND oid = ? AND tid = ?",
            vec![v(partition), v(oid.0), v(serial.0)],
        )?;
        Ok(row
            .map(|mut row| codec::object_row(&mut row, 0, oid))
            .transpose()?)
    }

    fn object_before(
        &mut self,
        partition: Partition,
        oid: Oid,
        before: Tid,
    ) -> Result<Option<(Tid, ObjectRow)>> {
        let row = self.row(
            "reading an object revision",
            "SELECT tid, data_id, value_tid FROM obj FORCE INDEX (PRIMARY)
             WHERE `partition` = ? AND oid = ? AND tid < ? ORDER BY tid DESC LIMIT 1",
            vec![v(partition), v(oid.0), v(before.0)],
        )?;
        Ok(row
            .map(|mut row| {
                Ok::<_, FatalError>((
                    codec::tid(&mut row, 0, "serial")?,
                    codec::object_row(&mut row, 1, oid)?,
                ))
            })
            .transpose()?)
    }

    fn load_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        revision: Revision,
    ) -> Result<Option<ObjectRecord>> {
        let (query, params) = match revision {
            Revision::Serial(serial) => (
                select_object!("obj.`partition` = ? AND obj.oid = ? AND obj.tid = ?"),
                vec![v(partition), v(oid.0), v(serial.0)],
            ),
            Revision::Before(before) => (
                select_object!(
                    "obj.`partition` = ? AND obj.oid = ? AND obj.tid < ? \
                     ORDER BY obj.tid DESC LIMIT 1"
                ),
                vec![v(partition), v(oid.0), v(before.0)],
            ),
            Revision::Latest => (
                select_object!("obj.`partition` = ? AND obj.oid = ? ORDER BY obj.tid DESC LIMIT 1"),
                vec![v(partition), v(oid.0)],
            ),
        };
        let Some(mut row) = self.row("loading an object", query, params)? else {
            return Ok(None);
        };
        let (mut record, data) = codec::object_record(&mut row, oid)?;
        if let Some(data) = data {
            let (compression, checksum, value) = self.value_of(data)?;
            record.compression = Some(compression);
            record.checksum = checksum;
            record.data = value;
        }
        Ok(Some(record))
    }

    fn has_object(&mut self, partition: Partition, oid: Oid) -> Result<bool> {
        let row = self.row(
            "loading an object",
            "SELECT 1 FROM obj WHERE `partition` = ? AND oid = ? LIMIT 1",
            vec![v(partition), v(oid.0)],
        )?;
        Ok(row.is_some())
    }

    fn last_serial(&mut self, partition: Partition, oid: Oid) -> Result<Option<Tid>> {
        let row = self.row(
            "reading the last serial of an object",
            "SELECT MAX(tid) FROM obj WHERE `partition` = ? AND oid = ?",
            vec![v(partition), v(oid.0)],
        )?;
        Ok(aggregate(row, "serial")?.map(Tid))
    }

    fn object_history(
        &mut self,
        partition: Partition,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> Result<Vec<HistoryEntry>> {
        // The size of a big value is in its header.
        let rows = self.rows(
            "reading object history",
            "SELECT obj.tid, data.id, LENGTH(data.value),
                    IF(data.compression >= 128, data.value, NULL)
             FROM obj FORCE INDEX (PRIMARY) LEFT JOIN data ON data.id = obj.data_id
             WHERE obj.`partition` = ? AND obj.oid = ?
             ORDER BY obj.tid DESC LIMIT ? OFFSET ?",
            vec![v(partition), v(oid.0), v(length), v(offset)],
        )?;
        Ok(decode_all(rows, |row| {
            let serial = codec::tid(row, 0, "serial")?;
            let id: Option<u64> = column(row, 1, "data id")?;
            let length: Option<u64> = column(row, 2, "data size")?;
            let header: Option<Vec<u8>> = column(row, 3, "data value")?;
            let size = match (id, header) {
                (Some(id), Some(header)) => u64::from(BigData::decode(&header, id)?.length),
                _ => length.unwrap_or(0),
            };
            Ok(HistoryEntry { serial, size })
        })?)
    }

    fn oids_with_data(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        tid: Tid,
        length: u64,
    ) -> Result<Vec<Oid>> {
        let rows = self.rows(
            "listing oids",
            "SELECT o.oid FROM obj AS o
             WHERE o.`partition` = ? AND o.oid >= ? AND o.data_id IS NOT NULL
               AND o.tid = (SELECT MAX(tid) FROM obj
                            WHERE `partition` = o.`partition` AND oid = o.oid AND tid <= ?)
             ORDER BY o.oid LIMIT ?",
            vec![v(partition), v(min_oid.0), v(tid.0), v(length)],
        )?;
        Ok(decode_all(rows, |row| codec::oid(row, 0))?)
    }

    fn temporary_data_ids(&mut self, ttid: Option<Tid>) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "reading data ids of transactions in progress";
        let rows = match ttid {
            Some(ttid) => self.rows(
                CONTEXT,
                "SELECT data_id FROM tobj WHERE tid = ? AND data_id IS NOT NULL",
                vec![v(ttid.0)],
            )?,
            None => self.rows(
                CONTEXT,
                "SELECT data_id FROM tobj WHERE data_id IS NOT NULL",
                Vec::new(),
            )?,
        };
        Ok(decode_all(rows, |row| column(row, 0, "data id"))?)
    }

    fn delete_objects_up_to(
        &mut self,
        partition: Partition,
        oid: Oid,
        tid: Tid,
    ) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "deleting object records";
        let key = vec![v(partition), v(oid.0), v(tid.0)];
        let rows = self.rows(
            CONTEXT,
            "SELECT DISTINCT data_id FROM obj
             WHERE `partition` = ? AND oid = ? AND tid <= ? AND data_id IS NOT NULL",
            key.clone(),
        )?;
        let ids = decode_all(rows, |row| column(row, 0, "data id"))?;
        self.write(
            CONTEXT,
            "DELETE FROM obj WHERE `partition` = ? AND oid = ? AND tid <= ?",
            key,
        )?;
        Ok(ids)
    }

    fn delete_objects_after(&mut self, partition: Partition, tid: Tid) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "deleting object records";
        let key = vec![v(partition), v(tid.0)];
        let rows = self.rows(
            CONTEXT,
            "SELECT DISTINCT data_id FROM obj FORCE INDEX (tid)
             WHERE `partition` = ? AND tid > ? AND data_id IS NOT NULL",
            key.clone(),
        )?;
        let ids = decode_all(rows, |row| column(row, 0, "data id"))?;
        self.write(
            CONTEXT,
            "DELETE FROM obj WHERE `partition` = ? AND tid > ?",
            key,
        )?;
        Ok(ids)
    }

    fn pack_candidates(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        pack_tid: Tid,
        limit: u64,
    ) -> Result<Vec<PackCandidate>> {
        let rows = self.rows(
            "listing oids to pack",
            "SELECT oid, COUNT(*), MAX(tid) FROM obj FORCE INDEX (PRIMARY)
             WHERE `partition` = ? AND oid >= ? AND tid <= ?
             GROUP BY oid ORDER BY oid LIMIT ?",
            vec![v(partition), v(min_oid.0), v(pack_tid.0), v(limit)],
        )?;
        Ok(decode_all(rows, |row| {
            Ok(PackCandidate {
                oid: codec::oid(row, 0)?,
                records: column(row, 1, "record count")?,
                newest: codec::tid(row, 2, "serial")?,
            })
        })?)
    }

    fn pack_candidate(
        &mut self,
        partition: Partition,
        oid: Oid,
        pack_tid: Tid,
    ) -> Result<Option<PackCandidate>> {
        let row = self.row(
            "listing oids to pack",
            "SELECT COUNT(*), MAX(tid) FROM obj WHERE `partition` = ? AND oid = ? AND tid <= ?",
            vec![v(partition), v(oid.0), v(pack_tid.0)],
        )?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        let records = column(&mut row, 0, "record count")?;
        let newest = codec::optional_tid(&mut row, 1, "serial")?;
        Ok(newest.map(|newest| PackCandidate {
            oid,
            records,
            newest,
        }))
    }

    fn last_data_id(&mut self, first: DataId, last: DataId) -> Result<Option<DataId>> {
        let row = self.row(
            "finding the last data id of a partition",
            "SELECT MAX(id) FROM data WHERE ? <= id AND id <= ?",
            vec![v(first), v(last)],
        )?;
        Ok(aggregate(row, "data id")?)
    }

    fn put_data(
        &mut self,
        id: DataId,
        checksum: Checksum,
        compression: u8,
        data: &[u8],
    ) -> Result<()> {
        if compression & BIG != 0 {
            return Err(RequestError::OutOfRange {
                what: "compression",
                value: u64::from(compression),
            }
            .into());
        }
        let (compression, value) = if data.len() >= BIG_THRESHOLD {
            let big = self.put_big(data)?;
            (compression | BIG, v(&big.encode()[..]))
        } else {
            (compression, v(data))
        };
        self.write(
            "storing object data",
            "INSERT INTO data VALUES (?, ?, ?, ?)",
            vec![v(id), v(&checksum.0[..]), v(compression), value],
        )?;
        Ok(())
    }

    fn load_data(&mut self, id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>> {
        let row = self.row(
            "loading data",
            "SELECT compression, hash, value FROM data WHERE id = ?",
            vec![v(id)],
        )?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        let data = codec::data(&mut row, 0, id)?;
        Ok(Some(self.value_of(data)?))
    }

    fn prune_data(&mut self, ids: &[DataId]) -> Result<()> {
        Ok(self.delete_unreferenced(ids)?)
    }

    fn put_pack_order(&mut self, order: &PackOrder) -> Result<()> {
        self.write(
            "storing a pack order",
            "REPLACE INTO pack VALUES (?, ?, ?, ?, ?)",
            vec![
                v(order.id.0),
                v(order.approved),
                v(order.partial),
                v(order.oids.as_deref().map(rows::oid_list)),
                v(order.pack_tid.0),
            ],
        )?;
        Ok(())
    }

    fn sign_pack_order(&mut self, id: Tid, approved: bool) -> Result<bool> {
        let matched = self.write(
            "signing pack orders",
            "UPDATE pack SET approved = ? WHERE tid = ?",
            vec![v(approved), v(id.0)],
        )?;
        Ok(matched > 0)
    }

    fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>> {
        let rows = self.rows(
            "reading pack orders",
            "SELECT tid, approved, partial, oids, pack_tid FROM pack WHERE tid >= ? ORDER BY tid",
            vec![v(min_id.0)],
        )?;
        Ok(decode_all(rows, codec::pack_order)?)
    }

    fn rekey_pack_order(&mut self, from: Tid, to: Tid) -> Result<()> {
        const CONTEXT: &str = "giving a pack order its final id";
        if from == to {
            return Ok(());
        }
        self.write(CONTEXT, "DELETE FROM pack WHERE tid = ?", vec![v(to.0)])?;
        self.write(
            CONTEXT,
            "UPDATE pack SET tid = ? WHERE tid = ?",
            vec![v(to.0), v(from.0)],
        )?;
        Ok(())
    }

    fn delete_pack_order(&mut self, id: Tid) -> Result<()> {
        self.write(
            "deleting a pack order",
            "DELETE FROM pack WHERE tid = ?",
            vec![v(id.0)],
        )?;
        Ok(())
    }

    fn delete_pack_orders_after(&mut self, tid: Tid) -> Result<()> {
        self.write(
            "deleting pack orders",
            "DELETE FROM pack WHERE tid > ?",
            vec![v(tid.0)],
        )?;
        Ok(())
    }

    fn last_approved_pack_id(&mut self) -> Result<Option<Tid>> {
        let row = self.row(
            "reading the last approved pack order",
            "SELECT MAX(tid) FROM pack WHERE approved",
            Vec::new(),
        )?;
        Ok(aggregate(row, "pack id")?.map(Tid))
    }

    fn pack_order(&mut self, id: Tid) -> Result<Option<PackOrder>> {
        let row = self.row(
            "reading a pack order",
            "SELECT tid, approved, partial, oids, pack_tid FROM pack WHERE tid = ?",
            vec![v(id.0)],
        )?;
        Ok(row.map(|mut row| codec::pack_order(&mut row)).transpose()?)
    }

    fn object_serials(
        &mut self,
        partition: Partition,
        min_tid: Tid,
        min_oid: Oid,
        max_tid: Tid,
        length: u64,
    ) -> Result<Vec<(Tid, Oid)>> {
        // `(tid, oid) >= (?, ?)` spelt out: a range scan of the
        // (partition, tid, oid) index on every server version.
        let rows = self.rows(
            "listing object records",
            "SELECT tid, oid FROM obj FORCE INDEX (tid)
             WHERE `partition` = ? AND tid >= ? AND tid <= ? AND (tid > ? OR oid >= ?)
             ORDER BY tid, oid LIMIT ?",
            vec![
                v(partition),
                v(min_tid.0),
                v(max_tid.0),
                v(min_tid.0),
                v(min_oid.0),
                v(length),
            ],
        )?;
        Ok(decode_all(rows, |row| {
            Ok((codec::tid(row, 0, "serial")?, codec::oid(row, 1)?))
        })?)
    }

    fn delete_transaction(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        self.write(
            "deleting a transaction",
            "DELETE FROM trans WHERE `partition` = ? AND tid = ?",
            vec![v(partition), v(tid.0)],
        )?;
        Ok(())
    }

    fn delete_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        serial: Tid,
    ) -> Result<Option<DataId>> {
        const CONTEXT: &str = "deleting an object record";
        let key = vec![v(partition), v(oid.0), v(serial.0)];
        let row = self.row(
            CONTEXT,
            "SELECT data_id FROM obj WHERE `partition` = ? AND oid = ? AND tid = ?",
            key.clone(),
        )?;
        let data_id = match row {
            Some(mut row) => column::<Option<DataId>>(&mut row, 0, "data id")?,
            None => None,
        };
        self.write(
            CONTEXT,
            "DELETE FROM obj WHERE `partition` = ? AND oid = ? AND tid = ?",
            key,
        )?;
        Ok(data_id)
    }

    fn delete_partition_objects(
        &mut self,
        partition: Partition,
        limit: u64,
    ) -> Result<(u64, Vec<DataId>)> {
        const CONTEXT: &str = "deleting the records of a dropped partition";
        // MySQL takes no LIMIT in an IN subquery, but does in a derived
        // table and in a single-table DELETE.
        let rows = self.rows(
            CONTEXT,
            "SELECT DISTINCT data_id FROM
               (SELECT data_id FROM obj FORCE INDEX (tid) WHERE `partition` = ?
                ORDER BY tid, oid LIMIT ?) AS first
             WHERE data_id IS NOT NULL",
            vec![v(partition), v(limit)],
        )?;
        let ids = decode_all(rows, |row| column(row, 0, "data id"))?;
        let deleted = self.write(
            CONTEXT,
            "DELETE FROM obj WHERE `partition` = ? ORDER BY tid, oid LIMIT ?",
            vec![v(partition), v(limit)],
        )?;
        Ok((deleted, ids))
    }

    fn delete_partition_transactions(&mut self, partition: Partition, limit: u64) -> Result<u64> {
        const CONTEXT: &str = "deleting the transactions of a dropped partition";
        // The pack orders first: they are found through their transaction.
        self.write(
            CONTEXT,
            "DELETE FROM pack WHERE tid IN
               (SELECT tid FROM
                  (SELECT tid FROM trans WHERE `partition` = ? ORDER BY tid LIMIT ?) AS first)",
            vec![v(partition), v(limit)],
        )?;
        Ok(self.write(
            CONTEXT,
            "DELETE FROM trans WHERE `partition` = ? ORDER BY tid LIMIT ?",
            vec![v(partition), v(limit)],
        )?)
    }
}
