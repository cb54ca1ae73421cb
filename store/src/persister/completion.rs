//! A source's completion: written through, closed, and (for the archive) moved aside durably.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Completed, Control, Persister, file_path, rotated_path, segments, segments_dir};

/// Why the persister could not complete a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompletionError {
    /// The server is stopping (or the persister has stopped): try again after the restart.
    #[error("sluice is shutting down")]
    Stopping,
    /// The source's file could not be written out.
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    /// A file could not be moved aside for the archive.
    #[error("cannot move {} aside: {reason}", path.display())]
    Move { path: PathBuf, reason: String },
}

impl Persister {
    pub(super) fn answer_completions(&mut self) {
        let mut still = Vec::new();
        for c in std::mem::take(&mut self.pending) {
            let Control::Complete {
                source,
                upto,
                move_to,
                reply,
            } = c;
            let handled = self.handled.get(source.as_str()).copied().unwrap_or(0);
            if handled < upto {
                still.push(Control::Complete {
                    source,
                    upto,
                    move_to,
                    reply,
                });
                continue;
            }
            let key: Arc<str> = Arc::from(source.as_str());
            if let Err(e) = self.flush_source(&key) {
                let path = self.files.get(&key).map(|f| f.path.clone());
                let _ = reply.send(Err(CompletionError::Write {
                    path: path.unwrap_or_default(),
                    reason: crate::short_reason(&e),
                }));
                continue;
            }
            let tags = self.store_key_tags(&source);
            // Its files move (or stay) as they are: the next line opens and looks again.
            self.known.remove(&key);
            self.rotated.remove(&key);
            if let Some(mut f) = self.files.remove(&key)
                && let Some(file) = f.file.take()
            {
                self.lru.remove(&f.last_used);
                self.open_fds -= 1;
                let _ = file.sync_data();
            }
            let mut done = self.completed(&source);
            done.tags = tags;
            let _ = reply.send(match move_to {
                None => Ok(done),
                Some(dir) => {
                    let moved = move_completed(done, &dir, &self.config.local_dir);
                    let _ = std::fs::remove_dir(segments_dir(&self.config.local_dir, &source));
                    // Archived: the job leaves nothing behind here, its key's tags neither (the
                    // next lines of the source give them again).
                    if moved.is_ok() {
                        let _ = std::fs::remove_file(super::keytags::tags_path(
                            &self.config.local_dir,
                            &source,
                        ));
                    }
                    moved
                }
            });
        }
        self.pending = still;
    }

    pub(super) fn completed(&self, source: &str) -> Completed {
        let dir = &self.config.local_dir;
        let path = Some(file_path(dir, source)).filter(|p| p.exists());
        let mut rotated: Vec<PathBuf> = (1..self.config.max_files.max(1))
            .map(|n| rotated_path(dir, source, n))
            .filter(|p| p.exists())
            .collect();
        rotated.reverse();
        // Segments are older than every rotated file.
        let mut all = segments(dir, source);
        all.append(&mut rotated);
        Completed {
            path,
            rotated: all,
            tags: BTreeMap::new(),
        }
    }
}

/// Moves a completion's files into `dir` (same file names), durably, and says where they are.
fn move_completed(
    done: Completed,
    dir: &Path,
    local_dir: &Path,
) -> Result<Completed, CompletionError> {
    let fail = |what: &Path, e: std::io::Error| CompletionError::Move {
        path: what.to_owned(),
        reason: crate::short_reason(&e),
    };
    crate::private::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let mut moved = |from: PathBuf| -> Result<PathBuf, CompletionError> {
        let to = dir.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(|e| fail(&from, e))?;
        Ok(to)
    };
    let rotated = done
        .rotated
        .into_iter()
        .map(&mut moved)
        .collect::<Result<Vec<_>, _>>()?;
    let path = done.path.map(&mut moved).transpose()?;
    for d in [dir, local_dir] {
        if let Ok(f) = File::open(d) {
            let _ = f.sync_all();
        }
    }
    Ok(Completed {
        path,
        rotated,
        tags: done.tags,
    })
}
