//! A stand-in for Zammad's Generic CTI endpoint, for tests and the in-process demo.
//!
//! Owns an axum server on `127.0.0.1:0` that answers `POST /api/v1/cti/{token}` the way
//! Zammad's code does (docs/zammad.md): the controller checks in their order,
//! form/JSON/query parameter parsing, the newCall block list and routing table, the
//! per-callId log with its `done` rules, Zammad's error bodies and their Accept-dependent
//! format, and what out-of-order and repeated events do. It also records every request,
//! checks the bridge against the rules for a bridge of docs/zammad.md (`violations`), and
//! injects faults: delay, failing statuses and HTML pages instead of handling a request,
//! and, after handling it, a reset connection or a proxy's 504 instead of the answer
//! ([`AfterFault`]). It does not model the customer lookup by number (docs/zammad.md,
//! "Numbers"), agents, `notify_map` or multipart bodies. The bridge's own code never
//! depends on it.
//!
//! Timestamps come from `tokio::time::Instant`, so tests with paused time control the
//! clock; durations are whole seconds of truncated timestamps counted from the stand-in's
//! start, as Zammad truncates its own.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Path prefix of the one route Zammad has for CTI.
const CTI_PREFIX: &str = "/api/v1/cti/";

/// Exact bodies of Zammad's current code (docs/zammad.md, "Checks before any event" and
/// "Errors and retries").
pub const BODY_DISABLED: &str =
    r#"{"error":"Feature is disabled, please contact your administrator!"}"#;
pub const BODY_NOT_CONFIGURED: &str =
    r#"{"error":"Feature not configured, please contact your admin!"}"#;
pub const BODY_INVALID_TOKEN: &str = r#"{"error":"Invalid token, please contact your admin!"}"#;
pub const BODY_INVALID_DIRECTION: &str = r#"{"error":"Invalid 'direction'!"}"#;
pub const BODY_NOT_FOUND: &str =
    r#"{"error":"This page doesn't exist.","error_human":"This page doesn't exist."}"#;
pub const BODY_ALREADY_EXISTS: &str =
    r#"{"error":"This object already exists.","error_human":"This object already exists."}"#;
pub const BODY_REJECT: &str = r#"{"action":"reject","reason":"busy"}"#;

/// One row of `cti_config.outbound.routing_table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Pattern for the raw `to`: `*` is one or more characters, anchored, nothing escaped.
    pub dest: String,
    pub caller_id: String,
}

impl Route {
    pub fn new(dest: &str, caller_id: &str) -> Route {
        Route {
            dest: dest.to_string(),
            caller_id: caller_id.to_string(),
        }
    }
}

/// How the stand-in starts. `Default` is an enabled, configured integration with no block
/// list, no routes and the token `fake-cti-token`.
#[derive(Debug, Clone)]
pub struct FakeZammadConfig {
    /// The setting `cti_token`, compared for plain equality with the path segment.
    pub token: String,
    /// The setting `cti_integration`.
    pub enabled: bool,
    /// Whether `cti_config` has its `inbound` and `outbound` parts.
    pub configured: bool,
    /// `inbound.block_caller_ids[].caller_id`, compared byte for byte with the raw `from`.
    pub blocked: Vec<String>,
    /// `outbound.routing_table`, tried in order.
    pub routes: Vec<Route>,
    /// `outbound.default_caller_id`; empty means none.
    pub default_caller_id: String,
    /// How long every request waits before it is handled.
    pub delay: Duration,
    /// Zammad before 5.0: an answer after the hangup is a 500 instead of an ignored 200.
    pub legacy: bool,
}

impl Default for FakeZammadConfig {
    fn default() -> Self {
        FakeZammadConfig {
            token: "fake-cti-token".into(),
            enabled: true,
            configured: true,
            blocked: Vec::new(),
            routes: Vec::new(),
            default_caller_id: String::new(),
            delay: Duration::ZERO,
            legacy: false,
        }
    }
}

/// `cti_logs.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    NewCall,
    Answer,
    Hangup,
}

/// One row of Zammad's caller log (`cti_logs`), plus counters the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub call_id: String,
    pub direction: String,
    pub state: LogState,
    pub done: bool,
    pub from: String,
    pub to: String,
    pub queue: String,
    pub from_comment: Option<String>,
    pub to_comment: Option<String>,
    /// The last `cause` stored (newCall, answer and hangup all overwrite it).
    pub comment: Option<String>,
    /// `start_at` is set: an answer was applied.
    pub answered: bool,
    /// `end_at` is set: a hangup was applied.
    pub hungup: bool,
    pub initialized_at: Instant,
    pub start_at: Option<Instant>,
    pub end_at: Option<Instant>,
    pub duration_waiting_time: Option<u64>,
    pub duration_talking_time: Option<u64>,
    /// Answers and hangups Zammad applied (not the ignored or refused ones).
    pub answers: u32,
    pub hangups: u32,
}

/// One HTTP request as the stand-in saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// 0 for the first request the stand-in received.
    pub seq: usize,
    /// When the stand-in's handler got the request (headers and body read).
    pub received_at: Instant,
    pub method: String,
    /// The raw path, token included: use [`RecordedRequest::token`] or
    /// [`RecordedRequest::redacted_path`] rather than printing it.
    pub path: String,
    pub query: Option<String>,
    /// Every header, in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub body: String,
    /// The parameters Zammad would see (body, then query string on top), as a JSON object.
    pub params: Value,
    /// The status answered; `None` while the request is still being handled, `Some(0)`
    /// when the connection was reset instead ([`AfterFault::Reset`]).
    pub status: Option<u16>,
    /// The status Zammad's own handling gave: `None` while in flight or when an injected
    /// fault answered instead of handling it (the request took no effect). It differs
    /// from `status` when an [`AfterFault`] replaced the answer after handling.
    pub handled: Option<u16>,
    /// When the handler finished (`received_at` to this is the stand-in's own time).
    pub answered_at: Option<Instant>,
    pub response_body: Option<String>,
}

impl RecordedRequest {
    /// The token segment of a CTI path, if the path is one.
    pub fn token(&self) -> Option<&str> {
        cti_token(&self.path)
    }

    /// The path with the token segment replaced by `***`.
    pub fn redacted_path(&self) -> String {
        match self.token() {
            Some(_) => format!("{CTI_PREFIX}***"),
            None => self.path.clone(),
        }
    }

    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `event` parameter, if it is a string.
    pub fn event(&self) -> Option<&str> {
        self.params.get("event").and_then(Value::as_str)
    }

    /// The callId Zammad would use (`callId` wins over `call_id`).
    pub fn call_id(&self) -> Option<String> {
        self.params.as_object().and_then(call_id_of)
    }
}

/// A breach of the rules for a bridge, with the request that showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The request's [`RecordedRequest::seq`].
    pub seq: usize,
    pub call_id: String,
    pub what: String,
}

/// What replaces Zammad's answer to a request it has handled: the request took effect,
/// but the client cannot tell (a proxy that gave up waiting, a connection lost on the way
/// back). See [`FakeZammad::fail_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFault {
    /// The connection is reset (TCP RST) instead of answering.
    Reset,
    /// nginx's 504 page instead of the answer.
    GatewayTimeout,
}

/// A running stand-in. Dropping it stops the server.
pub struct FakeZammad {
    addr: SocketAddr,
    token: String,
    shared: Arc<Shared>,
    /// Stops the accept loop and lets open connections finish (graceful shutdown).
    stop: CancellationToken,
}

impl std::fmt::Debug for FakeZammad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeZammad")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeZammad {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeZammad {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(config: FakeZammadConfig) -> std::io::Result<FakeZammad> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let token = config.token.clone();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            state: Mutex::new(State::new(config)),
            changed: Notify::new(),
            resets: Arc::default(),
        });
        let stop = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let stopped = stop.clone();
        let listener = ResettingListener {
            inner: listener,
            resets: shared.resets.clone(),
            accepted: 0,
        };
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<Connection>();
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "fake zammad stopped");
            }
        });
        Ok(FakeZammad {
            addr,
            token,
            shared,
            stop,
        })
    }

    /// The full CTI URL, token included, as Zammad's settings page shows it.
    pub fn url(&self) -> String {
        format!("http://{}{CTI_PREFIX}{}", self.addr, self.token)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The caller-log entry of one callId.
    pub fn log(&self, call_id: &str) -> Option<LogEntry> {
        self.shared.lock().logs.get(call_id).cloned()
    }

    /// Every caller-log entry, in creation order.
    pub fn calls(&self) -> Vec<LogEntry> {
        let state = self.shared.lock();
        state
            .order
            .iter()
            .filter_map(|id| state.logs.get(id).cloned())
            .collect()
    }

    /// Every breach of the rules for a bridge (docs/zammad.md, "What a bridge must keep
    /// to") seen so far, one line each, naming the callId.
    pub fn violations(&self) -> Vec<String> {
        self.shared
            .lock()
            .violations
            .iter()
            .map(|v| format!("callId {:?}: {}", v.call_id, v.what))
            .collect()
    }

    /// The same breaches, each with the request that showed it.
    pub fn violation_log(&self) -> Vec<Violation> {
        self.shared.lock().violations.clone()
    }

    /// Requests received so far, how many of them are still being handled, and when the
    /// last one arrived or was answered: cheaper than [`FakeZammad::requests`] for
    /// polling a long run.
    pub fn activity(&self) -> Activity {
        let state = self.shared.lock();
        Activity {
            requests: state.requests.len(),
            in_flight: state.in_flight.values().sum::<usize>() + state.in_flight_other,
            last: state.last_activity,
        }
    }

    /// The callIds of the caller log whose call has no hangup applied yet.
    pub fn open_calls(&self) -> Vec<String> {
        let state = self.shared.lock();
        state
            .order
            .iter()
            .filter(|id| state.logs.get(*id).is_some_and(|e| !e.hungup))
            .cloned()
            .collect()
    }

    /// The callIds of the caller log whose call has a hangup applied.
    pub fn hung_up(&self) -> HashSet<String> {
        let state = self.shared.lock();
        state
            .logs
            .values()
            .filter(|e| e.hungup)
            .map(|e| e.call_id.clone())
            .collect()
    }

    /// Waits until at least `n` requests have been answered (including ones whose client
    /// gave up waiting).
    pub async fn wait_for_answered(&self, n: usize) {
        loop {
            let notified = self.shared.changed.notified();
            if self.shared.lock().answered >= n {
                return;
            }
            notified.await;
        }
    }

    /// How long every following request waits before it is handled.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().config.delay = delay;
    }

    /// The next `n` requests get `status` without being handled: an HTML page when
    /// `html` (nginx's for 502/503/504, Rails' otherwise), else Zammad's error format.
    pub fn fail_next(&self, n: usize, status: u16, html: bool) {
        self.shared.lock().fail_next = Some((n, status, html));
    }

    /// Every request gets `status` without being handled, for `duration` or until
    /// [`FakeZammad::clear_faults`]. Bodies as in `fail_next`, HTML for 502/503/504.
    pub fn fail_for(&self, duration: Option<Duration>, status: u16) {
        let until = duration.map(|d| Instant::now() + d);
        self.shared.lock().fail_for = Some((until, status));
    }

    /// Every `every`-th request is handled as usual, and then the answer is replaced by
    /// `fault`, for `duration` or until [`FakeZammad::clear_faults`]. Counted over the
    /// requests handled meanwhile, from 1, so `every = 1` hits each one.
    pub fn fail_after(&self, duration: Option<Duration>, every: usize, fault: AfterFault) {
        let until = duration.map(|d| Instant::now() + d);
        self.shared.lock().fail_after = Some(FailAfter {
            until,
            every: every.max(1),
            fault,
            count: 0,
        });
    }

    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.fail_next = None;
        state.fail_for = None;
        state.fail_after = None;
    }

    pub fn set_blocked(&self, blocked: Vec<String>) {
        self.shared.lock().config.blocked = blocked;
    }

    pub fn set_routes(&self, routes: Vec<Route>, default_caller_id: &str) {
        let mut state = self.shared.lock();
        state.config.routes = routes;
        state.config.default_caller_id = default_caller_id.to_string();
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.shared.lock().config.enabled = enabled;
    }

    pub fn set_configured(&self, configured: bool) {
        self.shared.lock().config.configured = configured;
    }
}

/// See [`FakeZammad::activity`].
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    pub requests: usize,
    pub in_flight: usize,
    pub last: Option<Instant>,
}

struct Shared {
    /// Zero of the whole-second clock used for durations.
    epoch: Instant,
    state: Mutex<State>,
    /// Woken whenever a request has been answered.
    changed: Notify,
    /// Connections to reset at their next write, by the client's address.
    resets: Resets,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn secs(&self, t: Instant) -> u64 {
        t.duration_since(self.epoch).as_secs()
    }
}

struct State {
    config: FakeZammadConfig,
    requests: Vec<RecordedRequest>,
    logs: HashMap<String, LogEntry>,
    order: Vec<String>,
    violations: Vec<Violation>,
    /// The request being looked at (the lock is held meanwhile): what a violation names.
    current: usize,
    /// Requests of each callId that arrived and are not answered yet (one at a time:
    /// docs/zammad.md, "What a bridge must keep to").
    in_flight: HashMap<String, usize>,
    /// Requests without a callId not answered yet.
    in_flight_other: usize,
    last_activity: Option<Instant>,
    fail_next: Option<(usize, u16, bool)>,
    fail_for: Option<(Option<Instant>, u16)>,
    fail_after: Option<FailAfter>,
    answered: usize,
}

/// See [`FakeZammad::fail_after`].
struct FailAfter {
    until: Option<Instant>,
    every: usize,
    fault: AfterFault,
    /// Requests handled since it was set.
    count: usize,
}

impl State {
    fn new(config: FakeZammadConfig) -> State {
        State {
            config,
            requests: Vec::new(),
            logs: HashMap::new(),
            order: Vec::new(),
            violations: Vec::new(),
            current: 0,
            in_flight: HashMap::new(),
            in_flight_other: 0,
            last_activity: None,
            fail_next: None,
            fail_for: None,
            fail_after: None,
            answered: 0,
        }
    }

    fn violation(&mut self, call_id: &str, what: impl std::fmt::Display) {
        tracing::debug!(call_id, %what, "fake zammad saw a violation");
        self.violations.push(Violation {
            seq: self.current,
            call_id: call_id.to_string(),
            what: what.to_string(),
        });
    }

    /// The fault that replaces the answer to a request just handled, if any.
    fn take_after_fault(&mut self, now: Instant) -> Option<AfterFault> {
        let after = self.fail_after.as_mut()?;
        if after.until.is_some_and(|until| now >= until) {
            self.fail_after = None;
            return None;
        }
        after.count += 1;
        (after.count % after.every == 0).then_some(after.fault)
    }

    /// An injected fault for this request, if any: (status, html).
    fn take_fault(&mut self, now: Instant) -> Option<(u16, bool)> {
        if let Some((n, status, html)) = self.fail_next {
            self.fail_next = (n > 1).then_some((n - 1, status, html));
            if n > 0 {
                return Some((status, html));
            }
        }
        match self.fail_for {
            Some((Some(until), _)) if now >= until => {
                self.fail_for = None;
                None
            }
            Some((_, status)) => Some((status, (502..=504).contains(&status))),
            None => None,
        }
    }
}

/// What Zammad sends back, before the Accept header picks a format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// A 200 with this JSON body.
    Ok(String),
    /// A controller check failed: JSON whatever the Accept header says (docs/zammad.md,
    /// "Checks before any event").
    Controller(u16, &'static str),
    /// An exception went through the error handler: JSON or an HTML page per Accept
    /// (docs/zammad.md, "Errors and retries").
    Error(u16, String),
    /// An injected fault.
    Fault(u16, bool),
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    axum::extract::ConnectInfo(Connection(connection)): axum::extract::ConnectInfo<Connection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
    // Zammad handles a request to the end even when the client has gone: the work runs in
    // its own task so a client timeout does not cancel it.
    let task = tokio::spawn(serve_one(
        shared,
        connection,
        received_at,
        method,
        uri,
        headers,
        body,
    ));
    match task.await {
        Ok(response) => response,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn serve_one(
    shared: Arc<Shared>,
    connection: u64,
    received_at: Instant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = header_text(header::CONTENT_TYPE);
    let accept = header_text(header::ACCEPT);
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let parsed = parse_params(content_type.as_deref(), &body_text, uri.query());
    let params = match &parsed {
        Ok(map) => Value::Object(map.clone()),
        Err(()) => Value::Null,
    };
    let is_cti_post = method == Method::POST && cti_token(uri.path()).is_some();
    let call_id = params.as_object().and_then(call_id_of);

    let (seq, delay) = {
        let mut state = shared.lock();
        let seq = state.requests.len();
        state.requests.push(RecordedRequest {
            seq,
            received_at,
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_string(), v)
                })
                .collect(),
            content_type: content_type.clone(),
            accept: accept.clone(),
            body: body_text,
            params: params.clone(),
            status: None,
            handled: None,
            answered_at: None,
            response_body: None,
        });
        state.current = seq;
        state.last_activity = Some(received_at);
        if is_cti_post && let Value::Object(map) = &params {
            check_shape(&mut state, map, content_type.as_deref());
        }
        if let Some(id) = &call_id {
            let in_flight = state.in_flight.entry(id.clone()).or_insert(0);
            *in_flight += 1;
            if *in_flight > 1 {
                state.violation(id, "two requests of one call in flight at the same time");
            }
        } else {
            state.in_flight_other += 1;
        }
        (seq, state.config.delay)
    };

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let (reply, after) = {
        let mut state = shared.lock();
        state.current = seq;
        match state.take_fault(Instant::now()) {
            Some((status, html)) => (Reply::Fault(status, html), None),
            None => {
                let reply = if !is_cti_post {
                    Reply::Error(404, BODY_NOT_FOUND.to_string())
                } else {
                    match parsed {
                        Err(()) => Reply::Error(400, error_id_body()),
                        Ok(map) => {
                            let token = cti_token(uri.path()).unwrap_or_default();
                            process(&shared, &mut state, token, &map)
                        }
                    }
                };
                let after = state.take_after_fault(Instant::now());
                (reply, Some(after))
            }
        }
    };
    let (handled_status, content_type, body) = render(&reply, accept.as_deref());
    // `after`: `None` when a fault answered instead of handling; `Some(fault)` when the
    // request was handled (and `fault` replaces the answer).
    let (status, content_type, body) = match after {
        Some(Some(AfterFault::GatewayTimeout)) => render(&Reply::Fault(504, true), None),
        Some(Some(AfterFault::Reset)) => (0, content_type, body),
        _ => (handled_status, content_type, body),
    };

    {
        let mut state = shared.lock();
        match &call_id {
            Some(id) => {
                if let Some(n) = state.in_flight.get_mut(id) {
                    *n = n.saturating_sub(1);
                }
            }
            None => state.in_flight_other = state.in_flight_other.saturating_sub(1),
        }
        let now = Instant::now();
        if let Some(rec) = state.requests.get_mut(seq) {
            rec.status = Some(status);
            rec.handled = after.is_some().then_some(handled_status);
            rec.answered_at = Some(now);
            rec.response_body = Some(body.clone());
        }
        state.last_activity = Some(now);
        state.answered += 1;
        if status == 0 {
            // Registered before the answer is written: the connection's next write fails
            // and resets it.
            lock_resets(&shared.resets).insert(connection);
        }
    }
    shared.changed.notify_waiters();

    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The connections to reset at their next write, by [`Connection`] number. Not by the
/// client's address: a request keeps being handled after its client has gone (a killed
/// daemon), and a reset it then asks for must not hit a later connection that happens to
/// come from the same port.
type Resets = Arc<Mutex<HashSet<u64>>>;

fn lock_resets(resets: &Resets) -> MutexGuard<'_, HashSet<u64>> {
    resets.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection a request came on, numbered by the listener, as the handler learns it
/// (`ConnectInfo`).
#[derive(Debug, Clone, Copy)]
struct Connection(u64);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ResettingListener>>
    for Connection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ResettingListener>) -> Self {
        Connection(stream.io().id)
    }
}

/// The stand-in's listener: TCP connections that can be reset on request
/// ([`AfterFault::Reset`]).
struct ResettingListener {
    inner: TcpListener,
    resets: Resets,
    /// Connections accepted so far.
    accepted: u64,
}

impl axum::serve::Listener for ResettingListener {
    type Io = ResettableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, peer) = axum::serve::Listener::accept(&mut self.inner).await;
        self.accepted += 1;
        let stream = ResettableStream {
            inner,
            id: self.accepted,
            resets: self.resets.clone(),
        };
        (stream, peer)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose next write, once its number is in `resets`, fails and
/// leaves the socket to be closed with a zero linger: the client sees a reset.
struct ResettableStream {
    inner: TcpStream,
    id: u64,
    resets: Resets,
}

impl ResettableStream {
    fn reset_now(&self) -> Option<std::io::Error> {
        if !lock_resets(&self.resets).remove(&self.id) {
            return None;
        }
        if let Err(error) = self.inner.set_zero_linger() {
            return Some(error);
        }
        Some(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the stand-in resets this connection",
        ))
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(error) = self.reset_now() {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(error) = self.reset_now() {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The controller checks in Zammad's order, then the event (docs/zammad.md).
fn process(shared: &Shared, state: &mut State, token: &str, params: &Map<String, Value>) -> Reply {
    if !state.config.enabled {
        return Reply::Controller(422, BODY_DISABLED);
    }
    if !state.config.configured {
        return Reply::Controller(422, BODY_NOT_CONFIGURED);
    }
    if token != state.config.token {
        return Reply::Controller(401, BODY_INVALID_TOKEN);
    }
    let direction = match params.get("direction") {
        Some(Value::String(d)) if d == "in" || d == "out" => d.clone(),
        _ => return Reply::Controller(422, BODY_INVALID_DIRECTION),
    };
    let call_id = call_id_of(params);
    match params.get("event").and_then(Value::as_str) {
        Some("newCall") => new_call(state, &direction, call_id, params),
        Some("answer") => answer(shared, state, &direction, call_id, params),
        Some("hangup") => hangup(shared, state, &direction, call_id, params),
        // ArgumentError "Unknown event": 422 with an "Error ID" body.
        _ => Reply::Error(422, error_id_body()),
    }
}

fn new_call(
    state: &mut State,
    direction: &str,
    call_id: Option<String>,
    params: &Map<String, Value>,
) -> Reply {
    if let Some(id) = &call_id
        && let Some(entry) = state.logs.get(id)
    {
        let first = entry.direction.clone();
        state.violation(id, "duplicate newCall");
        if first != direction {
            state.violation(id, format!("direction changed from {first} to {direction}"));
        }
        return Reply::Error(500, BODY_ALREADY_EXISTS.to_string());
    }
    let raw_from = params.get("from");
    let raw_to = params.get("to");
    let mut reply = "{}".to_string();
    let mut from = text(raw_from);
    let to = text(raw_to);

    if direction == "in" {
        if let Some(Value::String(f)) = raw_from
            && state.config.blocked.iter().any(|b| b == f)
        {
            reply = BODY_REJECT.to_string();
        }
    } else if let Some(to_text) = to.as_deref().filter(|t| !t.is_empty()) {
        let routes = &state.config.routes;
        if !routes.is_empty() && !matches!(raw_to, Some(Value::String(_))) {
            // A numeric `to` breaks Zammad's pattern match (docs/zammad.md, "Request
            // bodies"): NoMethodError, 500.
            return Reply::Error(500, error_id_body());
        }
        let mut caller_id = None;
        for route in routes {
            match route_matches(&route.dest, to_text) {
                Some(true) => {
                    caller_id = Some(route.caller_id.clone());
                    break;
                }
                Some(false) => {}
                None => return Reply::Error(500, error_id_body()),
            }
        }
        if caller_id.is_none() && !state.config.default_caller_id.is_empty() {
            caller_id = Some(state.config.default_caller_id.clone());
        }
        if let Some(caller_id) = caller_id {
            reply = serde_json::json!({
                "action": "dial",
                "caller_id": caller_id,
                "number": to_text,
            })
            .to_string();
            from = Some(caller_id);
        }
    }

    // NOT NULL columns: "Attribute '…' required!" as a 422.
    let Some(call_id) = call_id else {
        return Reply::Error(422, attribute_required("call_id"));
    };
    let Some(from) = from else {
        return Reply::Error(422, attribute_required("from"));
    };
    let Some(to) = to else {
        return Reply::Error(422, attribute_required("to"));
    };
    let user = users_text(params.get("user"));
    let queue = match text(params.get("queue")) {
        Some(q) if !is_blank(&q) => q,
        _ if direction == "in" => to.clone(),
        _ => from.clone(),
    };
    let (from_comment, to_comment) = if direction == "in" {
        match user {
            Some(u) if !is_blank(&u) => (None, Some(u)),
            _ => (None, Some(queue.clone())),
        }
    } else {
        (user, None)
    };
    let entry = LogEntry {
        call_id: call_id.clone(),
        direction: direction.to_string(),
        state: LogState::NewCall,
        done: direction == "out",
        from,
        to,
        queue,
        from_comment,
        to_comment,
        comment: text(params.get("cause")),
        answered: false,
        hungup: false,
        initialized_at: Instant::now(),
        start_at: None,
        end_at: None,
        duration_waiting_time: None,
        duration_talking_time: None,
        answers: 0,
        hangups: 0,
    };
    if too_long(&entry) {
        // PostgreSQL refuses over-length values (docs/zammad.md, "Field limits"):
        // StatementInvalid, 422 "Error ID".
        return Reply::Error(422, error_id_body());
    }
    state.order.push(call_id.clone());
    state.logs.insert(call_id, entry);
    Reply::Ok(reply)
}

fn answer(
    shared: &Shared,
    state: &mut State,
    direction: &str,
    call_id: Option<String>,
    params: &Map<String, Value>,
) -> Reply {
    let id = call_id.unwrap_or_default();
    let legacy = state.config.legacy;
    let Some(entry) = state.logs.get(&id).cloned() else {
        state.violation(&id, "answer before newCall (unknown callId)");
        return Reply::Error(500, error_id_body());
    };
    if entry.direction != direction {
        let first = entry.direction.clone();
        state.violation(
            &id,
            format!("direction changed from {first} to {direction}"),
        );
    }
    if entry.state == LogState::Hangup {
        state.violation(&id, "answer after hangup");
        // Zammad ≥ 5.0 ignores it; before the fix for #3247 it crashed after ignoring it.
        return if legacy {
            Reply::Error(500, error_id_body())
        } else {
            Reply::Ok("{}".into())
        };
    }
    if entry.answers > 0 {
        state.violation(&id, "second answer");
    }
    let now = Instant::now();
    let mut updated = entry;
    updated.state = LogState::Answer;
    updated.start_at = Some(now);
    updated.answered = true;
    updated.answers += 1;
    updated.duration_waiting_time = Some(
        shared
            .secs(now)
            .saturating_sub(shared.secs(updated.initialized_at)),
    );
    updated.done = true;
    updated.comment = text(params.get("cause"));
    let user = params.get("user");
    if user.is_some() {
        updated.to_comment = users_text(user);
    }
    if too_long(&updated) {
        return Reply::Error(422, error_id_body());
    }
    state.logs.insert(id, updated);
    let answering = text(params.get("answeringNumber")).filter(|n| !n.is_empty());
    if direction == "in" && matches!(user, Some(Value::Array(_))) && answering.is_none() {
        // The agent lookup lower-cases `user`; an array raises, after the save
        // (docs/zammad.md, "answer").
        return Reply::Error(500, error_id_body());
    }
    Reply::Ok("{}".into())
}

fn hangup(
    shared: &Shared,
    state: &mut State,
    direction: &str,
    call_id: Option<String>,
    params: &Map<String, Value>,
) -> Reply {
    let id = call_id.unwrap_or_default();
    let Some(entry) = state.logs.get(&id).cloned() else {
        state.violation(&id, "hangup before newCall (unknown callId)");
        return Reply::Error(500, error_id_body());
    };
    if entry.direction != direction {
        let first = entry.direction.clone();
        state.violation(
            &id,
            format!("direction changed from {first} to {direction}"),
        );
    }
    if entry.hangups > 0 {
        state.violation(&id, "second hangup");
    }
    let cause = text(params.get("cause"));
    let mut done = true;
    if direction == "in" {
        let missed = entry.state == LogState::NewCall && cause.as_deref() != Some("forwarded");
        if missed || entry.to_comment.as_deref() == Some("voicemail") {
            done = false;
        }
    }
    let now = Instant::now();
    let mut updated = entry;
    updated.done = done;
    updated.state = LogState::Hangup;
    updated.end_at = Some(now);
    updated.hungup = true;
    updated.hangups += 1;
    updated.comment = cause;
    let end = shared.secs(now);
    if let Some(start) = updated.start_at {
        updated.duration_talking_time = Some(end.saturating_sub(shared.secs(start)));
    } else if updated.duration_waiting_time.is_none() {
        let init = shared.secs(updated.initialized_at);
        updated.duration_waiting_time = Some(end.saturating_sub(init));
    }
    if too_long(&updated) {
        return Reply::Error(422, error_id_body());
    }
    state.logs.insert(id, updated);
    Reply::Ok("{}".into())
}

/// Breaches of the rules for a bridge (docs/zammad.md) visible in one request's
/// parameters alone.
fn check_shape(state: &mut State, params: &Map<String, Value>, content_type: Option<&str>) {
    let id = call_id_of(params).unwrap_or_default();
    match (params.get("callId"), params.get("call_id")) {
        (None, None) => state.violation(&id, "request without callId"),
        (Some(a), Some(b)) if a != b => {
            state.violation(&id, format!("callId {a} and call_id {b} differ"));
        }
        _ => {}
    }
    if call_id_of(params).as_deref() == Some("") {
        state.violation(&id, "empty callId");
    }
    if !params.contains_key("direction") {
        state.violation(&id, "no direction");
    }
    if is_json(content_type) {
        for (key, value) in params {
            let values = match value {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for v in values {
                if !matches!(v, Value::String(_) | Value::Object(_)) {
                    state.violation(&id, format!("{key:?} is the JSON value {v}, not a string"));
                }
            }
        }
    }
    if params.get("event").and_then(Value::as_str) == Some("answer")
        && matches!(params.get("user"), Some(Value::Array(_)))
    {
        state.violation(&id, "user is an array on answer");
    }
}

/// The token segment of `/api/v1/cti/{token}`; `None` for any other path.
fn cti_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix(CTI_PREFIX)?;
    (!token.is_empty() && !token.contains('/')).then_some(token)
}

/// `callId` wins over `call_id` (Ruby's `||`: an empty string is still a value).
fn call_id_of(params: &Map<String, Value>) -> Option<String> {
    text(params.get("callId")).or_else(|| text(params.get("call_id")))
}

/// A parameter as the string a Rails column would store; `None` when absent or null.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `user` as Zammad stores it: a string, or an array joined with ", ".
fn users_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Array(items) => Some(
            items
                .iter()
                .map(|v| text(Some(v)).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => text(Some(other)),
    }
}

/// Ruby's `blank?` for strings.
fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Column sizes of `cti_logs` (docs/zammad.md, "Field limits"), in characters.
fn too_long(e: &LogEntry) -> bool {
    let over = |s: &str, max: usize| s.chars().count() > max;
    let over_opt = |s: &Option<String>, max: usize| s.as_deref().is_some_and(|s| over(s, max));
    over(&e.call_id, 250)
        || over(&e.direction, 20)
        || over(&e.from, 100)
        || over(&e.to, 100)
        || over(&e.queue, 250)
        || over_opt(&e.from_comment, 250)
        || over_opt(&e.to_comment, 250)
        || over_opt(&e.comment, 500)
}

/// Zammad's routing-table match: `dest` with `*` → `.+`, anchored, nothing else escaped.
/// `None` when the result is not a valid pattern (Zammad would raise).
fn route_matches(dest: &str, to: &str) -> Option<bool> {
    let pattern = format!("^(?:{})$", dest.replace('*', ".+"));
    regex::Regex::new(&pattern).ok().map(|re| re.is_match(to))
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        mime == "application/json" || mime.ends_with("+json")
    })
}

/// Rails' parameters: the body by its Content-Type (none means a url-encoded form), then
/// the query string merged on top. `Err` for a JSON body that does not parse.
fn parse_params(
    content_type: Option<&str>,
    body: &str,
    query: Option<&str>,
) -> Result<Map<String, Value>, ()> {
    let mime = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "application/x-www-form-urlencoded".into());
    let mut params = if is_json(content_type) {
        if body.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(body).map_err(|_| ())? {
                Value::Object(map) => map,
                // Rails files a non-object JSON body under `_json`.
                other => Map::from_iter([("_json".to_string(), other)]),
            }
        }
    } else if mime == "application/x-www-form-urlencoded" {
        parse_form(body)
    } else {
        Map::new()
    };
    if let Some(q) = query {
        params.extend(parse_form(q));
    }
    Ok(params)
}

/// `a=1&user[]=A&user[]=B`: `key[]` collects an array, a repeated plain key keeps the last.
fn parse_form(input: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for pair in input.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(k), Value::String(percent_decode(v)));
        if let Some(name) = key.strip_suffix("[]") {
            match map.get_mut(name) {
                Some(Value::Array(items)) => items.push(value),
                _ => {
                    map.insert(name.to_string(), Value::Array(vec![value]));
                }
            }
        } else {
            map.insert(key, value);
        }
    }
    map
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                Some(Ok(b)) => {
                    out.push(b);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn attribute_required(name: &str) -> String {
    serde_json::json!({ "error": format!("Attribute '{name}' required!") }).to_string()
}

/// `{"error":"Error ID ab12CD34: Please contact your administrator."}`.
fn error_id_body() -> String {
    let id: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(8)
        .collect();
    format!(r#"{{"error":"Error ID {id}: Please contact your administrator."}}"#)
}

const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// JSON for `application/json` or `*/*`; no Accept header (or another type) gets HTML.
fn wants_json(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mime = part.split(';').next().unwrap_or("").trim();
            mime == "application/json" || mime == "*/*"
        })
    })
}

fn render(reply: &Reply, accept: Option<&str>) -> (u16, &'static str, String) {
    match reply {
        Reply::Ok(body) => (200, JSON, body.clone()),
        Reply::Controller(status, body) => (*status, JSON, (*body).to_string()),
        Reply::Error(status, body) if wants_json(accept) => (*status, JSON, body.clone()),
        Reply::Error(status, _) => (*status, HTML, rails_page(*status)),
        Reply::Fault(status, true) if (502..=504).contains(status) => {
            (*status, HTML, nginx_page(*status))
        }
        Reply::Fault(status, true) => (*status, HTML, rails_page(*status)),
        Reply::Fault(status, false) => {
            let body = if *status == 500 {
                error_id_body()
            } else {
                let reason = StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error");
                serde_json::json!({ "error": reason }).to_string()
            };
            render(&Reply::Error(*status, body), accept)
        }
    }
}

/// Zammad's static error pages (public/{404,422,500}.html), shortened.
fn rails_page(status: u16) -> String {
    let title = match status {
        404 => "404: Requested resource was not found",
        401 => "401: Unauthorized",
        422 => "422: The change you wanted was rejected.",
        _ => "500: We're sorry, but something went wrong.",
    };
    format!(
        "<!DOCTYPE html>\n<html>\n<head>\n  <meta charset=\"utf-8\">\n  <title>Zammad</title>\n\
         </head>\n<body>\n  <div class=\"error-page\">\n    <h1>{title}</h1>\n    \
         <p>If you are the administrator of this service, please check the log files.</p>\n  \
         </div>\n</body>\n</html>\n"
    )
}

/// What nginx in front of Zammad shows when the upstream is away (nginx's own wording).
fn nginx_page(status: u16) -> String {
    let reason = match status {
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => "Error",
    };
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n\
         </body>\r\n</html>\r\n"
    )
}

#[cfg(test)]
mod tests {
    //! Expected values come from docs/zammad.md; the client is raw HTTP/1.1 so
    //! every header (or its absence) is under the test's control.

    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOKEN: &str = "fake-cti-token";
    const ERROR_ID_PREFIX: &str = r#"{"error":"Error ID "#;
    const ERROR_ID_SUFFIX: &str = r#": Please contact your administrator."}"#;

    #[derive(Debug)]
    struct Resp {
        status: u16,
        content_type: String,
        body: String,
    }

    impl Resp {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }
    }

    /// Sends one HTTP/1.1 request with exactly these headers.
    async fn raw(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: zammad.test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        Resp {
            status,
            content_type,
            body: body.to_string(),
        }
    }

    fn path(token: &str) -> String {
        format!("/api/v1/cti/{token}")
    }

    const JSON_HEADERS: &[(&str, &str)] = &[
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];

    async fn post(fz: &FakeZammad, body: Value) -> Resp {
        raw(
            fz.addr(),
            "POST",
            &path(TOKEN),
            JSON_HEADERS,
            &body.to_string(),
        )
        .await
    }

    async fn start() -> FakeZammad {
        FakeZammad::start(FakeZammadConfig::default())
            .await
            .unwrap()
    }

    /// A connection from local port `port` (0: any), ready to send.
    async fn connect_from(fz: &FakeZammad, port: u16) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap();
        socket.connect(fz.addr()).await.unwrap()
    }

    fn new_call_request(call_id: &str) -> String {
        let body = json!({"event": "newCall", "direction": "in", "callId": call_id,
            "from": "4930555", "to": "4930100"})
        .to_string();
        format!(
            "POST {} HTTP/1.1\r\nHost: zammad.test\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            path(TOKEN),
            body.len()
        )
    }

    #[tokio::test]
    async fn a_reset_asked_for_a_client_gone_does_not_hit_the_next_connection_from_its_port() {
        // A client (a daemon being killed) sends a newCall and is gone, hard (no
        // TIME_WAIT), before the slow answer; Zammad handles it to the end, and the
        // fault then asks for its connection to be reset.
        let fz = start().await;
        fz.set_delay(Duration::from_millis(300));
        fz.fail_after(None, 1, AfterFault::Reset);
        let mut gone = connect_from(&fz, 0).await;
        let port = gone.local_addr().unwrap().port();
        gone.write_all(new_call_request("c1").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone.set_zero_linger().unwrap();
        drop(gone);
        for _ in 0..100 {
            if fz.requests().first().is_some_and(|r| r.status.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fz.requests()[0].status, Some(0), "handled, then reset");
        // The next client comes from the same port: its answer is its own, not a reset.
        fz.clear_faults();
        fz.set_delay(Duration::ZERO);
        let mut next = connect_from(&fz, port).await;
        next.write_all(new_call_request("c2").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        next.read_to_end(&mut out)
            .await
            .expect("answered, not reset");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }

    fn new_call(dir: &str, id: &str, from: &str, to: &str) -> Value {
        json!({"event":"newCall","direction":dir,"callId":id,"from":from,"to":to})
    }

    fn answer(dir: &str, id: &str) -> Value {
        json!({"event":"answer","direction":dir,"callId":id,"from":"1","to":"2"})
    }

    fn hangup(dir: &str, id: &str, cause: &str) -> Value {
        json!({"event":"hangup","direction":dir,"callId":id,"from":"1","to":"2","cause":cause})
    }

    fn assert_error_id(resp: &Resp, status: u16) {
        assert_eq!(resp.status, status, "{resp:?}");
        let id = resp
            .body
            .strip_prefix(ERROR_ID_PREFIX)
            .and_then(|r| r.strip_suffix(ERROR_ID_SUFFIX))
            .unwrap_or_else(|| panic!("not an Error ID body: {resp:?}"));
        assert_eq!(id.len(), 8, "{resp:?}");
    }

    #[tokio::test]
    async fn controller_checks_run_in_zammads_order_and_are_always_json() {
        let ok = new_call("in", "c1", "4930111", "4940222");
        let no_dir = json!({"event":"newCall","callId":"c1","from":"1","to":"2"});
        let bad_dir = json!({"event":"newCall","direction":"IN","callId":"c1","from":"1","to":"2"});
        let disabled = r#"{"error":"Feature is disabled, please contact your administrator!"}"#;
        let unconfigured = r#"{"error":"Feature not configured, please contact your admin!"}"#;
        let bad_token = r#"{"error":"Invalid token, please contact your admin!"}"#;
        let bad_direction = r#"{"error":"Invalid 'direction'!"}"#;
        // (enabled, configured, token, body, status, response body)
        let cases = [
            // Configuration runs before the token: a wrong token is not noticed.
            (false, false, "wrong", &no_dir, 422, disabled),
            (false, true, TOKEN, &ok, 422, disabled),
            (true, false, "wrong", &no_dir, 422, unconfigured),
            (true, true, "wrong", &no_dir, 401, bad_token),
            (true, true, TOKEN, &no_dir, 422, bad_direction),
            (true, true, TOKEN, &bad_dir, 422, bad_direction),
        ];
        for (enabled, configured, token, body, status, want) in cases {
            let config = FakeZammadConfig {
                enabled,
                configured,
                ..FakeZammadConfig::default()
            };
            let fz = FakeZammad::start(config).await.unwrap();
            // No Accept header: controller errors are JSON anyway.
            let headers = [("Content-Type", "application/json")];
            let resp = raw(fz.addr(), "POST", &path(token), &headers, &body.to_string()).await;
            assert_eq!((resp.status, resp.body.as_str()), (status, want), "{body}");
            assert_eq!(resp.content_type, "application/json; charset=utf-8");
            assert!(fz.calls().is_empty());
        }
    }

    #[tokio::test]
    async fn unknown_event_is_422_error_id() {
        let fz = start().await;
        for event in ["NewCall", "ringing", ""] {
            let body = json!({"event":event,"direction":"in","callId":"c1","from":"1","to":"2"});
            assert_error_id(&post(&fz, body).await, 422);
        }
        let no_event = json!({"direction":"in","callId":"c1","from":"1","to":"2"});
        assert_error_id(&post(&fz, no_event).await, 422);
    }

    #[tokio::test]
    async fn only_post_to_the_cti_path_is_routed() {
        let fz = start().await;
        let body = new_call("in", "c1", "1", "2").to_string();
        let cases = [
            ("GET", path(TOKEN)),
            ("PUT", path(TOKEN)),
            ("POST", "/api/v1/cti/".to_string()),
            ("POST", "/api/v1/cti".to_string()),
            ("POST", "/api/v1/integration/cti/fake-cti-token".to_string()),
            ("POST", format!("{}/extra", path(TOKEN))),
        ];
        for (method, target) in cases {
            let resp = raw(fz.addr(), method, &target, JSON_HEADERS, &body).await;
            assert_eq!(
                (resp.status, resp.body.as_str()),
                (404, BODY_NOT_FOUND),
                "{method} {target}"
            );
        }
        assert_eq!(
            BODY_NOT_FOUND,
            r#"{"error":"This page doesn't exist.","error_human":"This page doesn't exist."}"#
        );
        // Without Accept the 404 is an HTML page.
        let resp = raw(fz.addr(), "GET", &path(TOKEN), &[], "").await;
        assert_eq!(resp.status, 404);
        assert!(resp.body.starts_with("<!DOCTYPE html>"), "{resp:?}");
        assert!(fz.calls().is_empty());
    }

    #[tokio::test]
    async fn inbound_new_call_is_stored_like_zammad() {
        let fz = start().await;
        let resp = post(&fz, new_call("in", "c1", "4930111", "4940222")).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "{}"));
        assert_eq!(resp.content_type, "application/json; charset=utf-8");
        let e = fz.log("c1").unwrap();
        assert_eq!(
            (e.state, e.done, e.direction.as_str()),
            (LogState::NewCall, false, "in")
        );
        assert_eq!((e.from.as_str(), e.to.as_str()), ("4930111", "4940222"));
        // queue defaults to `to`; a blank user puts the queue in to_comment.
        assert_eq!(e.queue, "4940222");
        assert_eq!(e.to_comment.as_deref(), Some("4940222"));
        assert_eq!((e.comment, e.answered, e.hungup), (None, false, false));

        let body = json!({"event":"newCall","direction":"in","callId":"c2","from":"1","to":"2",
            "user":["Alice","Bob"],"queue":"support","cause":"x"});
        assert_eq!(post(&fz, body).await.status, 200);
        let e = fz.log("c2").unwrap();
        assert_eq!(e.to_comment.as_deref(), Some("Alice, Bob"));
        assert_eq!(
            (e.queue.as_str(), e.comment.as_deref()),
            ("support", Some("x"))
        );

        let body = json!({"event":"newCall","direction":"out","callId":"c3","from":"4930111",
            "to":"4940222","user":"Alice"});
        assert_eq!(post(&fz, body).await.body, "{}");
        let e = fz.log("c3").unwrap();
        assert!(e.done, "outbound calls are done from the start");
        assert_eq!(
            (e.queue.as_str(), e.from_comment.as_deref(), e.to_comment),
            ("4930111", Some("Alice"), None)
        );
        let ids: Vec<_> = fz.calls().into_iter().map(|e| e.call_id).collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
    }

    #[tokio::test]
    async fn duplicate_new_call_is_500_already_exists_and_keeps_the_first() {
        let fz = start().await;
        assert_eq!(
            post(&fz, new_call("in", "c1", "111", "222")).await.status,
            200
        );
        let resp = post(&fz, new_call("in", "c1", "333", "444")).await;
        assert_eq!(resp.status, 500);
        assert_eq!(
            resp.body,
            r#"{"error":"This object already exists.","error_human":"This object already exists."}"#
        );
        assert_eq!(fz.log("c1").unwrap().from, "111");
    }

    #[tokio::test]
    async fn answer_and_hangup_for_unknown_call_are_500_and_store_nothing() {
        let fz = start().await;
        assert_error_id(&post(&fz, answer("in", "nope")).await, 500);
        assert_error_id(&post(&fz, hangup("in", "nope", "cancel")).await, 500);
        let no_id = json!({"event":"hangup","direction":"in"});
        assert_error_id(&post(&fz, no_id).await, 500);
        assert!(fz.calls().is_empty());
    }

    #[tokio::test]
    async fn missing_and_over_length_fields_are_422() {
        let fz = start().await;
        let no_from = json!({"event":"newCall","direction":"in","callId":"c1","to":"2"});
        let resp = post(&fz, no_from).await;
        assert_eq!(
            (resp.status, resp.json()["error"].clone()),
            (422, json!("Attribute 'from' required!"))
        );
        let null_to =
            json!({"event":"newCall","direction":"in","callId":"c1","from":"1","to":null});
        assert_eq!(post(&fz, null_to).await.status, 422);
        let no_id = json!({"event":"newCall","direction":"in","from":"1","to":"2"});
        assert_eq!(post(&fz, no_id).await.status, 422);
        // from/to hold 100 characters, callId 250, comment (cause) 500.
        assert_eq!(
            post(&fz, new_call("in", "c100", &"1".repeat(100), "2"))
                .await
                .status,
            200
        );
        assert_error_id(
            &post(&fz, new_call("in", "c101", &"1".repeat(101), "2")).await,
            422,
        );
        assert_error_id(
            &post(&fz, new_call("in", &"x".repeat(251), "1", "2")).await,
            422,
        );
        assert_eq!(
            post(&fz, new_call("in", &"x".repeat(250), "1", "2"))
                .await
                .status,
            200
        );
        assert_error_id(
            &post(&fz, hangup("in", "c100", &"c".repeat(501))).await,
            422,
        );
        assert_eq!(fz.log("c100").unwrap().state, LogState::NewCall);
        // Nothing of the refused ones was stored.
        assert_eq!(fz.calls().len(), 2);
    }

    #[tokio::test]
    async fn block_list_is_exact_string_equality_on_inbound_from() {
        let fz = FakeZammad::start(FakeZammadConfig {
            blocked: vec!["4930123456".into(), "anonymous".into()],
            ..FakeZammadConfig::default()
        })
        .await
        .unwrap();
        let reject = r#"{"action":"reject","reason":"busy"}"#;
        let cases = [
            ("in", json!("4930123456"), reject),
            ("in", json!("+4930123456"), "{}"),
            ("in", json!("004930123456"), "{}"),
            ("in", json!("030123456"), "{}"),
            ("in", json!("anonymous"), reject),
            ("in", json!("Anonymous"), "{}"),
            // A number is not the string "4930123456" (docs/zammad.md, "Request bodies").
            ("in", json!(4930123456u64), "{}"),
            // The block list is inbound only.
            ("out", json!("4930123456"), "{}"),
        ];
        for (i, (dir, from, want)) in cases.into_iter().enumerate() {
            let id = format!("b{i}");
            let body =
                json!({"event":"newCall","direction":dir,"callId":id,"from":from,"to":"4940222"});
            let resp = post(&fz, body).await;
            assert_eq!(
                (resp.status, resp.body.as_str()),
                (200, want),
                "{dir} {from}"
            );
            // A blocked call is still logged, not done.
            let e = fz.log(&id).unwrap();
            assert_eq!(
                (e.state, e.done),
                (LogState::NewCall, dir == "out"),
                "{dir} {from}"
            );
        }
        fz.set_blocked(vec!["4930999".into()]);
        assert_eq!(
            post(&fz, new_call("in", "late", "4930999", "1")).await.body,
            reject
        );
        assert_eq!(
            post(&fz, new_call("in", "late2", "4930123456", "1"))
                .await
                .body,
            "{}"
        );
    }

    #[tokio::test]
    async fn routing_table_rewrites_outbound_caller_id() {
        // The configuration behind Zammad's own doc samples (docs/zammad.md, "newCall").
        let fz = FakeZammad::start(FakeZammadConfig {
            routes: vec![
                Route::new("4989*", "498999998145"),
                Route::new("4930*", "493023125877"),
            ],
            default_caller_id: "496990009111".into(),
            ..FakeZammadConfig::default()
        })
        .await
        .unwrap();
        let dial = |caller_id: &str, number: &str| json!({"action":"dial","caller_id":caller_id,"number":number});
        let cases = [
            ("4989123", dial("498999998145", "4989123")),
            ("4930609854189", dial("493023125877", "4930609854189")),
            ("492214710334", dial("496990009111", "492214710334")),
            // `*` is one or more characters: `4930*` does not match `4930`; the default does.
            ("4930", dial("496990009111", "4930")),
        ];
        for (i, (to, want)) in cases.into_iter().enumerate() {
            let id = format!("r{i}");
            let resp = post(&fz, new_call("out", &id, "201", to)).await;
            assert_eq!((resp.status, resp.json()), (200, want.clone()), "to {to}");
            let e = fz.log(&id).unwrap();
            let caller_id = want["caller_id"].as_str().unwrap();
            // `from` is overwritten, and the default queue follows it.
            assert_eq!((e.from.as_str(), e.queue.as_str()), (caller_id, caller_id));
        }
        // No default: no match means `{}`, and `41*` does not match `41`.
        fz.set_routes(
            vec![Route::new("41*", "41999"), Route::new("4*", "40000")],
            "",
        );
        let cases = [
            (
                "41",
                r#"{"action":"dial","caller_id":"40000","number":"41"}"#,
            ),
            (
                "411",
                r#"{"action":"dial","caller_id":"41999","number":"411"}"#,
            ),
            ("31", "{}"),
            ("4", "{}"),
        ];
        for (to, want) in cases {
            let id = format!("t{to}");
            let resp = post(&fz, new_call("out", &id, "201", to)).await;
            assert_eq!(
                resp.json(),
                serde_json::from_str::<Value>(want).unwrap(),
                "to {to}"
            );
        }
        assert_eq!(fz.log("t31").unwrap().from, "201");
        // Inbound calls are never rewritten.
        assert_eq!(
            post(&fz, new_call("in", "in1", "201", "411")).await.body,
            "{}"
        );
        // A numeric `to` with a routing table breaks Zammad: 500, nothing stored.
        let numeric =
            json!({"event":"newCall","direction":"out","callId":"n1","from":"201","to":411});
        assert_error_id(&post(&fz, numeric).await, 500);
        assert!(fz.log("n1").is_none());
    }

    #[tokio::test]
    async fn form_bodies_query_strings_and_call_id_aliases() {
        let fz = start().await;
        let form = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
        ];
        let body = "event=newCall&direction=in&callId=f1&from=4930111&to=4940222&user%5B%5D=Alice+A&user[]=Bob";
        let resp = raw(fz.addr(), "POST", &path(TOKEN), &form, body).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "{}"));
        assert_eq!(
            fz.log("f1").unwrap().to_comment.as_deref(),
            Some("Alice A, Bob")
        );
        let rec = fz.requests().pop().unwrap();
        assert_eq!(rec.params["user"], json!(["Alice A", "Bob"]));

        // Query-string parameters are merged into an empty POST.
        let target = format!(
            "{}?event=newCall&direction=out&call_id=q1&from=201&to=4940222",
            path(TOKEN)
        );
        assert_eq!(raw(fz.addr(), "POST", &target, &form, "").await.status, 200);
        assert!(fz.log("q1").is_some());

        // callId wins over call_id.
        let both = json!({"event":"newCall","direction":"in","callId":"a1","call_id":"b1","from":"1","to":"2"});
        assert_eq!(post(&fz, both).await.status, 200);
        assert!(fz.log("a1").is_some());
        assert!(fz.log("b1").is_none());
        let snake = json!({"event":"hangup","direction":"in","call_id":"a1","cause":"cancel"});
        assert_eq!(post(&fz, snake).await.status, 200);
        assert!(fz.log("a1").unwrap().hungup);
    }

    #[tokio::test]
    async fn json_without_content_type_is_read_as_a_form() {
        let fz = start().await;
        let body = new_call("in", "c1", "1", "2").to_string();
        let resp = raw(
            fz.addr(),
            "POST",
            &path(TOKEN),
            &[("Accept", "application/json")],
            &body,
        )
        .await;
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (422, r#"{"error":"Invalid 'direction'!"}"#)
        );
        assert!(fz.calls().is_empty());
    }

    #[tokio::test]
    async fn error_format_follows_the_accept_header() {
        let fz = start().await;
        let ct = ("Content-Type", "application/json");
        let body = answer("in", "nope").to_string();
        let cases: [(&[(&str, &str)], bool); 5] = [
            (&[ct], false),
            (&[ct, ("Accept", "text/html")], false),
            (&[ct, ("Accept", "application/json")], true),
            (&[ct, ("Accept", "*/*")], true),
            (
                &[ct, ("Accept", "text/plain, application/json;q=0.9")],
                true,
            ),
        ];
        for (headers, json) in cases {
            let resp = raw(fz.addr(), "POST", &path(TOKEN), headers, &body).await;
            assert_eq!(resp.status, 500, "{headers:?}");
            if json {
                assert_error_id(&resp, 500);
            } else {
                assert!(resp.body.starts_with("<!DOCTYPE html>"), "{resp:?}");
                assert!(
                    resp.body
                        .contains("500: We're sorry, but something went wrong"),
                    "{resp:?}"
                );
                assert_eq!(resp.content_type, "text/html; charset=utf-8");
            }
        }
    }

    #[tokio::test]
    async fn done_follows_zammads_rules() {
        // (direction, answered with user, hangup direction, cause, done)
        let cases = [
            ("in", None, "in", "cancel", false),
            ("in", None, "in", "noAnswer", false),
            ("in", None, "in", "forwarded", true),
            ("in", Some("Alice"), "in", "normalClearing", true),
            ("in", Some("voicemail"), "in", "normalClearing", false),
            // Keyed on the hangup's direction.
            ("in", None, "out", "cancel", true),
            ("out", None, "out", "cancel", true),
            ("out", Some("x"), "out", "normalClearing", true),
        ];
        for (i, (dir, answered_by, hangup_dir, cause, done)) in cases.into_iter().enumerate() {
            let fz = start().await;
            let id = format!("d{i}");
            assert_eq!(post(&fz, new_call(dir, &id, "1", "2")).await.status, 200);
            if let Some(user) = answered_by {
                let mut a = answer(dir, &id);
                a["user"] = json!(user);
                assert_eq!(post(&fz, a).await.body, "{}");
                let e = fz.log(&id).unwrap();
                assert_eq!(
                    (e.state, e.done, e.to_comment.as_deref()),
                    (LogState::Answer, true, Some(user))
                );
            }
            assert_eq!(post(&fz, hangup(hangup_dir, &id, cause)).await.body, "{}");
            let e = fz.log(&id).unwrap();
            assert_eq!(
                (e.state, e.done, e.comment.as_deref()),
                (LogState::Hangup, done, Some(cause)),
                "case {i}"
            );
        }
    }

    #[tokio::test]
    async fn a_second_hangup_flips_a_missed_call_to_done() {
        let fz = start().await;
        post(&fz, new_call("in", "c1", "1", "2")).await;
        post(&fz, hangup("in", "c1", "cancel")).await;
        assert!(!fz.log("c1").unwrap().done);
        assert_eq!(post(&fz, hangup("in", "c1", "cancel")).await.body, "{}");
        let e = fz.log("c1").unwrap();
        assert!(e.done);
        assert_eq!(e.hangups, 2);
        assert_eq!(fz.violations(), [r#"callId "c1": second hangup"#]);
    }

    #[tokio::test]
    async fn answer_after_hangup_is_ignored_or_500_in_legacy_mode() {
        for legacy in [false, true] {
            let fz = FakeZammad::start(FakeZammadConfig {
                legacy,
                ..FakeZammadConfig::default()
            })
            .await
            .unwrap();
            post(&fz, new_call("in", "c1", "1", "2")).await;
            post(&fz, hangup("in", "c1", "cancel")).await;
            let resp = post(&fz, answer("in", "c1")).await;
            if legacy {
                assert_error_id(&resp, 500);
            } else {
                assert_eq!((resp.status, resp.body.as_str()), (200, "{}"));
            }
            let e = fz.log("c1").unwrap();
            assert_eq!(
                (e.state, e.done, e.answered),
                (LogState::Hangup, false, false)
            );
        }
    }

    #[tokio::test]
    async fn answer_user_overwrites_to_comment_and_an_array_breaks_after_saving() {
        let fz = start().await;
        let mut nc = new_call("in", "c1", "1", "2");
        nc["user"] = json!("Alice");
        post(&fz, nc).await;
        let mut a = answer("in", "c1");
        a["user"] = json!("");
        assert_eq!(post(&fz, a).await.status, 200);
        assert_eq!(fz.log("c1").unwrap().to_comment.as_deref(), Some(""));

        post(&fz, new_call("in", "c2", "1", "2")).await;
        let mut a = answer("in", "c2");
        a["user"] = json!(["Alice", "Bob"]);
        assert_error_id(&post(&fz, a.clone()).await, 500);
        let e = fz.log("c2").unwrap();
        assert_eq!(
            (e.state, e.done),
            (LogState::Answer, true),
            "saved before the error"
        );

        post(&fz, new_call("in", "c3", "1", "2")).await;
        a["callId"] = json!("c3");
        a["answeringNumber"] = json!("4930123456201");
        assert_eq!(post(&fz, a).await.status, 200);
    }

    #[tokio::test]
    async fn violations_are_reported_per_call_id() {
        let fz = start().await;
        post(&fz, answer("in", "v1")).await;
        post(&fz, new_call("in", "v1", "1", "2")).await;
        post(&fz, new_call("in", "v1", "1", "2")).await;
        post(&fz, answer("in", "v1")).await;
        post(&fz, answer("out", "v1")).await;
        post(&fz, hangup("in", "v1", "normalClearing")).await;
        post(&fz, hangup("in", "v1", "normalClearing")).await;
        post(&fz, answer("in", "v1")).await;
        post(
            &fz,
            json!({"event":"newCall","direction":"in","callId":"v2","from":4930111,"to":"2"}),
        )
        .await;
        post(&fz, new_call("in", "", "1", "2")).await;
        post(&fz, json!({"event":"newCall","direction":"in","callId":"v3","call_id":"x","from":"1","to":"2"})).await;
        let mut a = answer("in", "v3");
        a["user"] = json!(["A", "B"]);
        a["answeringNumber"] = json!("4930201");
        post(&fz, a).await;
        post(
            &fz,
            json!({"event":"newCall","callId":"v4","from":"1","to":"2"}),
        )
        .await;
        let want = [
            r#"callId "v1": answer before newCall (unknown callId)"#,
            r#"callId "v1": duplicate newCall"#,
            r#"callId "v1": second answer"#,
            r#"callId "v1": direction changed from in to out"#,
            r#"callId "v1": second hangup"#,
            r#"callId "v1": answer after hangup"#,
            r#"callId "v2": "from" is the JSON value 4930111, not a string"#,
            r#"callId "": empty callId"#,
            r#"callId "v3": callId "v3" and call_id "x" differ"#,
            r#"callId "v3": user is an array on answer"#,
            r#"callId "v4": no direction"#,
        ];
        let got = fz.violations();
        // `second answer` and `direction changed` come from the same request.
        let mut got_sorted = got.clone();
        let mut want_sorted = want.map(String::from).to_vec();
        got_sorted.sort();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "{got:#?}");
    }

    #[tokio::test]
    async fn clean_calls_have_no_violations() {
        let fz = start().await;
        for (dir, id) in [("in", "ok1"), ("out", "ok2")] {
            post(&fz, new_call(dir, id, "4930111", "4940222")).await;
            post(&fz, answer(dir, id)).await;
            post(&fz, hangup(dir, id, "normalClearing")).await;
        }
        assert_eq!(fz.violations(), Vec::<String>::new());
        assert_eq!(fz.requests().len(), 6);
    }

    #[tokio::test]
    async fn concurrent_requests_of_one_call_are_a_violation() {
        let fz = start().await;
        post(&fz, new_call("in", "c1", "1", "2")).await;
        post(&fz, new_call("in", "c2", "1", "2")).await;
        fz.set_delay(Duration::from_millis(200));
        // Different calls in parallel are fine.
        tokio::join!(post(&fz, answer("in", "c2")), post(&fz, answer("in", "c1")));
        assert_eq!(fz.violations(), Vec::<String>::new());
        tokio::join!(
            post(&fz, answer("in", "c1")),
            post(&fz, hangup("in", "c1", "x"))
        );
        let v = fz.violations();
        assert!(
            v.contains(
                &r#"callId "c1": two requests of one call in flight at the same time"#.to_string()
            ),
            "{v:#?}"
        );
    }

    #[tokio::test]
    async fn injected_faults_answer_without_handling() {
        let fz = start().await;
        fz.fail_next(2, 503, true);
        for _ in 0..2 {
            let resp = post(&fz, new_call("in", "c1", "1", "2")).await;
            assert_eq!(resp.status, 503);
            let h1 = "<h1>503 Service Temporarily Unavailable</h1>";
            assert!(resp.body.contains(h1), "{resp:?}");
        }
        assert!(fz.log("c1").is_none());
        assert_eq!(post(&fz, new_call("in", "c1", "1", "2")).await.status, 200);

        fz.fail_next(1, 500, true);
        let resp = post(&fz, answer("in", "c1")).await;
        assert_eq!(resp.status, 500);
        assert!(
            resp.body
                .contains("500: We're sorry, but something went wrong"),
            "{resp:?}"
        );
        fz.fail_next(1, 500, false);
        assert_error_id(&post(&fz, answer("in", "c1")).await, 500);
        assert!(!fz.log("c1").unwrap().answered);

        fz.fail_for(None, 502);
        for _ in 0..3 {
            assert_eq!(post(&fz, answer("in", "c1")).await.status, 502);
        }
        fz.clear_faults();
        assert_eq!(post(&fz, answer("in", "c1")).await.status, 200);

        fz.fail_for(Some(Duration::from_millis(100)), 504);
        assert_eq!(post(&fz, hangup("in", "c1", "x")).await.status, 504);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(post(&fz, hangup("in", "c1", "x")).await.status, 200);
    }

    #[tokio::test]
    async fn after_faults_replace_the_answer_once_handled() {
        let fz = start().await;
        fz.fail_after(None, 2, AfterFault::GatewayTimeout);
        assert_eq!(post(&fz, new_call("in", "c1", "1", "2")).await.status, 200);
        let resp = post(&fz, answer("in", "c1")).await;
        assert_eq!(resp.status, 504, "{resp:?}");
        assert!(
            resp.body.contains("<h1>504 Gateway Time-out</h1>"),
            "{resp:?}"
        );
        assert!(fz.log("c1").unwrap().answered, "handled before the 504");

        fz.fail_after(None, 1, AfterFault::Reset);
        let mut stream = tokio::net::TcpStream::connect(fz.addr()).await.unwrap();
        let body = hangup("in", "c1", "normalClearing").to_string();
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: zammad.test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            path(TOKEN),
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let read = stream.read_to_end(&mut out).await;
        assert!(
            out.is_empty(),
            "no answer, only a reset: {read:?} {:?}",
            String::from_utf8_lossy(&out)
        );
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(fz.log("c1").unwrap().hungup, "handled before the reset");
        let recs = fz.requests();
        let last = recs.last().unwrap();
        assert_eq!((last.status, last.handled), (Some(0), Some(200)));
        assert_eq!(recs[1].status, Some(504));
        assert_eq!(recs[1].handled, Some(200));

        fz.clear_faults();
        fz.fail_next(1, 503, true);
        let resp = post(&fz, new_call("in", "c2", "1", "2")).await;
        assert_eq!(resp.status, 503);
        let recs = fz.requests();
        assert_eq!(
            recs.last().unwrap().handled,
            None,
            "a fault before handling"
        );
        assert_eq!(post(&fz, new_call("in", "c2", "1", "2")).await.status, 200);
        assert_eq!(fz.activity().in_flight, 0);
        assert_eq!(fz.open_calls(), vec!["c2".to_string()]);
        assert!(fz.hung_up().contains("c1"));
        assert_eq!(
            fz.violation_log(),
            Vec::<Violation>::new(),
            "no rule of a bridge broken"
        );
    }

    #[tokio::test]
    async fn requests_are_recorded_with_headers_and_responses() {
        let fz = start().await;
        post(&fz, new_call("in", "c1", "1", "2")).await;
        raw(fz.addr(), "GET", "/x", &[], "").await;
        let recs = fz.requests();
        assert_eq!(recs.len(), 2);
        let r = &recs[0];
        assert_eq!(
            (r.seq, r.method.as_str(), r.path.as_str()),
            (0, "POST", "/api/v1/cti/fake-cti-token")
        );
        assert_eq!(
            (r.token(), r.redacted_path().as_str()),
            (Some(TOKEN), "/api/v1/cti/***")
        );
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.accept.as_deref(), Some("application/json"));
        assert_eq!(r.header("host"), Some("zammad.test"));
        assert_eq!(
            (r.event(), r.call_id().as_deref()),
            (Some("newCall"), Some("c1"))
        );
        assert_eq!(
            (r.status, r.response_body.as_deref()),
            (Some(200), Some("{}"))
        );
        assert_eq!(
            (recs[1].seq, recs[1].status, recs[1].token()),
            (1, Some(404), None)
        );
        assert!(recs[1].received_at >= r.received_at);
    }

    #[tokio::test(start_paused = true)]
    async fn durations_are_whole_seconds_of_zammads_clock() {
        let fz = start().await;
        post(&fz, new_call("in", "c1", "1", "2")).await;
        tokio::time::advance(Duration::from_millis(3_400)).await;
        post(&fz, answer("in", "c1")).await;
        tokio::time::advance(Duration::from_millis(5_900)).await;
        post(&fz, hangup("in", "c1", "normalClearing")).await;
        let e = fz.log("c1").unwrap();
        // Truncated timestamps: 0 → 3 → 9 seconds.
        assert_eq!(
            (e.duration_waiting_time, e.duration_talking_time),
            (Some(3), Some(6))
        );

        post(&fz, new_call("in", "c2", "1", "2")).await;
        tokio::time::advance(Duration::from_secs(7)).await;
        post(&fz, hangup("in", "c2", "cancel")).await;
        let e = fz.log("c2").unwrap();
        assert_eq!(
            (e.duration_waiting_time, e.duration_talking_time),
            (Some(7), None)
        );
    }

    #[test]
    fn form_parsing_and_percent_decoding() {
        let check = |input: &str, want: Value| {
            assert_eq!(Value::Object(parse_form(input)), want, "{input}")
        };
        check(
            "a=1&b=x+y&c=%2B49%20",
            json!({"a":"1","b":"x y","c":"+49 "}),
        );
        check("user[]=A&user[]=B&user[]=", json!({"user":["A","B",""]}));
        check("a=1&a=2", json!({"a":"2"}));
        check("a&b=", json!({"a":"","b":""}));
        check("x=%zz%4", json!({"x":"%zz%4"}));
        check("n=M%C3%BCller", json!({"n":"Müller"}));
    }
}
