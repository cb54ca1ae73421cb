//! A model check (loom: every interleaving, every memory order the model allows) of the wake-up
//! protocol between publishers and a waiting reader: `Cursor::next_batch` with `WaitGuard` in
//! `router/src/router/cursor.rs`, against `publish_validated` in `router/src/router/mod.rs` (the
//! held cursor and `publish_waiting` use the same one for "room").
//!
//! The reader registers its wake-up (`Notified::enable`) and counts itself waiting (a SeqCst
//! increment and fence) *before* it looks at the ring a second time; a publisher appends under
//! the ring's lock, fences, and notifies only if it sees a waiter. The claim: a reader never
//! sleeps through an entry it has not seen. Stress and proptest cannot reach the narrow
//! interleavings; loom enumerates them. The model mirrors the code step for step; tokio's
//! `Notify::notify_waiters` is modelled by its contract (it wakes the waiters enabled before the
//! call and leaves no permit), which is all the protocol relies on.

use loom::sync::atomic::{AtomicUsize, Ordering, fence};
use loom::sync::{Arc, Condvar, Mutex};

/// `tokio::sync::Notify` as `next_batch` uses it: `enable` registers, `notify_waiters` wakes
/// those registered and stores nothing for later ones.
struct Notify {
    generation: Mutex<u64>,
    wake: Condvar,
}

impl Notify {
    fn new() -> Notify {
        Notify {
            generation: Mutex::new(0),
            wake: Condvar::new(),
        }
    }

    fn enable(&self) -> u64 {
        *self.generation.lock().unwrap()
    }

    fn notify_waiters(&self) {
        *self.generation.lock().unwrap() += 1;
        self.wake.notify_all();
    }

    fn wait(&self, enabled_at: u64) {
        let mut g = self.generation.lock().unwrap();
        while *g == enabled_at {
            g = self.wake.wait(g).unwrap();
        }
    }
}

/// One source: its ring (here just `next_seq`), its waiting count and its notify.
struct Source {
    ring: Mutex<u64>,
    waiting: AtomicUsize,
    notify: Notify,
}

impl Source {
    fn new() -> Arc<Source> {
        Arc::new(Source {
            ring: Mutex::new(0),
            waiting: AtomicUsize::new(0),
            notify: Notify::new(),
        })
    }

    /// `publish_validated`: append under the lock, fence, notify if anyone waits.
    fn publish(&self) {
        *self.ring.lock().unwrap() += 1;
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    fn published(&self) -> u64 {
        *self.ring.lock().unwrap()
    }

    /// `next_batch`, correct: register, count in (`WaitGuard::new`), look again, then sleep.
    fn read_until(&self, want: u64) {
        loop {
            if self.published() >= want {
                return;
            }
            let enabled_at = self.notify.enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let ready = self.published() >= want;
            if !ready {
                self.notify.wait(enabled_at);
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if ready {
                return;
            }
        }
    }

    /// The same with the second look left out: what the protocol guards against.
    fn read_until_without_second_look(&self, want: u64) {
        loop {
            if self.published() >= want {
                return;
            }
            let enabled_at = self.notify.enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            self.notify.wait(enabled_at);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One publisher against a reader that waits with `read` for the first entry.
fn one_publisher(read: fn(&Source, u64)) {
    let source = Source::new();
    let publisher = {
        let source = source.clone();
        loom::thread::spawn(move || source.publish())
    };
    read(&source, 1);
    publisher.join().unwrap();
}

#[test]
fn a_waiting_reader_always_wakes_for_a_publish() {
    loom::model(|| one_publisher(Source::read_until));
}

#[test]
fn a_waiting_reader_wakes_for_the_last_of_two_publishers() {
    // Three threads: bounded to three preemptions, where the known bugs of this kind show (the
    // full space takes minutes).
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let source = Source::new();
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let source = source.clone();
                loom::thread::spawn(move || source.publish())
            })
            .collect();
        source.read_until(2);
        for p in publishers {
            p.join().unwrap();
        }
    });
}

/// Set in the child process the test below starts: there it models the bug itself.
const MODEL_THE_BUG: &str = "SLUICE_WAIT_MODEL_THE_BUG";

/// The model can find a lost wake-up: without the second look, a publish between the first
/// look and the registration leaves the reader asleep for good. Loom reports the deadlock by
/// aborting the process, so the test runs itself again in a child process that models the
/// bug, and requires that child to fail with loom's deadlock report.
#[test]
fn the_model_finds_the_lost_wake_up_without_the_second_look() {
    const NAME: &str = "the_model_finds_the_lost_wake_up_without_the_second_look";
    if std::env::var_os(MODEL_THE_BUG).is_some() {
        loom::model(|| one_publisher(Source::read_until_without_second_look));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--test-threads=1"])
        .env(MODEL_THE_BUG, "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the model missed the lost wake-up");
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("deadlock; threads ="), "{said}");
}
