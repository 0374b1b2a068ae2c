//! What load clients saw acknowledged, written as they go, and the check
//! of it against every storage's database once the cluster has stopped:
//! every acknowledged transaction is there with its exact data in every
//! replica, none half-applied, and no update of a shared counter was lost.
//!
//! A record file has one line per transaction:
//! `A <tid> <write>...` for an acknowledged one, `U <write>...` for one
//! whose outcome the client could not learn (it may or may not have
//! committed). A write is `p:<oid>:<seed>:<size>` (an object whose data
//! is [`payload`]`(seed, size)`) or `c:<oid>:<value>` (a counter set to
//! `value`, data [`counter_data`]`(value)`). Ids are 16 hex digits.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write as _};
use std::path::Path;

use flate2::read::ZlibDecoder;
use neo_proto::{Oid, Tid};
use neo_storage::backend::{open, Adapter, OpenOptions};
use neo_storage::db::{Database, ObjectLookup};

/// Deterministic, poorly compressible bytes.
pub fn payload(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u8
        })
        .collect()
}

/// The data of a counter at `value`.
pub fn counter_data(value: u64) -> Vec<u8> {
    format!("counter {value}").into_bytes()
}

/// The value a counter's data holds.
pub fn counter_value(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data)
        .ok()?
        .strip_prefix("counter ")?
        .parse()
        .ok()
}

/// One object a transaction wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// [`payload`]`(seed, size)`.
    Payload {
        /// The object.
        oid: Oid,
        /// Seed of its data.
        seed: u64,
        /// Size of its data.
        size: usize,
    },
    /// [`counter_data`]`(value)`.
    Counter {
        /// The object.
        oid: Oid,
        /// Its new value.
        value: u64,
    },
}

impl Write {
    /// The object written.
    pub fn oid(&self) -> Oid {
        match self {
            Write::Payload { oid, .. } | Write::Counter { oid, .. } => *oid,
        }
    }

    /// Its data.
    pub fn data(&self) -> Vec<u8> {
        match self {
            Write::Payload { seed, size, .. } => payload(*seed, *size),
            Write::Counter { value, .. } => counter_data(*value),
        }
    }
}

/// One transaction of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its TID if it was acknowledged; `None` if its outcome is unknown.
    pub tid: Option<Tid>,
    /// What it wrote.
    pub writes: Vec<Write>,
}

fn format_entry(entry: &Entry) -> String {
    let mut line = match entry.tid {
        Some(tid) => format!("A {:016x}", tid.0),
        None => "U".to_owned(),
    };
    for write in &entry.writes {
        line += &match write {
            Write::Payload { oid, seed, size } => format!(" p:{:016x}:{seed}:{size}", oid.0),
            Write::Counter { oid, value } => format!(" c:{:016x}:{value}", oid.0),
        };
    }
    line
}

fn parse_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text, 16).map_err(|_| format!("bad id {text:?}"))
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let mut words = line.split_whitespace();
    let tid = match words.next() {
        Some("A") => Some(Tid(parse_id(words.next().ok_or("no tid")?)?)),
        Some("U") => None,
        other => return Err(format!("bad entry kind {other:?}")),
    };
    let writes = words
        .map(|word| {
            let fields: Vec<&str> = word.split(':').collect();
            let number = |index: usize| -> Result<u64, String> {
                fields
                    .get(index)
                    .and_then(|field| field.parse().ok())
                    .ok_or_else(|| format!("bad write {word:?}"))
            };
            match fields.first() {
                Some(&"p") if fields.len() == 4 => Ok(Write::Payload {
                    oid: Oid(parse_id(fields[1])?),
                    seed: number(2)?,
                    size: usize::try_from(number(3)?).map_err(|e| e.to_string())?,
                }),
                Some(&"c") if fields.len() == 3 => Ok(Write::Counter {
                    oid: Oid(parse_id(fields[1])?),
                    value: number(2)?,
                }),
                _ => Err(format!("bad write {word:?}")),
            }
        })
        .collect::<Result<Vec<Write>, String>>()?;
    Ok(Entry { tid, writes })
}

/// Appends entries to a record file, each flushed as soon as written (the
/// file is read after the client process ended, killed or not).
pub struct Recorder {
    file: BufWriter<File>,
}

impl Recorder {
    /// Creates (or truncates) the record at `path`.
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        Ok(Recorder {
            file: BufWriter::new(File::create(path)?),
        })
    }

    /// Records one transaction.
    pub fn record(&mut self, entry: &Entry) -> std::io::Result<()> {
        writeln!(self.file, "{}", format_entry(entry))?;
        self.file.flush()
    }
}

/// Reads a record file.
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(number, line)| {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            parse_entry(&line).map_err(|e| format!("{}:{}: {e}", path.display(), number + 1))
        })
        .collect()
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Acknowledged transactions checked.
    pub acknowledged: usize,
    /// Object revisions compared, over every replica.
    pub replicas_compared: usize,
    /// Counter increments found in the databases.
    pub increments: u64,
}

/// Opens a stopped storage's SQLite database.
fn open_database(path: &Path) -> Result<Database, String> {
    let name = path.display().to_string();
    let backend = open(Adapter::Sqlite, &name, &OpenOptions::default())
        .map_err(|e| format!("{name}: {e}"))?;
    Database::new(backend).map_err(|e| format!("{name}: {e}"))
}

/// The data of `oid` at `serial` in `db`, decompressed.
fn data_at(db: &mut Database, oid: Oid, serial: Tid) -> Result<Option<Vec<u8>>, String> {
    let record = match db
        .get_object(oid, Some(serial), None)
        .map_err(|e| format!("{oid} at {serial}: {e}"))?
    {
        ObjectLookup::Found(record) => record,
        _ => return Ok(None),
    };
    match record.compression {
        Some(1) => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut ZlibDecoder::new(&record.data[..]), &mut data)
                .map_err(|e| format!("{oid} at {serial}: bad zlib data: {e}"))?;
            Ok(Some(data))
        }
        _ => Ok(Some(record.data)),
    }
}

/// Checks the records of every load client against the databases of every
/// storage (the cluster stopped cleanly, so their files are closed):
///
/// - every acknowledged transaction is in every storage that holds a
///   readable cell of its partition, and each of its objects with exactly
///   the data written in every storage holding the object's partition;
/// - every counter's revisions go up by one from 0 (no update lost, none
///   applied twice), and every acknowledged increment is one of them.
pub fn verify(records: &[Entry], databases: &[&Path]) -> Result<Report, String> {
    let mut dbs: Vec<(String, Database)> = databases
        .iter()
        .map(|path| Ok((path.display().to_string(), open_database(path)?)))
        .collect::<Result<_, String>>()?;
    let mut report = Report::default();
    let mut counters: BTreeMap<Oid, Vec<(Tid, u64)>> = BTreeMap::new();
    for entry in records {
        let Some(tid) = entry.tid else { continue };
        report.acknowledged += 1;
        let mut found_metadata = false;
        for (name, db) in &mut dbs {
            let partition = match db.partition_table() {
                Some(pt) => pt.partition_of_tid(tid),
                None => continue,
            };
            if !db.is_readable(partition) {
                continue;
            }
            let meta = db
                .get_transaction(tid, false)
                .map_err(|e| format!("{name}: transaction {tid}: {e}"))?;
            let meta = meta.ok_or_else(|| format!("{name}: acknowledged {tid} is missing"))?;
            for write in &entry.writes {
                if !meta.oids.contains(&write.oid()) {
                    return Err(format!(
                        "{name}: {tid} lacks {} in its oid list",
                        write.oid()
                    ));
                }
            }
            found_metadata = true;
        }
        if !found_metadata {
            return Err(format!("acknowledged {tid} is in no storage"));
        }
        for write in &entry.writes {
            let oid = write.oid();
            let expected = write.data();
            let mut replicas = 0;
            for (name, db) in &mut dbs {
                if !db.is_oid_readable(oid) {
                    continue;
                }
                match data_at(db, oid, tid)? {
                    Some(data) if data == expected => replicas += 1,
                    Some(_) => return Err(format!("{name}: {oid} at {tid} has other data")),
                    None => return Err(format!("{name}: {oid} at {tid} is missing")),
                }
            }
            if replicas == 0 {
                return Err(format!("{oid} at {tid} is in no storage"));
            }
            report.replicas_compared += replicas;
            if let Write::Counter { oid, value } = write {
                counters.entry(*oid).or_default().push((tid, *value));
            }
        }
    }
    for (oid, acknowledged) in counters {
        report.increments += check_counter(&mut dbs, oid, &acknowledged)?;
    }
    Ok(report)
}

/// Every revision of counter `oid` in the first storage holding it goes up
/// by one from 1; returns how many there are.
fn check_counter(
    dbs: &mut [(String, Database)],
    oid: Oid,
    acknowledged: &[(Tid, u64)],
) -> Result<u64, String> {
    let Some((name, db)) = dbs.iter_mut().find(|(_, db)| db.is_oid_readable(oid)) else {
        return Err(format!("counter {oid} is in no storage"));
    };
    let history = db
        .object_history(oid, 0, u64::MAX)
        .map_err(|e| format!("{name}: history of {oid}: {e}"))?;
    // Newest first: go oldest first.
    let mut values = BTreeMap::new();
    for (index, entry) in history.iter().rev().enumerate() {
        let data = data_at(db, oid, entry.serial)?
            .ok_or_else(|| format!("{name}: {oid} at {} vanished", entry.serial))?;
        let value = counter_value(&data)
            .ok_or_else(|| format!("{name}: {oid} at {} is not a counter", entry.serial))?;
        if value != index as u64 {
            return Err(format!(
                "{name}: counter {oid} revision {} holds {value}, expected {}: an update \
                 was lost or applied twice",
                entry.serial, index
            ));
        }
        values.insert(entry.serial, value);
    }
    for (tid, value) in acknowledged {
        if values.get(tid) != Some(value) {
            return Err(format!(
                "{name}: acknowledged increment of {oid} to {value} at {tid} is not in its history"
            ));
        }
    }
    Ok(history.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_line() {
        let entry = Entry {
            tid: Some(Tid(0x0400_0000_0000_0001)),
            writes: vec![
                Write::Payload {
                    oid: Oid(5),
                    seed: 7,
                    size: 100,
                },
                Write::Counter {
                    oid: Oid(1),
                    value: 3,
                },
            ],
        };
        assert_eq!(parse_entry(&format_entry(&entry)), Ok(entry));
        let unknown = Entry {
            tid: None,
            writes: vec![],
        };
        assert_eq!(parse_entry(&format_entry(&unknown)), Ok(unknown));
        assert!(parse_entry("X 1").is_err());
        assert!(parse_entry("A 1 q:1:2").is_err());
        assert_eq!(counter_value(&counter_data(42)), Some(42));
    }
}
