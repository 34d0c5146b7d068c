//! The daemon's metrics (docs/observability.md): one [`Metrics`] per daemon run, holding
//! its own `prometheus-client` registry (no process-wide globals), shared as an `Arc` by
//! the parts that count: the daemon loop (AMI, calls), the outbox (CTI requests, outbox
//! depth) and the FastAGI `newcall` script (sessions, decision time). [`Metrics::encode`]
//! renders it for `GET /metrics` (see `admin`).
//!
//! The names are a contract: `azb_ami_connected`, `azb_ami_events_total`,
//! `azb_ami_reconnects_total`, `azb_calls_active`, `azb_cti_requests_total{event,outcome}`,
//! `azb_cti_request_duration_seconds{event}`, `azb_cti_outbox_depth`,
//! `azb_agi_sessions_total{outcome}`, `azb_agi_decision_seconds`; added here:
//! `azb_cti_outbox_full_total`. Counters are registered without their `_total` suffix, which
//! the OpenMetrics encoder appends. Every known label value is created at start (at 0), so
//! each series exists before its first event. Labels stay low-cardinality: no numbers, no
//! callIds.

use crate::zammad::cti::CtiEventKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// How a `newcall` session ended (for the log line and `azb_agi_sessions_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    Continue,
    Reject,
    Dial,
    /// Zammad did not answer within `agi.decision_timeout`.
    Timeout,
    /// Not a call Zammad hears of, or one it already heard of.
    NotClaimed,
    /// No AMI event confirmed the session's channel (same name, Uniqueid and Linkedid)
    /// within `agi.decision_timeout`: told `continue`; the call, if real, is reported
    /// from AMI.
    Unconfirmed,
    /// The session broke (Asterisk closed it, garbage, idle, too slow), or gave way to a
    /// new one while its environment block was still coming.
    Failed,
    /// Not taken: `agi.max_sessions` sessions were open already, or
    /// `agi.max_sessions_per_source` from its address.
    Overloaded,
    /// Closed after its environment block: `agi.secret` is set and its URL did not carry it.
    Refused,
}

impl SessionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Continue => "continue",
            SessionOutcome::Reject => "reject",
            SessionOutcome::Dial => "dial",
            SessionOutcome::Timeout => "timeout",
            SessionOutcome::NotClaimed => "not_claimed",
            SessionOutcome::Failed => "failed",
            SessionOutcome::Overloaded => "overloaded",
            SessionOutcome::Unconfirmed => "unconfirmed",
            SessionOutcome::Refused => "refused",
        }
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of one CTI request to Zammad (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtiOutcome {
    /// Zammad took it.
    Delivered,
    /// Zammad already had it (a second `newCall`): counts as delivered.
    Duplicate,
    /// Zammad did not take it; it is tried again.
    Retried,
    /// Zammad did not take a `newCall` and will not be asked again: the call is not reported.
    Refused,
    /// Given up on (an `answer` or `hangup` Zammad did not take), or not sent at all (the
    /// call's `newCall` was refused, or it came after the call's hangup).
    Dropped,
    /// Not delivered when the daemon stopped: kept in the state dir for the next start.
    Kept,
}

impl CtiOutcome {
    pub const ALL: [CtiOutcome; 6] = [
        CtiOutcome::Delivered,
        CtiOutcome::Duplicate,
        CtiOutcome::Retried,
        CtiOutcome::Refused,
        CtiOutcome::Dropped,
        CtiOutcome::Kept,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CtiOutcome::Delivered => "delivered",
            CtiOutcome::Duplicate => "duplicate",
            CtiOutcome::Retried => "retried",
            CtiOutcome::Refused => "refused",
            CtiOutcome::Dropped => "dropped",
            CtiOutcome::Kept => "kept",
        }
    }
}

const EVENTS: [CtiEventKind; 3] = [
    CtiEventKind::NewCall,
    CtiEventKind::Answer,
    CtiEventKind::Hangup,
];

const AGI_OUTCOMES: [SessionOutcome; 9] = [
    SessionOutcome::Continue,
    SessionOutcome::Reject,
    SessionOutcome::Dial,
    SessionOutcome::Timeout,
    SessionOutcome::NotClaimed,
    SessionOutcome::Unconfirmed,
    SessionOutcome::Failed,
    SessionOutcome::Overloaded,
    SessionOutcome::Refused,
];

/// Seconds: Zammad's requests and FastAGI decisions, from a few ms to past the timeouts.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every metric the daemon keeps, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    ami_connected: Gauge,
    ami_events: Counter,
    ami_reconnects: Counter,
    calls_active: Gauge,
    cti_requests: Family<Labels2, Counter>,
    cti_duration: Family<Labels1, Histogram, fn() -> Histogram>,
    /// The outbox's own count of undelivered events (it reads it back as its depth).
    outbox_depth: Gauge,
    outbox_full: Counter,
    agi_sessions: Family<Labels1, Counter>,
    agi_decision: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            ami_connected: Gauge::default(),
            ami_events: Counter::default(),
            ami_reconnects: Counter::default(),
            calls_active: Gauge::default(),
            cti_requests: Family::default(),
            cti_duration: Family::new_with_constructor(histogram),
            outbox_depth: Gauge::default(),
            outbox_full: Counter::default(),
            agi_sessions: Family::default(),
            agi_decision: histogram(),
        };
        // Every known series exists from the start, at 0.
        for event in EVENTS {
            for outcome in CtiOutcome::ALL {
                m.cti_requests.get_or_create_owned(&[
                    ("event", event.as_str()),
                    ("outcome", outcome.as_str()),
                ]);
            }
            m.cti_duration
                .get_or_create_owned(&[("event", event.as_str())]);
        }
        for outcome in AGI_OUTCOMES {
            m.agi_sessions
                .get_or_create_owned(&[("outcome", outcome.as_str())]);
        }
        let r = &mut m.registry;
        r.register(
            "azb_ami_connected",
            "1 while logged in to AMI, else 0",
            m.ami_connected.clone(),
        );
        r.register("azb_ami_events", "AMI events read", m.ami_events.clone());
        r.register(
            "azb_ami_reconnects",
            "AMI logins after the first (the connection was lost and came back)",
            m.ami_reconnects.clone(),
        );
        r.register(
            "azb_calls_active",
            "Calls the tracker follows",
            m.calls_active.clone(),
        );
        r.register(
            "azb_cti_requests",
            "CTI requests to Zammad by event and outcome (one per attempt; dropped also \
             counts events never sent)",
            m.cti_requests.clone(),
        );
        r.register_with_unit(
            "azb_cti_request_duration",
            "Time of one CTI request to Zammad",
            Unit::Seconds,
            m.cti_duration.clone(),
        );
        r.register(
            "azb_cti_outbox_depth",
            "Events waiting for Zammad",
            m.outbox_depth.clone(),
        );
        r.register(
            "azb_cti_outbox_full",
            "Calls not reported because the outbox was full (state.max_outbox)",
            m.outbox_full.clone(),
        );
        r.register(
            "azb_agi_sessions",
            "FastAGI newcall sessions by outcome",
            m.agi_sessions.clone(),
        );
        r.register_with_unit(
            "azb_agi_decision",
            "Time from a FastAGI newcall session's start to Zammad's decision (or the timeout)",
            Unit::Seconds,
            m.agi_decision.clone(),
        );
        m
    }

    /// The registry in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }

    pub fn set_ami_connected(&self, connected: bool) {
        self.ami_connected.set(i64::from(connected));
    }

    pub fn ami_event(&self) {
        self.ami_events.inc();
    }

    pub fn ami_reconnected(&self) {
        self.ami_reconnects.inc();
    }

    pub fn set_calls_active(&self, calls: usize) {
        self.calls_active
            .set(i64::try_from(calls).unwrap_or(i64::MAX));
    }

    /// One CTI request's outcome, and how long it took when it was sent.
    pub fn cti_request(&self, event: CtiEventKind, outcome: CtiOutcome, took: Option<Duration>) {
        self.cti_requests
            .get_or_create(&[("event", event.as_str()), ("outcome", outcome.as_str())])
            .inc();
        if let Some(took) = took {
            self.cti_duration
                .get_or_create(&[("event", event.as_str())])
                .observe(took.as_secs_f64());
        }
    }

    /// The gauge the outbox counts its undelivered events in (a shared handle).
    pub fn outbox_depth(&self) -> Gauge {
        self.outbox_depth.clone()
    }

    pub fn outbox_full(&self) {
        self.outbox_full.inc();
    }

    /// One FastAGI `newcall` session ended.
    pub fn agi_session(&self, outcome: SessionOutcome) {
        self.agi_sessions
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// How long a FastAGI session waited for Zammad's decision.
    pub fn agi_decision(&self, took: Duration) {
        self.agi_decision.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric name of docs/observability.md appears as a sample, before anything
    /// happened.
    #[test]
    fn every_contract_name_is_exposed_from_the_start() {
        let text = Metrics::new().encode();
        for name in [
            "azb_ami_connected ",
            "azb_ami_events_total ",
            "azb_ami_reconnects_total ",
            "azb_calls_active ",
            "azb_cti_requests_total{event=\"newCall\",outcome=\"delivered\"} 0",
            "azb_cti_request_duration_seconds_bucket{",
            "azb_cti_outbox_depth ",
            "azb_cti_outbox_full_total ",
            "azb_agi_sessions_total{outcome=\"timeout\"} 0",
            "azb_agi_decision_seconds_count ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn counts() {
        let m = Metrics::new();
        m.cti_request(
            CtiEventKind::Hangup,
            CtiOutcome::Retried,
            Some(Duration::from_millis(30)),
        );
        m.cti_request(CtiEventKind::Hangup, CtiOutcome::Dropped, None);
        m.set_ami_connected(true);
        m.outbox_depth().inc();
        let text = m.encode();
        for line in [
            "azb_cti_requests_total{event=\"hangup\",outcome=\"retried\"} 1",
            "azb_cti_requests_total{event=\"hangup\",outcome=\"dropped\"} 1",
            "azb_cti_request_duration_seconds_count{event=\"hangup\"} 1",
            "azb_cti_request_duration_seconds_bucket{le=\"0.05\",event=\"hangup\"} 1",
            "azb_ami_connected 1",
            "azb_cti_outbox_depth 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
