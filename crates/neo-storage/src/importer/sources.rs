//! The source databases of an import and the one oid space they are merged
//! into (architecture.md §12.7 step 1).
//!
//! The main source keeps its oids. Each database mounted in it is placed
//! after the oids of the databases placed before it (depth first from the
//! main source, in the file's order), and every reference to a mount point
//! leads to the root of the mounted database instead. The placement is
//! computed once, saved in the destination's `config` (key
//! [`STATE_KEY`]), and read back on every later start: the file's mount
//! points can not change it any more.

use std::collections::HashMap;
use std::sync::Arc;

use neo_filestorage::FileStorage;
use neo_pickle::{rewrite_references, NewReference};

use super::conf::{ImporterConf, SourceConf};
use super::ImportError;

/// `config` key of the saved placement.
pub(crate) const STATE_KEY: &str = "importer";
/// `config` key of the sources' last tid when the import started: what
/// is written back to them later is not imported again.
pub(crate) const LAST_TID_KEY: &str = "import_last_tid";
/// NEO/py's key for its own (pickled) placement: a database it started
/// importing can not be resumed here.
pub(crate) const NEO_PY_STATE_KEY: &str = "zodb";

/// One source database and where its oids go.
#[derive(Clone)]
pub(crate) struct Source {
    /// Its section's name.
    pub(crate) name: String,
    pub(crate) file: FileStorage,
    /// Added to its oids.
    pub(crate) shift: u64,
    /// One more than its greatest oid when the placement was made.
    pub(crate) next_oid: u64,
    /// Oids of its mount points → the oid, merged, of the mounted root.
    pub(crate) mount_points: Arc<HashMap<u64, u64>>,
}

impl Source {
    /// The merged oid of its own object `oid`. A mount point keeps its
    /// place (an object nothing leads to any more): only references to it
    /// are moved, by [`Source::repickle`].
    pub(crate) fn merged_oid(&self, oid: u64) -> u64 {
        oid + self.shift
    }

    /// A record of this database with its references moved to the merged
    /// oids. The main database without mount points needs nothing.
    pub(crate) fn repickle(&self, oid: u64, data: Vec<u8>) -> Result<Vec<u8>, ImportError> {
        if self.shift == 0 && self.mount_points.is_empty() {
            return Ok(data);
        }
        let map = |reference: u64| match self.mount_points.get(&reference) {
            // A mount point's class is not the mounted object's.
            Some(&mounted) => NewReference::OidWithoutClass(mounted),
            None if self.shift == 0 => NewReference::Keep,
            None => NewReference::Oid(reference + self.shift),
        };
        rewrite_references(&data, map).ok_or_else(|| ImportError::Repickle {
            source_name: self.name.clone(),
            oid,
        })
    }
}

/// All the sources, by increasing shift.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) list: Vec<Source>,
    /// Greatest last tid of the sources (`zodb_ltid`).
    pub(crate) last_tid: u64,
    /// Greatest merged oid (`zodb_loid`).
    pub(crate) last_oid: u64,
}

impl Sources {
    /// Opens the sources of `conf`, placed as `saved` says (a state this
    /// function returned before, with the last tid then), or placed anew
    /// (and then the state to save is returned).
    pub(crate) fn open(
        conf: &ImporterConf,
        saved: Option<&str>,
        saved_last_tid: Option<u64>,
    ) -> Result<(Sources, Option<String>), ImportError> {
        let files = conf
            .sources
            .iter()
            .map(|source| {
                let file = FileStorage::open(&source.path)?;
                file.check_complete()?;
                if file.last_tid().is_none() {
                    return Err(ImportError::Empty {
                        path: source.path.clone(),
                    });
                }
                Ok(file)
            })
            .collect::<Result<Vec<_>, ImportError>>()?;
        let (mut list, state) = match saved {
            Some(state) => {
                tracing::warn!(
                    "Ignoring configuration file for oid mapping. Reloading it from NEO storage."
                );
                (restore(state, &conf.sources, &files)?, None)
            }
            None => {
                let list = place(&conf.sources, &files)?;
                let state = save(&list);
                (list, Some(state))
            }
        };
        list.sort_by_key(|source| source.shift);
        let last_tid = saved_last_tid.unwrap_or_else(|| {
            list.iter()
                .filter_map(|source| source.file.last_tid())
                .max()
                .unwrap_or(0)
        });
        let last_oid = list.last().map_or(0, |source| {
            (source.shift + source.next_oid).saturating_sub(1)
        });
        Ok((
            Sources {
                list,
                last_tid,
                last_oid,
            },
            state,
        ))
    }

    /// The source a merged oid comes from, and its oid there.
    pub(crate) fn of_oid(&self, oid: u64) -> (&Source, u64) {
        let index = self
            .list
            .partition_point(|source| source.shift <= oid)
            .saturating_sub(1);
        let source = &self.list[index.min(self.list.len() - 1)];
        (source, oid - source.shift.min(oid))
    }

    /// Smallest first tid of the sources.
    pub(crate) fn first_tid(&self) -> Option<u64> {
        self.list
            .iter()
            .filter_map(|source| source.file.first_tid())
            .min()
    }

    /// Bytes of all the sources.
    pub(crate) fn size(&self) -> u64 {
        self.list.iter().map(|source| source.file.size()).sum()
    }
}

/// The placement of a first start (NEO/py's `ZODB.setup`).
fn place(confs: &[SourceConf], files: &[FileStorage]) -> Result<Vec<Source>, ImportError> {
    let mut placed: Vec<Option<Source>> = vec![None; confs.len()];
    let main = confs
        .iter()
        .position(|source| source.oid == 0)
        .ok_or_else(|| ImportError::Mapping("no main source".into()))?;
    place_one(main, 0, confs, files, &mut placed)?;
    placed
        .into_iter()
        .zip(confs)
        .map(|(source, conf)| {
            source.ok_or_else(|| {
                ImportError::Mapping(format!(
                    "[{}] is mounted nowhere: its objects would be unreachable",
                    conf.name
                ))
            })
        })
        .collect()
}

/// Places source `index` at `shift`, then what it mounts after it; returns
/// the next free shift.
fn place_one(
    index: usize,
    shift: u64,
    confs: &[SourceConf],
    files: &[FileStorage],
    placed: &mut Vec<Option<Source>>,
) -> Result<u64, ImportError> {
    let conf = &confs[index];
    let next_oid = files[index].last_oid().map_or(0, |oid| oid + 1);
    // Reserved before its mounted databases are placed.
    placed[index] = Some(Source {
        name: conf.name.clone(),
        file: files[index].clone(),
        shift,
        next_oid,
        mount_points: Arc::new(HashMap::new()),
    });
    let mut next_shift = shift
        .checked_add(next_oid)
        .ok_or_else(|| ImportError::Mapping("the merged oids overflow".into()))?;
    let mut mount_points = HashMap::new();
    for (name, oid) in &conf.mount_points {
        let mounted = confs
            .iter()
            .position(|source| &source.name == name)
            .ok_or_else(|| ImportError::Mapping(format!("[{name}] is not a section")))?;
        let mounted_shift = match &placed[mounted] {
            Some(source) => source.shift,
            None => {
                let at = next_shift;
                next_shift = place_one(mounted, at, confs, files, placed)?;
                at
            }
        };
        mount_points.insert(*oid, confs[mounted].oid + mounted_shift);
    }
    if let Some(source) = placed[index].as_mut() {
        source.mount_points = Arc::new(mount_points);
    }
    Ok(next_shift)
}

/// The saved placement: one line per source, `name<TAB>shift<TAB>next
/// oid<TAB>mount point=merged oid,…`.
fn save(list: &[Source]) -> String {
    list.iter()
        .map(|source| {
            let mut mount_points: Vec<_> = source.mount_points.iter().collect();
            mount_points.sort();
            let mount_points: Vec<String> = mount_points
                .into_iter()
                .map(|(oid, merged)| format!("{oid}={merged}"))
                .collect();
            format!(
                "{}\t{}\t{}\t{}",
                source.name,
                source.shift,
                source.next_oid,
                mount_points.join(",")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The placement saved by [`save`], on the files of the sections of the
/// same names.
fn restore(
    state: &str,
    confs: &[SourceConf],
    files: &[FileStorage],
) -> Result<Vec<Source>, ImportError> {
    let bad = || ImportError::Mapping(format!("the saved oid mapping is unreadable: {state:?}"));
    let mut list = Vec::new();
    for line in state.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, shift, next_oid, mount_points] = fields[..] else {
            return Err(bad());
        };
        let index = confs
            .iter()
            .position(|source| source.name == name)
            .ok_or_else(|| {
                ImportError::Mapping(format!(
                    "the import started with a source [{name}] that the file does not have any more"
                ))
            })?;
        let mut map = HashMap::new();
        for pair in mount_points.split(',').filter(|pair| !pair.is_empty()) {
            let (oid, merged) = pair.split_once('=').ok_or_else(bad)?;
            map.insert(
                oid.parse().map_err(|_| bad())?,
                merged.parse().map_err(|_| bad())?,
            );
        }
        list.push(Source {
            name: name.to_owned(),
            file: files[index].clone(),
            shift: shift.parse().map_err(|_| bad())?,
            next_oid: next_oid.parse().map_err(|_| bad())?,
            mount_points: Arc::new(map),
        });
    }
    if list.len() != confs.len() {
        return Err(ImportError::Mapping(format!(
            "the import started with {} sources and the file has {}",
            list.len(),
            confs.len()
        )));
    }
    Ok(list)
}
