//! An SQLite VFS for the storage's SQLite engine: the default VFS of the
//! platform, except that the frames SQLite appends to a write-ahead log
//! are gathered and written with one system call when the log is synced.
//!
//! Why: SQLite writes each WAL frame as two `pwrite`s (its 24-byte header,
//! then the page). On NEO/py's schema a 10-object commit dirties about 56
//! pages, so a commit cost the storage 113 `pwrite`s, a fifth of its CPU
//! (architecture.md §12.2 makes each commit wait for them). Here they are
//! one write of the same bytes at the same offsets.
//!
//! Why it is safe: only files SQLite opens as a WAL are wrapped; writes
//! that extend the pending run are kept in memory, and anything else on
//! the file (a write elsewhere, a read, a sync, a truncation, its size, a
//! file control, closing it) first writes the run out, in order. So every
//! operation sees the file as if each write had gone through, except that
//! written bytes may still be in our memory instead of the kernel's until
//! the next sync: as with the page cache, only a sync makes them durable.
//! SQLite never counts on unsynced WAL frames when it syncs at each commit
//! (`synchronous = FULL`, which the storage always sets): a commit's
//! frames are written, then synced, and only then published in the
//! WAL-index for readers. With `synchronous = NORMAL` a commit would be
//! published unsynced and a crash of the process (not only a power loss)
//! could lose it: [`register`]'s callers must sync at every commit.
//!
//! The database file, journals and everything else go straight to the
//! platform's VFS.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::mem::size_of;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open connections with (`Connection::open_with_flags_and_vfs`).
pub const VFS_NAME: &str = "neo-wal-batch";

/// Largest run of frames written at once: the platform's VFS takes at most
/// 128 KiB − 1 bytes per write (it masks larger sizes: SQLite itself never
/// writes more than a page and a frame header at a time). A commit of 56
/// frames of 4 KiB is two writes.
const MAX_RUN: usize = 0x1ffff;

/// The platform's VFS, which does the work.
static PLATFORM: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Writes asked of WAL files, and writes made to them: the difference is
/// what this VFS saved (for tests and measurements).
static WAL_WRITES_ASKED: AtomicU64 = AtomicU64::new(0);
static WAL_WRITES_MADE: AtomicU64 = AtomicU64::new(0);

/// `(writes SQLite asked of WAL files, writes made)` since the process
/// started, over every connection of this VFS.
pub fn wal_writes() -> (u64, u64) {
    (
        WAL_WRITES_ASKED.load(Ordering::Relaxed),
        WAL_WRITES_MADE.load(Ordering::Relaxed),
    )
}

/// Registers the VFS (once per process; later calls return the first
/// outcome) and returns its name.
pub fn register() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(register_once)
        .clone()
        .map(|()| VFS_NAME)
}

fn register_once() -> Result<(), String> {
    // SAFETY: sqlite3_initialize may be called any number of times, from
    // any thread; sqlite3_vfs_find(NULL) returns the default VFS, which
    // lives as long as the process.
    let platform = unsafe {
        let rc = ffi::sqlite3_initialize();
        if rc != ffi::SQLITE_OK {
            return Err(format!("SQLite did not initialise (code {rc})"));
        }
        ffi::sqlite3_vfs_find(ptr::null())
    };
    if platform.is_null() {
        return Err("SQLite has no default VFS".to_owned());
    }
    PLATFORM.store(platform, Ordering::Release);
    let name = CString::new(VFS_NAME).map_err(|e| e.to_string())?;
    // SAFETY: `platform` is a valid VFS (above). The copy keeps its
    // functions and its pAppData, which the platform's functions read from
    // the VFS they are given, so they behave the same when SQLite hands
    // them ours; only the name, the size of a file and xOpen differ. The
    // struct and the name are leaked: SQLite keeps pointers to them for
    // the life of the process.
    unsafe {
        let mut vfs = ptr::read(platform);
        vfs.pNext = ptr::null_mut();
        vfs.zName = name.into_raw() as *const c_char;
        vfs.szOsFile = c_int::try_from(REAL_OFFSET)
            .ok()
            .and_then(|offset| offset.checked_add((*platform).szOsFile))
            .ok_or("the platform's file structure is too large")?;
        vfs.xOpen = Some(open);
        let vfs = Box::into_raw(Box::new(vfs));
        let rc = ffi::sqlite3_vfs_register(vfs, 0);
        if rc != ffi::SQLITE_OK {
            return Err(format!("SQLite refused the VFS (code {rc})"));
        }
    }
    Ok(())
}

/// A WAL file: our methods first (SQLite sees this as its
/// `sqlite3_file`), the run being gathered, and the platform's file,
/// which lives at [`REAL_OFFSET`] in the same allocation.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Bytes written but not yet passed on, starting at `start`.
    run: Vec<u8>,
    start: i64,
}

/// Where the platform's file starts in a [`WalFile`]'s allocation
/// (aligned for any of its fields).
const REAL_OFFSET: usize = size_of::<WalFile>().next_multiple_of(16);

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// xOpen: a WAL file is wrapped, any other file is the platform's own,
/// opened in place (our file size is larger than the platform's).
unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let platform = PLATFORM.load(Ordering::Acquire);
    // SAFETY: `register` stored the platform VFS before registering ours,
    // so SQLite cannot call this before it is set.
    let Some(platform_open) = (unsafe { (*platform).xOpen }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // SAFETY: `file` has room for szOsFile bytes, more than the
        // platform's file needs.
        return unsafe { platform_open(platform, name, file, flags, out_flags) };
    }
    // SAFETY: the allocation is REAL_OFFSET + the platform's szOsFile
    // bytes, aligned by SQLite for any file structure; the platform's file
    // goes at REAL_OFFSET, a multiple of 16.
    unsafe {
        let real = file
            .cast::<u8>()
            .add(REAL_OFFSET)
            .cast::<ffi::sqlite3_file>();
        (*real).pMethods = ptr::null();
        let rc = platform_open(platform, name, real, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // A file the platform left open must be closed; ours is not
            // open (SQLite calls no method on it).
            if let Some(close) = (*real).pMethods.as_ref().and_then(|m| m.xClose) {
                close(real);
            }
            (*file).pMethods = ptr::null();
            return rc;
        }
        ptr::write(
            file.cast::<WalFile>(),
            WalFile {
                base: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                real,
                run: Vec::new(),
                start: 0,
            },
        );
    }
    ffi::SQLITE_OK
}

/// The WAL file behind SQLite's pointer.
///
/// # Safety
/// `file` must be a file `open` wrapped, not yet closed, and used by one
/// thread at a time (SQLite's contract for a connection's files).
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: per the contract above, `file` points to a WalFile `open`
    // initialised, which nobody else accesses now.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// The platform's methods of the wrapped file.
///
/// # Safety
/// As [`wal`].
unsafe fn methods<'a>(wal: &WalFile) -> &'a ffi::sqlite3_io_methods {
    // SAFETY: the platform opened `real` successfully, so its methods are
    // set and live as long as the process.
    unsafe { &*(*wal.real).pMethods }
}

impl WalFile {
    /// Writes the pending run out; the run is dropped even on error (the
    /// error reaches SQLite, which fails the operation and rewrites the
    /// frames of a later commit itself).
    fn flush(&mut self) -> c_int {
        if self.run.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Ok(length) = c_int::try_from(self.run.len()) else {
            self.run.clear();
            return ffi::SQLITE_IOERR_WRITE;
        };
        // SAFETY: `real` is the open platform file; the buffer is valid
        // for `length` bytes.
        let rc = unsafe {
            match methods(self).xWrite {
                Some(write) => write(self.real, self.run.as_ptr().cast(), length, self.start),
                None => ffi::SQLITE_IOERR_WRITE,
            }
        };
        WAL_WRITES_MADE.fetch_add(1, Ordering::Relaxed);
        self.run.clear();
        rc
    }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    buffer: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    WAL_WRITES_ASKED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: SQLite's contract: an open file of ours, and `amount` bytes
    // readable at `buffer`.
    let (wal, bytes) = unsafe {
        let Ok(amount) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        (
            wal(file),
            std::slice::from_raw_parts(buffer.cast::<u8>(), amount),
        )
    };
    let run_end = wal.start + wal.run.len() as i64;
    if !wal.run.is_empty() && (offset != run_end || wal.run.len() + bytes.len() > MAX_RUN) {
        let rc = wal.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if bytes.len() > MAX_RUN {
        // Not from SQLite's WAL code: passed on as it came.
        // SAFETY: the platform's method on the platform's open file, with
        // SQLite's own arguments.
        return unsafe {
            match methods(wal).xWrite {
                Some(write) => write(wal.real, buffer, amount, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            }
        };
    }
    if wal.run.is_empty() {
        wal.start = offset;
    }
    wal.run.extend_from_slice(bytes);
    ffi::SQLITE_OK
}

/// Generates a method that writes the pending run out, then calls the
/// platform's method with the same arguments.
macro_rules! after_flush {
    ($name:ident, $method:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: SQLite's contract: an open file of ours.
            let wal = unsafe { wal(file) };
            let rc = wal.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            // SAFETY: the platform's method on the platform's open file,
            // with SQLite's own arguments.
            unsafe {
                match methods(wal).$method {
                    Some(method) => method(wal.real, $($arg),*),
                    None => ffi::SQLITE_IOERR,
                }
            }
        }
    };
}

after_flush!(wal_read, xRead(buffer: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64));
after_flush!(wal_truncate, xTruncate(size: ffi::sqlite3_int64));
after_flush!(wal_sync, xSync(flags: c_int));
after_flush!(wal_file_size, xFileSize(size: *mut ffi::sqlite3_int64));
after_flush!(wal_lock, xLock(level: c_int));
after_flush!(wal_unlock, xUnlock(level: c_int));
after_flush!(wal_check_reserved_lock, xCheckReservedLock(out: *mut c_int));
after_flush!(wal_file_control, xFileControl(op: c_int, argument: *mut c_void));

/// Generates a method that only asks the platform's.
macro_rules! pass_through {
    ($name:ident, $method:ident, $default:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file) -> c_int {
            // SAFETY: SQLite's contract: an open file of ours; then the
            // platform's method on the platform's open file.
            unsafe {
                let wal = wal(file);
                match methods(wal).$method {
                    Some(method) => method(wal.real),
                    None => $default,
                }
            }
        }
    };
}

pass_through!(wal_sector_size, xSectorSize, 4096);
pass_through!(wal_device_characteristics, xDeviceCharacteristics, 0);

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite's contract: an open file of ours, closed once; after
    // this call SQLite frees the allocation without touching it, so the
    // run is dropped here.
    unsafe {
        let wal = wal(file);
        let flushed = wal.flush();
        let closed = match methods(wal).xClose {
            Some(close) => close(wal.real),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(&mut wal.run);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}
