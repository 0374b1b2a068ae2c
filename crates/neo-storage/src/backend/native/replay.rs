//! Reading a log at open: every batch checked and its records applied, in
//! order; the end a crash can leave told apart from damage.
//!
//! A commit is one append then an fsync, so a crash can only leave the
//! batch it was appending incomplete or torn, at the end of the log,
//! followed by nothing but zeros (the room commits make ahead, see
//! `mod.rs`): a last batch cut short, or whose checksum fails and after
//! which there are only zeros, or a damaged header after which no whole
//! batch follows, is that end. It is cut off (with a warning). Zeros
//! alone after the last batch are room, kept. Anything else that does
//! not check is damage: an error naming the file and the byte offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{
    self, Decoder, FileHeader, BATCH_HEADER_LEN, FILE_HEADER_LEN, MAX_BATCH_BYTES, VERSION,
};
use super::tables::Tables;
use crate::backend::{FatalError, OpenError};

/// Whether reading may change the file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The engine's open: the header of a new file is written, the end a
    /// crash left is cut off.
    Repair,
    /// A look at a log another process may be writing: nothing changes.
    ReadOnly,
}

/// The tables a log holds, where its last whole batch ends, and the
/// file's length (zeros from `end` to there).
pub(super) struct Replayed {
    pub(super) tables: Tables,
    pub(super) end: u64,
    pub(super) length: u64,
}

/// Reads the log `file`, named `path` in errors.
pub(super) fn replay(file: &File, path: &Path, mode: Mode) -> Result<Replayed, OpenError> {
    let log = Log { file, path };
    let length = file
        .metadata()
        .map_err(|error| log.io("reading the log's size", error))?
        .len();
    if length < FILE_HEADER_LEN {
        return log.new_file(length, mode);
    }
    let mut header = [0; FILE_HEADER_LEN as usize];
    log.read(&mut header, 0)?;
    match format::parse_file_header(&header) {
        FileHeader::Bad => {
            return Err(log.corrupted(0, "not a Native log (bad magic or header checksum)"))
        }
        FileHeader::Version(VERSION) => {}
        FileHeader::Version(found) => {
            return Err(OpenError::Unsuitable {
                database: path.display().to_string(),
                reason: format!(
                    "its format version is {found}; this program reads version {VERSION}"
                ),
            })
        }
    }
    let mut tables = Tables::default();
    let mut position = FILE_HEADER_LEN;
    let mut torn = false;
    while position < length {
        match log.batch(&mut tables, position, length)? {
            Step::Next(next) => position = next,
            Step::Room => break,
            Step::Torn => {
                torn = true;
                break;
            }
        }
    }
    let length = if torn && mode == Mode::Repair {
        log.cut(position, length)?;
        position
    } else {
        length
    };
    Ok(Replayed {
        tables,
        end: position,
        length,
    })
}

/// What follows a whole batch.
enum Step {
    /// Another batch, starting there.
    Next(u64),
    /// Zeros to the end of the file: room for commits.
    Room,
    /// The end a crash left: a batch cut short or torn.
    Torn,
}

struct Log<'a> {
    file: &'a File,
    path: &'a Path,
}

impl Log<'_> {
    fn io(&self, context: &'static str, source: std::io::Error) -> OpenError {
        OpenError::Io {
            context,
            database: self.path.display().to_string(),
            source,
        }
    }

    fn corrupted(&self, at: u64, what: impl std::fmt::Display) -> OpenError {
        OpenError::Failed {
            database: self.path.display().to_string(),
            source: FatalError::Corrupted(format!("{} at byte {at}: {what}", self.path.display())),
        }
    }

    fn read(&self, buffer: &mut [u8], at: u64) -> Result<(), OpenError> {
        self.file
            .read_exact_at(buffer, at)
            .map_err(|error| self.io("reading the log", error))
    }

    /// A file shorter than its header: new, or its creation was cut short
    /// by a crash (nothing was ever committed to it).
    fn new_file(&self, length: u64, mode: Mode) -> Result<Replayed, OpenError> {
        let header = format::file_header();
        let mut start = vec![0; length as usize];
        self.read(&mut start, 0)?;
        if !header.starts_with(&start) {
            return Err(self.corrupted(0, format!("not a Native log (a file of {length} bytes)")));
        }
        if mode == Mode::Repair {
            let io = |error| self.io("writing the header of a new log", error);
            self.file.set_len(0).map_err(io)?;
            self.file.write_all_at(&header, 0).map_err(io)?;
            self.file.sync_all().map_err(io)?;
            super::sync_directory(self.path).map_err(io)?;
        }
        Ok(Replayed {
            tables: Tables::default(),
            end: FILE_HEADER_LEN,
            length: FILE_HEADER_LEN,
        })
    }

    /// Checks and applies the batch at `position`: what follows it.
    fn batch(&self, tables: &mut Tables, position: u64, length: u64) -> Result<Step, OpenError> {
        if length - position < BATCH_HEADER_LEN as u64 {
            let room = self.zeros(position, length)?;
            return Ok(if room { Step::Room } else { Step::Torn });
        }
        let mut header = [0; BATCH_HEADER_LEN];
        self.read(&mut header, position)?;
        let Some((size, crc)) = format::parse_batch_header(&header) else {
            if self.zeros(position, length)? {
                return Ok(Step::Room);
            }
            return match self.find_batch(position + 1, length)? {
                Some(next) => Err(self.corrupted(
                    position,
                    format!("damaged batch header, with a whole batch after it at byte {next}"),
                )),
                None => Ok(Step::Torn),
            };
        };
        if size > MAX_BATCH_BYTES {
            return Err(self.corrupted(
                position,
                format!("a batch of {size} bytes, over the limit of {MAX_BATCH_BYTES}"),
            ));
        }
        let start = position + BATCH_HEADER_LEN as u64;
        if size > length - start {
            return Ok(Step::Torn);
        }
        // Bounded by the limit and by the file, checked above.
        let mut records = vec![0; size as usize];
        self.read(&mut records, start)?;
        if crc32fast::hash(&records) != crc {
            let after = length - start - size;
            if self.zeros(start + size, length)? {
                return Ok(Step::Torn);
            }
            return Err(self.corrupted(
                position,
                format!("batch checksum mismatch, with {after} bytes of log after it"),
            ));
        }
        let mut decoder = Decoder::new(&records);
        while !decoder.is_empty() {
            let at = start + decoder.position() as u64;
            let record = decoder
                .record()
                .map_err(|error| self.corrupted(at, error))?;
            tables.apply(&record, at);
        }
        Ok(Step::Next(start + size))
    }

    /// The first whole batch (header and records checked) at or after
    /// `from`: whether a damaged header was the end a crash left or damage
    /// in the middle of the log.
    fn find_batch(&self, from: u64, length: u64) -> Result<Option<u64>, OpenError> {
        const WINDOW: u64 = 1 << 20;
        let mut window_start = from;
        while length.saturating_sub(window_start) >= BATCH_HEADER_LEN as u64 {
            let size = WINDOW.min(length - window_start);
            let mut window = vec![0; size as usize];
            self.read(&mut window, window_start)?;
            for offset in 0..=window.len() - BATCH_HEADER_LEN {
                let mut header = [0; BATCH_HEADER_LEN];
                header.copy_from_slice(&window[offset..offset + BATCH_HEADER_LEN]);
                let at = window_start + offset as u64;
                let Some((size, crc)) = format::parse_batch_header(&header) else {
                    continue;
                };
                let start = at + BATCH_HEADER_LEN as u64;
                if size <= MAX_BATCH_BYTES
                    && size <= length - start
                    && self.crc(start, size)? == crc
                {
                    return Ok(Some(at));
                }
            }
            // The next window overlaps the headers this one could not hold.
            window_start += size - (BATCH_HEADER_LEN as u64 - 1);
        }
        Ok(None)
    }

    /// Whether the bytes from `from` to `to` are all zeros (none is).
    fn zeros(&self, from: u64, to: u64) -> Result<bool, OpenError> {
        let mut buffer = vec![0; (to - from).min(1 << 20) as usize];
        let mut position = from;
        while position < to {
            let piece = (to - position).min(buffer.len() as u64) as usize;
            self.read(&mut buffer[..piece], position)?;
            if buffer[..piece].iter().any(|&byte| byte != 0) {
                return Ok(false);
            }
            position += piece as u64;
        }
        Ok(true)
    }

    /// The checksum of `size` bytes at `start`, read in pieces.
    fn crc(&self, start: u64, size: u64) -> Result<u32, OpenError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut buffer = vec![0; size.min(1 << 20) as usize];
        let mut done = 0;
        while done < size {
            let piece = (size - done).min(buffer.len() as u64) as usize;
            self.read(&mut buffer[..piece], start + done)?;
            hasher.update(&buffer[..piece]);
            done += piece as u64;
        }
        Ok(hasher.finalize())
    }

    /// Cuts the end a crash left off the log.
    fn cut(&self, position: u64, length: u64) -> Result<(), OpenError> {
        tracing::warn!(
            "{}: cutting {} bytes off at byte {position}: the end of a commit that a crash \
             interrupted (never acknowledged), or bytes appended after the log",
            self.path.display(),
            length - position
        );
        let io = |error| self.io("cutting the end a crash left", error);
        self.file.set_len(position).map_err(io)?;
        self.file.sync_all().map_err(io)
    }
}
