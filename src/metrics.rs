//! Counters for operators, rendered as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_router::Router;

use sluice_store::archive::ArchiveCounters;
use sluice_store::persister::PersisterCounters;

use crate::bindings::DrainView;

/// Process-wide counters. Plain relaxed atomics: each is only ever added to.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Envelopes accepted by native ingest.
    pub ingest_envelopes: AtomicU64,
    /// Frames accepted by native ingest.
    pub ingest_frames: AtomicU64,
    /// Connections closed for a malformed, oversized or truncated frame.
    pub ingest_malformed: AtomicU64,
    /// Envelopes refused for invalid fields (the connection stays open).
    pub ingest_refused: AtomicU64,
    pub ingest_connections: AtomicU64,
    /// Native connections refused at `ingest.max_connections`.
    pub ingest_connections_refused: AtomicU64,
    /// Syslog stream connections refused at `syslog.max_connections`.
    pub syslog_connections_refused: AtomicU64,
    /// HTTP connections refused at `http.max_connections`.
    pub http_connections_refused: AtomicU64,
    /// Syslog messages accepted (over TCP, UDP and TLS).
    pub syslog_messages: AtomicU64,
    /// Syslog messages that could not become envelopes (no usable source id).
    pub syslog_refused: AtomicU64,
    /// Syslog connections closed for bad framing, truncation or a failed TLS handshake.
    pub syslog_malformed: AtomicU64,
    /// Syslog UDP messages dropped because the persister was a ring behind (`when_behind:
    /// block`; a datagram cannot wait).
    pub syslog_udp_dropped: AtomicU64,
    /// Envelopes sent to WebSocket tails (loss notices not included).
    pub tail_delivered: AtomicU64,
    /// Envelopes tails were told they missed.
    pub tail_missed: AtomicU64,
    pub tails_opened: AtomicU64,
    pub tails_closed: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these counters and the router's gauges.
    pub fn render(
        &self,
        router: &Router,
        drains: &[DrainView],
        persister: &PersisterCounters,
        archive: Option<&ArchiveCounters>,
    ) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        fn counter(out: &mut String, name: &str, help: &str, value: u64) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        counter(
            &mut out,
            "sluice_ingest_envelopes_total",
            "Envelopes accepted by native ingest.",
            get(&self.ingest_envelopes),
        );
        counter(
            &mut out,
            "sluice_ingest_frames_total",
            "Frames accepted by native ingest.",
            get(&self.ingest_frames),
        );
        counter(
            &mut out,
            "sluice_ingest_malformed_frames_total",
            "Native ingest connections closed for a malformed, oversized or truncated frame.",
            get(&self.ingest_malformed),
        );
        counter(
            &mut out,
            "sluice_ingest_refused_envelopes_total",
            "Envelopes refused at native ingest for invalid fields.",
            get(&self.ingest_refused),
        );
        counter(
            &mut out,
            "sluice_ingest_connections_total",
            "Native ingest connections accepted.",
            get(&self.ingest_connections),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_connections_refused_total Connections refused because their listener was at its max_connections.\n# TYPE sluice_connections_refused_total counter"
        );
        for (listener, c) in [
            ("ingest", &self.ingest_connections_refused),
            ("syslog", &self.syslog_connections_refused),
            ("http", &self.http_connections_refused),
        ] {
            let _ = writeln!(
                out,
                "sluice_connections_refused_total{{listener=\"{listener}\"}} {}",
                get(c)
            );
        }
        counter(
            &mut out,
            "sluice_syslog_messages_total",
            "Syslog messages accepted.",
            get(&self.syslog_messages),
        );
        counter(
            &mut out,
            "sluice_syslog_refused_total",
            "Syslog messages refused (no usable source id).",
            get(&self.syslog_refused),
        );
        counter(
            &mut out,
            "sluice_syslog_malformed_total",
            "Syslog connections closed for bad framing, truncation or a failed TLS handshake.",
            get(&self.syslog_malformed),
        );
        counter(
            &mut out,
            "sluice_syslog_udp_dropped_total",
            "Syslog UDP messages dropped while the persister was a ring behind (when_behind: block).",
            get(&self.syslog_udp_dropped),
        );
        counter(
            &mut out,
            "sluice_router_published_total",
            "Envelopes published into the rings.",
            router.published_total(),
        );
        counter(
            &mut out,
            "sluice_router_waited_for_persister_total",
            "Envelopes whose sender waited for the persister before a ring took them (when_behind: block).",
            router.waited_for_room_total(),
        );
        counter(
            &mut out,
            "sluice_router_budget_evicted_total",
            "Envelopes evicted to keep all rings within the memory budget.",
            router.evicted_for_budget_total(),
        );
        counter(
            &mut out,
            "sluice_tail_delivered_total",
            "Envelopes delivered to WebSocket tails.",
            get(&self.tail_delivered),
        );
        counter(
            &mut out,
            "sluice_tail_missed_total",
            "Envelopes WebSocket tails were told they missed because they read too slowly.",
            get(&self.tail_missed),
        );
        counter(
            &mut out,
            "sluice_tails_opened_total",
            "WebSocket tails opened.",
            get(&self.tails_opened),
        );
        counter(
            &mut out,
            "sluice_tails_closed_total",
            "WebSocket tails closed.",
            get(&self.tails_closed),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_router_retained_bytes Bytes held by all rings.\n# TYPE sluice_router_retained_bytes gauge\nsluice_router_retained_bytes {}",
            router.retained_bytes()
        );
        let relaxed = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "sluice_persister_lines_total",
            "Lines the persister wrote.",
            relaxed(&persister.lines),
        );
        counter(
            &mut out,
            "sluice_persister_lost_total",
            "Lines the persister lost (overrun, or writes that kept failing).",
            relaxed(&persister.lost),
        );
        counter(
            &mut out,
            "sluice_persister_errors_total",
            "Failed writes, syncs and rotations of log files (a full disk, say).",
            relaxed(&persister.errors),
        );
        counter(
            &mut out,
            "sluice_persister_rotations_total",
            "Log files rotated.",
            relaxed(&persister.rotations),
        );
        counter(
            &mut out,
            "sluice_persister_deleted_lines_total",
            "Lines in files that rotation deleted (max_files; with S3, keep_segments), each deletion announced.",
            relaxed(&persister.deleted_lines),
        );
        if let Some(a) = archive {
            counter(
                &mut out,
                "sluice_archive_uploads_total",
                "Jobs archived to S3.",
                relaxed(&a.uploaded),
            );
            counter(
                &mut out,
                "sluice_archive_bytes_total",
                "Compressed bytes uploaded to S3.",
                relaxed(&a.bytes),
            );
            counter(
                &mut out,
                "sluice_archive_failures_total",
                "Failed archive uploads (each is retried).",
                relaxed(&a.failures),
            );
            let _ = writeln!(
                out,
                "# HELP sluice_archive_backlog Jobs waiting for their archive upload.\n# TYPE sluice_archive_backlog gauge\nsluice_archive_backlog {}",
                relaxed(&a.backlog)
            );
        }
        for (name, help, get) in [
            (
                "sluice_drain_sent_total",
                "Messages a syslog drain delivered.",
                (|d: &DrainView| d.sent) as fn(&DrainView) -> u64,
            ),
            (
                "sluice_drain_lost_total",
                "Messages overwritten before a syslog drain could send them.",
                |d| d.lost,
            ),
            (
                "sluice_drain_errors_total",
                "Failed connections and writes of a syslog drain.",
                |d| d.errors,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for d in drains {
                let _ = writeln!(
                    out,
                    "{name}{{drain=\"{}\",url=\"{}\"}} {}",
                    d.id,
                    d.url,
                    get(d)
                );
            }
        }
        out
    }
}
