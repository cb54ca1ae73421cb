//! The durability watermark: how far each source is on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Callers in [`Durability::wait`] now: while there are any, the persister writes what it
    /// has gathered at once instead of holding it for a larger write.
    waiting: AtomicUsize,
    /// Tells the persister's writers (every one of them) that someone started waiting: how
    /// many waits have begun, and the wake-up.
    began: AtomicU64,
    wanted: Notify,
    /// The longest timeout any caller of [`Durability::wait`] asked for, in ns.
    longest_wait: AtomicU64,
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
        self.longest_wait.fetch_max(
            u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Waiting(&self.waiting);
        self.began.fetch_add(1, Ordering::SeqCst);
        self.wanted.notify_waiters();
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

    /// The newest seq of `source` that is written or was given up on (0: none); every one
    /// before it is one or the other.
    pub fn through(&self, source: &str) -> u64 {
        self.marks
            .get(source)
            .map_or(0, |m| m.written.max(m.lost_through))
    }

    /// Drops the marks of a source the router forgot, which nothing was published to for
    /// `idle_ns`: unless someone is waiting on marks now who may be waiting for this one's
    /// (waiting since before `idle_ns`, and not yet looked again); then they stay, a few bytes.
    pub fn forget(&self, source: &str, idle_ns: u64) {
        if !self.has_waiters() || idle_ns > self.longest_wait.load(Ordering::Relaxed) {
            self.marks.remove(source);
        }
    }

    /// Wakes every waiter to look at the marks again.
    pub fn notify_waiters(&self) {
        self.notify.notify_waiters();
    }

    /// Whether anyone is waiting for lines to reach disk.
    pub fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Completes once someone has started waiting since the caller last looked (`seen`, which
    /// it moves; at once if someone did meanwhile): a persister writer's cue to write what it
    /// holds back. Every writer that looks is told, each keeping its own `seen`.
    pub async fn wanted(&self, seen: &mut u64) {
        loop {
            let notified = self.wanted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let began = self.began.load(Ordering::SeqCst);
            if began != *seen {
                *seen = began;
                return;
            }
            notified.await;
        }
    }
}

/// Counts a caller of [`Durability::wait`] for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Durability;

    fn written(d: &Durability, source: &str) -> u64 {
        d.marks.get(source).map_or(0, |m| m.written)
    }

    /// A forgotten source's marks go, but not from under a caller that may still be waiting
    /// for them: one that asked for a longer wait than the source has been idle.
    #[tokio::test(flavor = "current_thread")]
    async fn a_forgotten_sources_marks_stay_while_a_wait_may_need_them() {
        let d = Arc::new(Durability::default());
        let a: Arc<str> = Arc::from("a");
        d.update(&a, 5, 0);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait("b", 1, 1, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        assert!(d.has_waiters());
        let secs = |s: u64| Duration::from_secs(s).as_nanos() as u64;
        d.forget("a", secs(10));
        assert_eq!(written(&d, "a"), 5, "a wait of 30 s may be for it");
        d.forget("a", secs(31));
        assert_eq!(written(&d, "a"), 0);
        waiter.abort();
        let _ = waiter.await;
        d.update(&a, 6, 0);
        d.forget("a", 0);
        assert_eq!(written(&d, "a"), 0, "nobody waits");
    }
}
