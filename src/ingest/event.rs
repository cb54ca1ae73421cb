//! Events a producer reports about a source that it may not write as lines itself: a process
//! that exited, lines the producer had to drop. They arrive as the native control word
//! `event=JSON` and become Sluice's own `_server` notices, in the text Sluice chooses, so that
//! a reader can trust an `LGR` line was written by the server: the producer supplies numbers,
//! never words.
//!
//! ```text
//! event={"event":"exit","source_id":"build-42","status":1,"step":"test"}
//! event={"event":"exit","source_id":"build-42","signal":9}
//! event={"event":"dropped","source_id":"build-42","lines":120,"bytes":9000,"since_ns":1700000000000000000}
//! ```

use serde::Deserialize;
use sluice_router::envelope::rfc3339_seconds;
use sluice_router::{Envelope, EnvelopeError, validate_source_id};

/// The prefix of an event control word.
pub const PREFIX: &str = "event=";

/// One reported event, as it arrives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProducerEvent {
    /// The producer's process ended: `status` when it exited, `signal` when a signal killed it.
    Exit {
        source_id: String,
        #[serde(default)]
        status: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
        #[serde(default)]
        step: Option<String>,
        #[serde(default)]
        instance_id: Option<String>,
    },
    /// The producer dropped `lines` lines (`bytes` bytes of message) it could not deliver,
    /// the first of them at `since_ns`.
    Dropped {
        source_id: String,
        lines: u64,
        bytes: u64,
        since_ns: i64,
        #[serde(default)]
        step: Option<String>,
        #[serde(default)]
        instance_id: Option<String>,
    },
}

/// Why an event word was refused: the connection carries on.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

impl ProducerEvent {
    /// Parses the JSON after [`PREFIX`].
    pub fn parse(json: &str) -> Result<ProducerEvent, EventError> {
        let event: ProducerEvent =
            serde_json::from_str(json).map_err(|e| EventError::Malformed(e.to_string()))?;
        validate_source_id(event.source_id())?;
        match &event {
            ProducerEvent::Exit { status, signal, .. } => {
                if status.is_some() == signal.is_some() {
                    return Err(EventError::Malformed(
                        "an exit has a status or a signal, one of the two".into(),
                    ));
                }
                if signal.is_some_and(|s| !(1..=64).contains(&s)) {
                    return Err(EventError::Malformed("a signal is 1 to 64".into()));
                }
            }
            ProducerEvent::Dropped { lines, .. } if *lines == 0 => {
                return Err(EventError::Malformed("nothing dropped".into()));
            }
            ProducerEvent::Dropped { .. } => {}
        }
        Ok(event)
    }

    pub fn source_id(&self) -> &str {
        match self {
            ProducerEvent::Exit { source_id, .. } | ProducerEvent::Dropped { source_id, .. } => {
                source_id
            }
        }
    }

    /// The `_server` notice this event becomes, with its numbers also as tags (and the step and
    /// instance it concerns, when given).
    pub fn notice(&self) -> Result<Envelope, EventError> {
        let (text, tags, step, instance) = match self {
            ProducerEvent::Exit {
                status: Some(status),
                step,
                instance_id,
                ..
            } => (
                format!("exited with status {status}"),
                vec![("exit_status", status.to_string())],
                step,
                instance_id,
            ),
            ProducerEvent::Exit {
                signal,
                step,
                instance_id,
                ..
            } => {
                let n = signal.unwrap_or_default();
                let text = match signal_name(n) {
                    Some(name) => format!("killed by signal {n} ({name})"),
                    None => format!("killed by signal {n}"),
                };
                (text, vec![("signal", n.to_string())], step, instance_id)
            }
            ProducerEvent::Dropped {
                lines,
                bytes,
                since_ns,
                step,
                instance_id,
                ..
            } => (
                format!(
                    "the sender dropped {lines} {} ({bytes} bytes) for this source since {}: its buffer was full while it could not deliver them",
                    if *lines == 1 { "line" } else { "lines" },
                    rfc3339_seconds(*since_ns)
                ),
                vec![
                    ("missed", lines.to_string()),
                    ("missed_bytes", bytes.to_string()),
                    ("since", rfc3339_seconds(*since_ns)),
                ],
                step,
                instance_id,
            ),
        };
        let mut env = Envelope::notice(self.source_id(), text);
        for (k, v) in tags {
            env.tags.insert(k.to_owned(), v);
        }
        if let Some(step) = step {
            env.tags.insert("step".into(), step.clone());
        }
        if let Some(instance) = instance {
            env.instance_id = instance.clone().into();
        }
        env.validate_fields()?;
        if env.tags.values().any(|v| v.len() > 256) {
            return Err(EventError::Malformed("a step longer than 256 bytes".into()));
        }
        Ok(env)
    }
}

/// The usual name of a Linux signal number.
fn signal_name(n: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(n - 1)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(json: &str) -> Envelope {
        ProducerEvent::parse(json).unwrap().notice().unwrap()
    }

    #[test]
    fn exits_become_server_notices_in_sluices_words() {
        let n = notice(r#"{"event":"exit","source_id":"job-1","status":3,"step":"test"}"#);
        assert_eq!(&n.message[..], b"exited with status 3");
        assert_eq!(n.step.as_deref(), Some("_server"));
        assert_eq!(n.origin, "LGR");
        assert_eq!(n.tags["exit_status"], "3");
        assert_eq!(n.tags["step"], "test");
        let n = notice(r#"{"event":"exit","source_id":"job-1","signal":9,"instance_id":"2"}"#);
        assert_eq!(&n.message[..], b"killed by signal 9 (SIGKILL)");
        assert_eq!(n.instance_id, "2");
        let n = notice(
            r#"{"event":"dropped","source_id":"job-1","lines":1,"bytes":5,"since_ns":1465938605000000000}"#,
        );
        assert_eq!(
            &n.message[..],
            &b"the sender dropped 1 line (5 bytes) for this source since 2016-06-14T21:10:05Z: its buffer was full while it could not deliver them"[..]
        );
        assert_eq!(n.tags["missed"], "1");
        assert_eq!(n.tags["missed_bytes"], "5");
    }

    #[test]
    fn hostile_events_are_refused_with_a_reason() {
        for bad in [
            "",
            "{}",
            r#"{"event":"exit","source_id":"a"}"#,
            r#"{"event":"exit","source_id":"a","status":1,"signal":2}"#,
            r#"{"event":"exit","source_id":"a","signal":0}"#,
            r#"{"event":"exit","source_id":"a b","status":1}"#,
            r#"{"event":"exit","source_id":"a","status":1,"text":"forged"}"#,
            r#"{"event":"say","source_id":"a"}"#,
            r#"{"event":"dropped","source_id":"a","lines":0,"bytes":0,"since_ns":0}"#,
            r#"{"event":"exit","source_id":"a","status":"1"}"#,
        ] {
            assert!(ProducerEvent::parse(bad).is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"event":"exit","source_id":"a","status":1,"step":"{}"}}"#,
            "s".repeat(300)
        );
        assert!(ProducerEvent::parse(&long).unwrap().notice().is_err());
        let bad_instance = r#"{"event":"exit","source_id":"a","status":1,"instance_id":""}"#;
        assert!(
            ProducerEvent::parse(bad_instance)
                .unwrap()
                .notice()
                .is_err()
        );
    }
}
