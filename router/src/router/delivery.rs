//! What a cursor hands its reader: envelopes, and exact notices of what it missed.

use std::sync::Arc;

use crate::entry::Entry;
use crate::envelope::{Envelope, rfc3339_seconds};

/// What a cursor hands its reader.
#[derive(Debug, Clone)]
pub enum Delivery {
    Log(Entry),
    Missed(MissedNotice),
}

impl Delivery {
    /// The envelope to show: the log itself, or the router's `LGR` line about the loss, phrased
    /// for `consumer` ("tail", "syslog drain", …).
    pub fn into_entry(self, consumer: &str) -> Entry {
        match self {
            Delivery::Log(entry) => entry,
            Delivery::Missed(notice) => Entry::from_envelope(&notice.to_envelope(consumer)),
        }
    }
}

/// A cursor was overtaken: exactly `count` envelopes matching its filter were overwritten
/// before it read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissedNotice {
    pub source_id: Arc<str>,
    pub count: u64,
    /// When the loss began: the time of the last envelope the cursor received from this source
    /// (or of the cursor's creation).
    pub since_ns: i64,
    /// The `seq` of the newest envelope lost; the next delivered envelope has a larger one.
    pub last_missed_seq: u64,
}

impl MissedNotice {
    pub fn message(&self, consumer: &str) -> String {
        let noun = if self.count == 1 {
            "message"
        } else {
            "messages"
        };
        format!(
            "sluice dropped {} {noun} for this {consumer} since {}: consumer too slow",
            self.count,
            rfc3339_seconds(self.since_ns)
        )
    }

    /// The in-band `LGR`/`ERR` envelope, carrying the tags `missed` and `since`.
    pub fn to_envelope(&self, consumer: &str) -> Envelope {
        let mut env = Envelope::notice(&*self.source_id, self.message(consumer));
        // A reader's loss is its own, not a server event of the source.
        env.step = None;
        env.seq = self.last_missed_seq;
        env.tags.insert("missed".into(), self.count.to_string());
        env.tags
            .insert("since".into(), rfc3339_seconds(self.since_ns));
        env
    }
}
