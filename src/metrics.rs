//! Counters and gauges for operators, exposed at `/metrics` in the OpenMetrics text format
//! through `prometheus-client` (label values escaped by it).
//!
//! Two kinds, each metric declared once:
//! - what the server counts as it happens ([`Metrics`]' own counters, in its registry): ingest,
//!   syslog, tails, connections refused, inputs refused or malformed by reason;
//! - what is read at scrape time from the parts that already keep it (a `Scrape`): the router's
//!   rings and sources (the busiest `per_source_top` sources by name), the persister, the
//!   archive, each drain, the open connections of each listener.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sluice_router::Router;
use sluice_store::archive::ArchiveCounters;
use sluice_store::persister::PersisterCounters;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bindings::DrainView;
use crate::net::ConnectionLimit;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One label, `reason` or `listener`: the values are fixed words of this code.
type Label = [(&'static str, &'static str); 1];

/// Process-wide counters. Each is an atomic shared with the registry; adding is a relaxed
/// `fetch_add`, as before this moved to `prometheus-client`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Envelopes accepted by native ingest.
    pub ingest_envelopes: Counter,
    /// Frames accepted by native ingest.
    pub ingest_frames: Counter,
    pub ingest_connections: Counter,
    /// Envelopes accepted by `POST /api/v1/ingest`.
    pub http_ingest_envelopes: Counter,
    /// Native ingest connections closed for a bad frame, by reason.
    ingest_malformed: Family<Label, Counter>,
    /// Envelopes refused at native ingest, by reason.
    ingest_refused: Family<Label, Counter>,
    /// Connections refused at a listener's `max_connections`, by listener.
    connections_refused: Family<Label, Counter>,
    /// Syslog messages accepted (over TCP, UDP and TLS).
    pub syslog_messages: Counter,
    /// Syslog messages that could not become envelopes, by reason.
    syslog_refused: Family<Label, Counter>,
    /// Syslog connections closed for bad framing, truncation or a failed TLS handshake.
    syslog_malformed: Family<Label, Counter>,
    /// Syslog UDP messages dropped because the persister was a ring behind.
    pub syslog_udp_dropped: Counter,
    /// Envelopes sent to WebSocket tails (loss notices not included).
    pub tail_delivered: Counter,
    /// Envelopes tails were told they missed.
    pub tail_missed: Counter,
    pub tails_opened: Counter,
    pub tails_closed: Counter,
    /// HTTP responses and tail backfills cut off at `http.send_timeout_secs`.
    pub http_send_timeouts: Counter,
    /// SIGHUP reloads, by result (`applied`, `refused`).
    reloads: Family<Label, Counter>,
    /// Each listener's connection limit, whose open count a scrape reads.
    listeners: Mutex<Vec<(&'static str, ConnectionLimit)>>,
    /// How many sources get series of their own (the busiest by envelopes).
    per_source_top: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(DEFAULT_PER_SOURCE_TOP)
    }
}

/// The `reason`s each family counts (the README's table lists them).
const INGEST_MALFORMED: [&str; 10] = [
    "too_large",
    "truncated",
    "decode",
    "trailing",
    "empty",
    "unknown_kind",
    "control",
    "frame_timeout",
    "unauthenticated",
    "tls_handshake",
];
const INGEST_REFUSED: [&str; 9] = [
    "source_id",
    "origin",
    "instance_id",
    "reserved",
    "invalid",
    "batch_too_large",
    "forbidden",
    "too_many_sources",
    "storage_unreadable",
];
const SYSLOG_REFUSED: [&str; 4] = [
    "no_source",
    "invalid_source_id",
    "too_many_sources",
    "storage_unreadable",
];
const SYSLOG_MALFORMED: [&str; 6] = [
    "bad_octet_count",
    "frame_too_large",
    "truncated",
    "frame_timeout",
    "no_buffer_room",
    "tls_handshake",
];

/// [`Metrics::new`]'s usual number of per-source series.
pub const DEFAULT_PER_SOURCE_TOP: usize = 20;

impl Metrics {
    pub fn new(per_source_top: usize) -> Metrics {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let ingest_envelopes = counter(
            "sluice_ingest_envelopes",
            "Envelopes accepted by native ingest.",
        );
        let ingest_frames = counter("sluice_ingest_frames", "Frames accepted by native ingest.");
        let ingest_connections = counter(
            "sluice_ingest_connections",
            "Native ingest connections accepted.",
        );
        let http_ingest_envelopes = counter(
            "sluice_http_ingest_envelopes",
            "Envelopes accepted by POST /api/v1/ingest.",
        );
        let syslog_messages = counter("sluice_syslog_messages", "Syslog messages accepted.");
        let syslog_udp_dropped = counter(
            "sluice_syslog_udp_dropped",
            "Syslog UDP messages dropped while the persister was a ring behind (when_behind: block).",
        );
        let tail_delivered = counter(
            "sluice_tail_delivered",
            "Envelopes delivered to WebSocket tails.",
        );
        let tail_missed = counter(
            "sluice_tail_missed",
            "Envelopes WebSocket tails were told they missed because they read too slowly.",
        );
        let tails_opened = counter("sluice_tails_opened", "WebSocket tails opened.");
        let tails_closed = counter("sluice_tails_closed", "WebSocket tails closed.");
        let http_send_timeouts = counter(
            "sluice_http_send_timeouts",
            "HTTP responses and tail backfills cut off because the client took nothing for http.send_timeout_secs.",
        );
        let mut family = |name: &str, help: &str| {
            let f = Family::<Label, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let ingest_malformed = family(
            "sluice_ingest_malformed_frames",
            "Native ingest connections closed for a malformed, oversized, truncated or late frame, by reason.",
        );
        let ingest_refused = family(
            "sluice_ingest_refused_envelopes",
            "Envelopes refused at native or HTTP ingest, by the field that was invalid (or the batch).",
        );
        let connections_refused = family(
            "sluice_connections_refused",
            "Connections refused because their listener was at its max_connections.",
        );
        let syslog_refused = family(
            "sluice_syslog_refused",
            "Syslog messages refused, by reason (no usable source id).",
        );
        let reloads = family(
            "sluice_config_reloads",
            "Config reloads (SIGHUP), by result: applied, or refused with the old settings kept.",
        );
        let syslog_malformed = family(
            "sluice_syslog_malformed",
            "Syslog connections closed for bad framing, truncation, a late frame or a failed TLS handshake, by reason.",
        );
        // Every known label value from the start, so that a rate over it starts at zero
        // rather than at the first event.
        for (family, reasons) in [
            (&ingest_malformed, &INGEST_MALFORMED[..]),
            (&ingest_refused, &INGEST_REFUSED[..]),
            (&syslog_refused, &SYSLOG_REFUSED[..]),
            (&syslog_malformed, &SYSLOG_MALFORMED[..]),
        ] {
            for reason in reasons {
                let _ = family.get_or_create(&[("reason", reason)]);
            }
        }
        for result in ["applied", "refused"] {
            let _ = reloads.get_or_create(&[("result", result)]);
        }
        for listener in ["http", "ingest", "syslog"] {
            let _ = connections_refused.get_or_create(&[("listener", listener)]);
        }
        Metrics {
            registry,
            ingest_envelopes,
            ingest_frames,
            ingest_connections,
            http_ingest_envelopes,
            ingest_malformed,
            ingest_refused,
            connections_refused,
            syslog_messages,
            syslog_refused,
            syslog_malformed,
            syslog_udp_dropped,
            tail_delivered,
            tail_missed,
            tails_opened,
            tails_closed,
            http_send_timeouts,
            reloads,
            listeners: Mutex::new(Vec::new()),
            per_source_top,
        }
    }

    /// A native ingest connection closed for a bad frame: `reason` is a word such as
    /// `oversized` or `truncated`.
    pub fn ingest_malformed(&self, reason: &'static str) {
        self.ingest_malformed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// `n` envelopes refused at native ingest.
    pub fn ingest_refused(&self, reason: &'static str, n: u64) {
        self.ingest_refused
            .get_or_create(&[("reason", reason)])
            .inc_by(n);
    }

    /// A connection refused at `listener`'s `max_connections`.
    pub fn connection_refused(&self, listener: &'static str) {
        self.connections_refused
            .get_or_create(&[("listener", listener)])
            .inc();
    }

    /// `n` syslog messages refused.
    pub fn syslog_refused(&self, reason: &'static str, n: u64) {
        self.syslog_refused
            .get_or_create(&[("reason", reason)])
            .inc_by(n);
    }

    /// A syslog connection closed for `reason`.
    pub fn syslog_malformed(&self, reason: &'static str) {
        self.syslog_malformed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A config reload, applied or refused.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    /// Makes `limit`'s open connections part of every scrape, as `listener`.
    pub fn track_listener(&self, listener: &'static str, limit: &ConnectionLimit) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((listener, limit.clone()));
    }

    /// The OpenMetrics text of these counters and of what the parts keep, read now.
    pub fn render(
        &self,
        router: &Router,
        drains: &[DrainView],
        persister: &PersisterCounters,
        archive: Option<&ArchiveCounters>,
    ) -> String {
        let relaxed = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (sources, source_count, retained_entries) = router.busiest(self.per_source_top);
        let source_count = source_count as u64;
        let scrape = Scrape {
            published: router.published_total(),
            waited: router.waited_for_room_total(),
            evicted: router.evicted_for_budget_total(),
            forgotten: router.forgotten_total(),
            retained_bytes: router.retained_bytes() as u64,
            retained_entries,
            source_count,
            max_sources: router.config().max_sources as u64,
            awaited_sources: router.awaited_sources().0 as u64,
            sources: sources
                .into_iter()
                .map(|s| {
                    (
                        s.source_id,
                        s.published,
                        s.retained as u64,
                        s.retained_bytes as u64,
                    )
                })
                .collect(),
            persister: [
                relaxed(&persister.lines),
                relaxed(&persister.bytes),
                relaxed(&persister.lost),
                relaxed(&persister.errors),
                relaxed(&persister.rotations),
                relaxed(&persister.deleted_lines),
                relaxed(&persister.open_files),
                relaxed(&persister.gathered_bytes),
                relaxed(&persister.writers),
            ],
            archive: archive.map(|a| {
                [
                    relaxed(&a.uploaded),
                    relaxed(&a.bytes),
                    relaxed(&a.failures),
                    relaxed(&a.backlog),
                ]
            }),
            drains: drains.to_vec(),
            listeners: self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, limit)| (*name, limit.open() as u64))
                .collect(),
        };
        let mut now = Registry::default();
        now.register_collector(Box::new(scrape));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &now))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// What one scrape reads from the router, the persister, the archive and the drains.
#[derive(Debug)]
struct Scrape {
    published: u64,
    waited: u64,
    evicted: u64,
    forgotten: u64,
    retained_bytes: u64,
    retained_entries: u64,
    source_count: u64,
    max_sources: u64,
    awaited_sources: u64,
    /// Source id, envelopes (its newest seq), ring entries, ring bytes.
    sources: Vec<(String, u64, u64, u64)>,
    /// lines, bytes, lost, errors, rotations, deleted lines, open files.
    persister: [u64; 9],
    /// uploads, bytes, failures, backlog.
    archive: Option<[u64; 4]>,
    drains: Vec<DrainView>,
    listeners: Vec<(&'static str, u64)>,
}

fn one(e: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, v: u64) -> Fmt {
    let m = e.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(v as i64).encode(m),
    }
}

fn each<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Fmt {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let s = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(s)?,
            _ => ConstGauge::new(v as i64).encode(s)?,
        }
    }
    Ok(())
}

type Fmt = Result<(), std::fmt::Error>;

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        use MetricType::{Counter, Gauge};
        let e = &mut e;
        one(
            e,
            "sluice_router_published",
            "Envelopes published into the rings.",
            Counter,
            self.published,
        )?;
        one(
            e,
            "sluice_router_waited_for_persister",
            "Envelopes whose sender waited for the persister before a ring took them (when_behind: block).",
            Counter,
            self.waited,
        )?;
        one(
            e,
            "sluice_router_budget_evicted",
            "Envelopes evicted to keep all rings within the memory budget.",
            Counter,
            self.evicted,
        )?;
        one(
            e,
            "sluice_router_sources_forgotten",
            "Sources forgotten after router.forget_idle_secs without a line (their lines stay in storage).",
            Counter,
            self.forgotten,
        )?;
        one(
            e,
            "sluice_router_retained_bytes",
            "Bytes held by all rings.",
            Gauge,
            self.retained_bytes,
        )?;
        one(
            e,
            "sluice_router_retained_entries",
            "Envelopes held by all rings.",
            Gauge,
            self.retained_entries,
        )?;
        one(
            e,
            "sluice_router_sources",
            "Sources the router holds a ring for.",
            Gauge,
            self.source_count,
        )?;
        one(
            e,
            "sluice_router_max_sources",
            "Most sources the router holds (router.max_sources): a new source past it is refused.",
            Gauge,
            self.max_sources,
        )?;
        one(
            e,
            "sluice_router_awaited_sources",
            "Sources readers opened that have no line yet: past a tenth of router.max_sources a reader's new source is refused.",
            Gauge,
            self.awaited_sources,
        )?;
        let by_source = |f: fn(&(String, u64, u64, u64)) -> u64| {
            self.sources
                .iter()
                .map(move |s| ([("source", s.0.as_str())], f(s)))
        };
        each(
            e,
            "sluice_source_envelopes",
            "Envelopes a source has published (its newest seq), for the busiest sources (metrics.per_source_top).",
            Counter,
            by_source(|s| s.1),
        )?;
        each(
            e,
            "sluice_source_ring_entries",
            "Entries a source's ring holds, for the busiest sources.",
            Gauge,
            by_source(|s| s.2),
        )?;
        each(
            e,
            "sluice_source_ring_bytes",
            "Bytes a source's ring holds, for the busiest sources.",
            Gauge,
            by_source(|s| s.3),
        )?;
        let [
            lines,
            bytes,
            lost,
            errors,
            rotations,
            deleted,
            open,
            gathered,
            writers,
        ] = self.persister;
        one(
            e,
            "sluice_persister_lines",
            "Lines the persister wrote.",
            Counter,
            lines,
        )?;
        one(
            e,
            "sluice_persister_bytes",
            "Bytes the persister wrote.",
            Counter,
            bytes,
        )?;
        one(
            e,
            "sluice_persister_lost",
            "Lines the persister lost (overrun, or writes that kept failing).",
            Counter,
            lost,
        )?;
        one(
            e,
            "sluice_persister_errors",
            "Failed writes, syncs and rotations of log files (a full disk, say).",
            Counter,
            errors,
        )?;
        one(
            e,
            "sluice_persister_rotations",
            "Log files rotated.",
            Counter,
            rotations,
        )?;
        one(
            e,
            "sluice_persister_deleted_lines",
            "Lines in files that rotation deleted (max_files; with S3, keep_segments), each deletion announced.",
            Counter,
            deleted,
        )?;
        one(
            e,
            "sluice_persister_open_files",
            "Log files the persister holds open.",
            Gauge,
            open,
        )?;
        one(
            e,
            "sluice_persister_writers",
            "Writer threads of the persister, each with its own share of the sources.",
            Gauge,
            writers,
        )?;
        one(
            e,
            "sluice_persister_gathered_bytes",
            "Bytes of lines the persister holds unwritten: mostly sources whose files are closed, gathering for one write.",
            Gauge,
            gathered,
        )?;
        one(
            e,
            "sluice_persister_behind",
            "Envelopes published but neither written nor counted lost by the persister yet.",
            Gauge,
            self.published.saturating_sub(lines + lost),
        )?;
        if let Some([uploads, bytes, failures, backlog]) = self.archive {
            one(
                e,
                "sluice_archive_uploads",
                "Jobs archived to S3.",
                Counter,
                uploads,
            )?;
            one(
                e,
                "sluice_archive_bytes",
                "Compressed bytes uploaded to S3.",
                Counter,
                bytes,
            )?;
            one(
                e,
                "sluice_archive_failures",
                "Failed archive uploads (each is retried).",
                Counter,
                failures,
            )?;
            one(
                e,
                "sluice_archive_backlog",
                "Jobs waiting for their archive upload.",
                Gauge,
                backlog,
            )?;
        }
        let by_drain = |f: fn(&DrainView) -> u64| {
            self.drains
                .iter()
                .map(move |d| ([("drain", d.id.as_str()), ("url", d.url.as_str())], f(d)))
        };
        each(
            e,
            "sluice_drain_sent",
            "Messages a syslog drain delivered.",
            Counter,
            by_drain(|d| d.sent),
        )?;
        each(
            e,
            "sluice_drain_lost",
            "Messages overwritten before a syslog drain could send them.",
            Counter,
            by_drain(|d| d.lost),
        )?;
        each(
            e,
            "sluice_drain_errors",
            "Failed connections and writes of a syslog drain.",
            Counter,
            by_drain(|d| d.errors),
        )?;
        each(
            e,
            "sluice_drain_connected",
            "1 while a syslog drain is connected, 0 while it backs off.",
            Gauge,
            by_drain(|d| u64::from(d.connected)),
        )?;
        each(
            e,
            "sluice_connections_open",
            "Connections open now, by listener.",
            Gauge,
            self.listeners.iter().map(|&(l, n)| ([("listener", l)], n)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table names every reason a family counts.
    #[test]
    fn the_readme_lists_every_reason() {
        let readme = include_str!("../README.md");
        for reason in INGEST_MALFORMED
            .iter()
            .chain(&INGEST_REFUSED)
            .chain(&SYSLOG_REFUSED)
            .chain(&SYSLOG_MALFORMED)
        {
            assert!(readme.contains(&format!("`{reason}`")), "{reason}");
        }
    }
}
