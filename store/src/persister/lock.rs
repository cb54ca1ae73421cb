//! The lock on a storage directory, and the mark a clean stop leaves in it.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The lock file in `local_dir`: it holds the pid of the server that has the directory, and
/// `stopped` once that server has written everything it published and stopped.
pub const LOCK_FILE: &str = ".sluice.lock";

const STOPPED: &str = "stopped";

/// The exclusive lock on a storage directory, so that two servers never write the same files
/// (their seqs would interleave). The lock goes with the process, however it ends.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    stopped_cleanly: bool,
    /// Set once the persister runs: from then on only its clean end marks the directory.
    pub(super) running: bool,
}

impl Drop for DirLock {
    /// A start that failed before the persister ran published nothing: the directory stays
    /// as clean as it was.
    fn drop(&mut self) {
        if !self.running && self.stopped_cleanly {
            let _ = self.mark_stopped();
        }
    }
}

impl DirLock {
    /// Creates `dir` if needed and locks it; fails, naming the holder, if another server has it.
    pub fn take(dir: &Path) -> std::io::Result<DirLock> {
        crate::private::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        let locked = file.try_lock();
        let mut text = String::new();
        // A pid or `stopped`: a few bytes; whatever else a file there holds is not read whole.
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, 64), &mut text);
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = text.trim();
                let who = if pid.is_empty() || pid == STOPPED {
                    "another sluice".to_owned()
                } else {
                    format!("another sluice (pid {pid})")
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!("{who} is using it"),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // A new directory, or one whose last server wrote all it published before stopping.
        let stopped_cleanly = text.is_empty() || text.trim() == STOPPED;
        // Who holds it, for the next one to say; a full disk must not stop the start.
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DirLock {
            file,
            stopped_cleanly,
            running: false,
        })
    }

    /// Whether the last server on the directory stopped having written all it published (or
    /// there was none): if not, seqs it may have handed out unwritten must be skipped.
    pub fn stopped_cleanly(&self) -> bool {
        self.stopped_cleanly
    }

    /// Says the next server need skip nothing.
    pub(super) fn mark_stopped(&self) -> std::io::Result<()> {
        let mut file = &self.file;
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        writeln!(file, "{STOPPED}")?;
        file.sync_all()
    }
}

/// The directory's lock as the persister's shards share it: the directory is marked stopped
/// cleanly once every shard has stopped having written all it read.
#[derive(Debug)]
pub(super) struct SharedLock {
    lock: Mutex<DirLock>,
    shards: usize,
    stopped: AtomicUsize,
    dirty: AtomicBool,
}

impl SharedLock {
    pub(super) fn new(lock: DirLock, shards: usize) -> SharedLock {
        SharedLock {
            lock: Mutex::new(lock),
            shards,
            stopped: AtomicUsize::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    /// A shard runs: from now on only the clean end of all of them marks the directory.
    pub(super) fn running(&self) {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).running = true;
    }

    /// A shard stopped, `clean` if it wrote all it read; the last to stop marks the directory
    /// if every one was.
    pub(super) fn stopped(&self, clean: bool) {
        if !clean {
            self.dirty.store(true, Ordering::SeqCst);
        }
        let last = self.stopped.fetch_add(1, Ordering::SeqCst) + 1 == self.shards;
        if last && !self.dirty.load(Ordering::SeqCst) {
            let _ = self
                .lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mark_stopped();
        }
    }
}
