//! The durability watermark: how far each source is on disk.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How far each source is on disk: the persister moves the marks, ingest waits on them for
/// `ack=durable`, readers for lines the ring let go. Held by the [`crate::Router`], so neither
/// side needs the other.
#[derive(Debug, Default)]
pub struct Durability {
    marks: DashMap<Arc<str>, Mark>,
    notify: Notify,
}

#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    /// Every seq up to this one is written (and synced, with `fsync: always`).
    written: u64,
    /// The newest seq the persister lost (overrun, or a write that kept failing).
    lost_through: u64,
}

/// Why a durable acknowledgement could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    #[error(
        "the batch was lost before it reached disk (the persister fell behind or could not write): send it again"
    )]
    Lost,
    #[error("timed out waiting for the persister to write the batch")]
    Timeout,
}

impl Durability {
    /// Waits until seqs `first..=last` of `source` are on disk.
    pub async fn wait(
        &self,
        source: &str,
        first: u64,
        last: u64,
        timeout: Duration,
    ) -> Result<(), DurableError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mark = self.marks.get(source).map(|m| *m).unwrap_or_default();
            if mark.lost_through >= first {
                return Err(DurableError::Lost);
            }
            if mark.written >= last {
                return Ok(());
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return Err(DurableError::Timeout),
            }
        }
    }

    /// Records that `source` is written through `written` and lost through `lost_through`
    /// (either may be 0 for no news). Wake waiters with [`Durability::notify_waiters`].
    pub fn update(&self, source: &Arc<str>, written: u64, lost_through: u64) {
        let mut m = self.marks.entry(source.clone()).or_default();
        m.written = m.written.max(written);
        m.lost_through = m.lost_through.max(lost_through);
    }

    /// Wakes every waiter to look at the marks again.
    pub fn notify_waiters(&self) {
        self.notify.notify_waiters();
    }
}
