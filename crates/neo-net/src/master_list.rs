//! The masters a node knows, and NEO's "dynamic master list" file
//! (operations.md §2.3): a JSON array of `[host, port]` pairs, read at
//! start and rewritten (to `«path»#neo#`, then renamed) whenever a master
//! is learnt, so the next start finds the cluster even if the configured
//! masters are gone. Used by the client, which keeps it current, and by
//! the daemons' `-D`, read and completed at start.

use std::path::{Path, PathBuf};

use neo_proto::{Address, MAX_MASTERS};

/// Largest dynamic master list file read: `MAX_MASTERS` entries are a few
/// kilobytes.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// The masters known, and where to keep them.
#[derive(Debug)]
pub struct MasterList {
    known: Vec<Address>,
    file: Option<PathBuf>,
}

impl MasterList {
    /// The configured masters, then those of the file (if any; a missing
    /// file is created, an unreadable one is reported and left alone).
    pub fn new(configured: &[Address], file: Option<PathBuf>) -> MasterList {
        let mut list = MasterList {
            known: Vec::new(),
            file: None,
        };
        for address in configured {
            list.add(address);
        }
        if let Some(path) = file {
            match read(&path) {
                Ok(Some(addresses)) => {
                    for address in &addresses {
                        list.add(address);
                    }
                    list.file = Some(path);
                    if list.known != addresses {
                        // Completed with the configured masters.
                        list.save();
                    }
                }
                Ok(None) => {
                    list.file = Some(path);
                    list.save();
                }
                Err(error) => tracing::warn!("dynamic master list not used: {error}"),
            }
        }
        list
    }

    fn add(&mut self, address: &Address) -> bool {
        if self.known.len() >= MAX_MASTERS || self.known.contains(address) {
            return false;
        }
        self.known.push(address.clone());
        true
    }

    /// Learns masters; the file is rewritten if one was new.
    pub fn learn<'a>(&mut self, addresses: impl IntoIterator<Item = &'a Address>) {
        let mut new = false;
        for address in addresses {
            new |= self.add(address);
        }
        if new {
            self.save();
        }
    }

    /// Every master known.
    pub fn known(&self) -> &[Address] {
        &self.known
    }

    fn save(&self) {
        if let Some(path) = &self.file {
            if let Err(error) = write(path, &self.known) {
                tracing::warn!(
                    "cannot update the dynamic master list {}: {error}",
                    path.display()
                );
            }
        }
    }
}

/// The masters of a dynamic master list file; `None` if it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<Address>>, String> {
    let text = match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
        Ok(meta) if meta.len() > MAX_FILE_SIZE => {
            return Err(format!(
                "{}: larger than {MAX_FILE_SIZE} bytes",
                path.display()
            ))
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    };
    let pairs: Vec<(String, u16)> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a JSON list of [host, port] pairs: {e}",
            path.display()
        )
    })?;
    Ok(Some(
        pairs
            .into_iter()
            .take(MAX_MASTERS)
            .map(|(host, port)| Address::new(host, port))
            .collect(),
    ))
}

/// Writes `masters` to `path`, atomically (NEO/py's temporary name, then
/// a rename).
pub fn write(path: &Path, masters: &[Address]) -> std::io::Result<()> {
    let pairs: Vec<(&str, u16)> = masters.iter().map(|a| (a.host.as_str(), a.port)).collect();
    let text = serde_json::to_string(&pairs).map_err(std::io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push("#neo#");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_created_read_and_kept_current() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("masters.json");
        let configured = Address::new("127.0.0.1", 10000);
        let mut list = MasterList::new(std::slice::from_ref(&configured), Some(path.clone()));
        assert_eq!(read(&path).unwrap(), Some(vec![configured.clone()]));
        let learnt = Address::new("::1", 10001);
        list.learn([&learnt, &configured]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"[["127.0.0.1",10000],["::1",10001]]"#
        );
        // The next start knows the learnt master without configuration.
        let next = MasterList::new(&[], Some(path));
        assert_eq!(next.known(), [configured, learnt]);
    }

    #[test]
    fn a_bad_file_is_reported_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("masters.json");
        std::fs::write(&path, "not json").unwrap();
        let error = read(&path).unwrap_err();
        assert!(error.contains("not a JSON list"), "{error}");
        let mut list = MasterList::new(&[Address::new("127.0.0.1", 1)], Some(path.clone()));
        list.learn([&Address::new("127.0.0.1", 2)]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not json");
    }
}
