//! A stand-in for Zammad's Generic CTI endpoint, for tests and the in-process demo.
//!
//! Owns an axum server on `127.0.0.1:0` that answers `POST /api/v1/cti/{token}` the way
//! Zammad's code does (reference/zammad-cti.md §1-§5, §8, checklist §10): the controller
//! checks in their order, form/JSON/query parameter parsing, the newCall block list and
//! routing table, the per-callId log with its `done` rules, Zammad's error bodies and their
//! Accept-dependent format. It also records every request, checks the bridge against the
//! invariants of §11 (`violations`), and injects faults (delay, failing statuses, HTML
//! pages). It does not model the caller-ID directory (§7), agents, `notify_map`, multipart
//! bodies or connection resets. The bridge's own code never depends on it.
//!
//! Timestamps come from `tokio::time::Instant`, so tests with paused time control the
//! clock; durations are whole seconds of truncated timestamps counted from the stand-in's
//! start, as Zammad truncates its own.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Path prefix of the one route Zammad has for CTI.
const CTI_PREFIX: &str = "/api/v1/cti/";

/// Exact bodies from zammad-cti.md §1 and §5 (current code).
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
    /// `None` while the request is still being handled.
    pub status: Option<u16>,
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
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let token = config.token.clone();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            state: Mutex::new(State::new(config)),
            changed: Notify::new(),
        });
        let stop = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let stopped = stop.clone();
        tokio::spawn(async move {
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

    /// Every breach of zammad-cti.md §11 seen so far, one line each, naming the callId.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
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

    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.fail_next = None;
        state.fail_for = None;
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

struct Shared {
    /// Zero of the whole-second clock used for durations.
    epoch: Instant,
    state: Mutex<State>,
    /// Woken whenever a request has been answered.
    changed: Notify,
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
    violations: Vec<String>,
    /// Requests of each callId that arrived and are not answered yet (§11.4).
    in_flight: HashMap<String, usize>,
    fail_next: Option<(usize, u16, bool)>,
    fail_for: Option<(Option<Instant>, u16)>,
    answered: usize,
}

impl State {
    fn new(config: FakeZammadConfig) -> State {
        State {
            config,
            requests: Vec::new(),
            logs: HashMap::new(),
            order: Vec::new(),
            violations: Vec::new(),
            in_flight: HashMap::new(),
            fail_next: None,
            fail_for: None,
            answered: 0,
        }
    }

    fn violation(&mut self, call_id: &str, what: impl std::fmt::Display) {
        tracing::debug!(call_id, %what, "fake zammad saw a violation");
        self.violations.push(format!("callId {call_id:?}: {what}"));
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
    /// A controller check failed: JSON whatever the Accept header says (§1).
    Controller(u16, &'static str),
    /// An exception went through the error handler: JSON or an HTML page per Accept (§5).
    Error(u16, String),
    /// An injected fault.
    Fault(u16, bool),
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Zammad handles a request to the end even when the client has gone: the work runs in
    // its own task so a client timeout does not cancel it.
    let task = tokio::spawn(serve_one(shared, method, uri, headers, body));
    match task.await {
        Ok(response) => response,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn serve_one(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
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
            response_body: None,
        });
        if is_cti_post && let Value::Object(map) = &params {
            check_shape(&mut state, map, content_type.as_deref());
        }
        if let Some(id) = &call_id {
            let in_flight = state.in_flight.entry(id.clone()).or_insert(0);
            *in_flight += 1;
            if *in_flight > 1 {
                state.violation(id, "two requests of one call in flight at the same time");
            }
        }
        (seq, state.config.delay)
    };

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let reply = {
        let mut state = shared.lock();
        match state.take_fault(Instant::now()) {
            Some((status, html)) => Reply::Fault(status, html),
            None if !is_cti_post => Reply::Error(404, BODY_NOT_FOUND.to_string()),
            None => match parsed {
                Err(()) => Reply::Error(400, error_id_body()),
                Ok(map) => {
                    let token = cti_token(uri.path()).unwrap_or_default();
                    process(&shared, &mut state, token, &map)
                }
            },
        }
    };
    let (status, content_type, body) = render(&reply, accept.as_deref());

    {
        let mut state = shared.lock();
        if let Some(id) = &call_id
            && let Some(n) = state.in_flight.get_mut(id)
        {
            *n = n.saturating_sub(1);
        }
        if let Some(rec) = state.requests.get_mut(seq) {
            rec.status = Some(status);
            rec.response_body = Some(body.clone());
        }
        state.answered += 1;
    }
    shared.changed.notify_waiters();

    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The controller checks (§1) in Zammad's order, then the event (§3).
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
            // A numeric `to` breaks Zammad's pattern match (§2): NoMethodError, 500.
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
        // PostgreSQL refuses over-length values (§6): StatementInvalid, 422 "Error ID".
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
        // The agent lookup lower-cases `user`; an array raises, after the save (§3.2).
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

/// Breaches of §11 visible in one request's parameters alone.
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

/// Column sizes of `cti_logs` (§6), in characters.
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

/// What nginx in front of Zammad shows when the upstream is away.
fn nginx_page(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n\
         </body>\r\n</html>\r\n"
    )
}
