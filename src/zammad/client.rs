//! The one HTTP client that talks to Zammad's Generic CTI endpoint.
//!
//! Owns the `reqwest::Client` (connect and request timeouts), the secret endpoint URL
//! (the token is its last path segment), the POST of one [`CtiRequest`] with
//! `Content-Type: application/json` and `Accept: application/json`, and the sorting of
//! every failure into a [`ZammadError`] that tells the outbox whether a retry is safe
//! (docs/zammad.md, "Errors and retries"). What to do with a decision, and when to retry, is
//! left to `delivery`; what the bodies look like is `cti`'s.
//!
//! The token never reaches a log line or an error message: errors from reqwest are
//! stripped of their URL, and the URL is only shown through [`ZammadClient::redacted_url`].
//!
//! It talks to the configured URL and nothing else: a redirect is not followed but is an
//! error that names where it points ([`ZammadError::Redirected`], the token replaced by
//! `***`), so the body and the token never go to another host; no `Referer` is sent; no
//! proxy is used unless `zammad.proxy` names one (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`
//! and `NO_PROXY` are not read); a reply is read up to [`MAX_REPLY`] bytes and no further
//! (Zammad's are a few dozen); at most [`MAX_IN_FLIGHT`] requests are in flight at once.

use crate::config::ProxyUrl;
use crate::zammad::cti::{CtiEventKind, CtiRequest, ReplyError, ZammadDecision, snippet};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most of a reply the client reads. Zammad answers the CTI endpoint with `{}` or a
/// decision of a few dozen bytes, its error pages with a few KiB; a longer body is not
/// read (and not held in memory) but refused.
pub const MAX_REPLY: usize = 64 * 1024;
/// Requests to Zammad in flight at once, at most; more wait their turn (in order). Each is
/// a connection (a descriptor and its buffers): without a bound, every call's retry while
/// Zammad is down or slow is one more, and they took every descriptor the daemon had.
/// Legitimate load needs far fewer: 400 new calls a second with a Zammad that takes half a
/// second keep about 400 in flight.
pub const MAX_IN_FLIGHT: usize = 1024;

/// A turn to send one request ([`ZammadClient::turn`]); the next one waiting gets it when
/// this is dropped.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
}

/// Why a CTI request did not produce a decision. `Display` never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum ZammadError {
    /// The configured URL cannot be used; the message names the problem, not the URL.
    #[error("zammad url is unusable: {reason}")]
    InvalidUrl { reason: &'static str },
    #[error("failed to build the http client for zammad")]
    Build(#[source] reqwest::Error),
    /// No connection was made (refused, DNS, TLS handshake, connect timeout): the request
    /// certainly did not reach Zammad.
    #[error("failed to connect to zammad")]
    Connect(#[source] reqwest::Error),
    /// No complete answer in time; Zammad may have handled the request.
    #[error("zammad did not answer within {timeout:?}")]
    Timeout { timeout: Duration },
    /// The connection broke after the request was sent; Zammad may have handled it.
    #[error("the connection to zammad broke during the request")]
    Interrupted(#[source] reqwest::Error),
    /// 500 or 422 "already exists": Zammad has this callId (for newCall: delivered).
    #[error("zammad already has this call id")]
    AlreadyExists,
    /// 500 "Error ID" to an answer or hangup: Zammad has no call with this callId.
    #[error("zammad does not know this call id")]
    UnknownCall,
    /// 401: the token in the URL is wrong.
    #[error("zammad refused the cti token (http 401); check zammad.url")]
    Unauthorized,
    /// 422: the CTI integration is switched off or not configured in Zammad.
    #[error("zammad's cti integration is off: {message}")]
    Disabled { message: String },
    /// 502, 503, 504: a proxy in front of Zammad answered.
    #[error("zammad is unavailable (http {status})")]
    Unavailable { status: u16 },
    /// Any other error status with a JSON body.
    #[error("zammad rejected the request (http {status}): {snippet}")]
    Rejected { status: u16, snippet: String },
    /// A body that is not JSON where JSON was expected (an HTML error page, say).
    #[error("zammad answered http {status} with a body that is not json: {snippet:?}")]
    BadReply { status: u16, snippet: String },
    /// A 2xx JSON body the bridge cannot act on (unknown action, dial without caller id).
    #[error("zammad's answer cannot be acted on")]
    BadDecision(#[source] ReplyError),
    /// 3xx: the URL points elsewhere. Not followed (the event and the token would go to
    /// whatever host the answer names); `location` is that place with its last path
    /// segment (the token, if it is there) as `***`.
    #[error(
        "zammad.url answered with a redirect (http {status}) to {location}, which is not \
         followed: set zammad.url to the right address"
    )]
    Redirected { status: u16, location: String },
    /// A reply longer than [`MAX_REPLY`] bytes: not read further.
    #[error("zammad's answer (http {status}) is longer than {MAX_REPLY} bytes; not read")]
    ReplyTooLarge { status: u16 },
}

impl ZammadError {
    /// Whether Zammad's state is certainly unchanged by the failed request.
    ///
    /// A 502 or 503 comes from a proxy that could not hand the request to Zammad (upstream
    /// refused, down, or in maintenance). A 504 does not count: the proxy passed the
    /// request on and gave up waiting, and Zammad may still finish it. The controller's
    /// 401 and 422 (disabled) checks run before any event is handled.
    pub fn certainly_not_processed(&self) -> bool {
        match self {
            ZammadError::InvalidUrl { .. }
            | ZammadError::Build(_)
            | ZammadError::Connect(_)
            | ZammadError::Unauthorized
            | ZammadError::Disabled { .. }
            | ZammadError::Redirected { .. } => true,
            ZammadError::Unavailable { status } => matches!(status, 502 | 503),
            ZammadError::Timeout { .. }
            | ZammadError::Interrupted(_)
            | ZammadError::AlreadyExists
            | ZammadError::UnknownCall
            | ZammadError::Rejected { .. }
            | ZammadError::BadReply { .. }
            | ZammadError::BadDecision(_)
            | ZammadError::ReplyTooLarge { .. } => false,
        }
    }

    /// Whether sending the same event again is safe and may help (docs/zammad.md, "Errors
    /// and retries"): the error is transient, and either the attempt certainly did not
    /// reach Zammad ([`ZammadError::certainly_not_processed`]: Connect, 502, 503) or a
    /// second copy costs less than a lost one ([`CtiRequest::safe_to_repeat`]: everything
    /// but the `hangup` of an inbound call nobody answered, which a second hangup would
    /// turn from missed into handled). A `newCall` that finds the first delivered gets
    /// "already exists", which [`ZammadError::counts_as_delivered`] accepts.
    ///
    /// Wrong tokens, a disabled integration and refused bodies are not transient: they
    /// need a human, and the caller logs them.
    pub fn retryable(&self, request: &CtiRequest) -> bool {
        let transient = matches!(
            self,
            ZammadError::Connect(_)
                | ZammadError::Timeout { .. }
                | ZammadError::Interrupted(_)
                | ZammadError::Unavailable { .. }
        );
        transient && (request.safe_to_repeat() || self.certainly_not_processed())
    }

    /// Whether the event should be treated as delivered despite the error: a newCall
    /// whose callId Zammad already has (an earlier attempt got through).
    pub fn counts_as_delivered(&self, event: CtiEventKind) -> bool {
        matches!(
            (self, event),
            (ZammadError::AlreadyExists, CtiEventKind::NewCall)
        )
    }
}

/// Speaks HTTP to Zammad. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct ZammadClient {
    http: reqwest::Client,
    /// The full endpoint, token included, parsed once (a request clones it rather than
    /// parsing the text again); only ever handed to reqwest, never shown (`Debug` below
    /// and the logs use `redacted`).
    endpoint: reqwest::Url,
    /// `scheme://host[:port]/path/***`, computed once for logs and `Debug`.
    redacted: String,
    timeout: Duration,
    /// [`MAX_IN_FLIGHT`] permits, shared by the clones: one per request being sent.
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for ZammadClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZammadClient")
            .field("url", &self.redacted)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ZammadClient {
    /// A client for `url` (`http[s]://host/api/v1/cti/TOKEN`) that gives up on a request
    /// after `timeout`, without a proxy. Connecting may take at most half of it, so that a
    /// slow connect is reported as [`ZammadError::Connect`] (certainly not delivered)
    /// rather than a timeout.
    pub fn new(
        url: impl Into<SecretString>,
        timeout: Duration,
    ) -> Result<ZammadClient, ZammadError> {
        Self::with_proxy(url, timeout, None)
    }

    /// As [`ZammadClient::new`], through `proxy` when given (`zammad.proxy`).
    pub fn with_proxy(
        url: impl Into<SecretString>,
        timeout: Duration,
        proxy: Option<&ProxyUrl>,
    ) -> Result<ZammadClient, ZammadError> {
        let url = url.into();
        let parsed =
            reqwest::Url::parse(url.expose_secret()).map_err(|_| ZammadError::InvalidUrl {
                reason: "not an absolute url",
            })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ZammadError::InvalidUrl {
                reason: "the scheme is not http or https",
            });
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(ZammadError::InvalidUrl { reason: "no host" });
        }
        let redacted = redact(&parsed);
        if !redacted.ends_with("/***") {
            return Err(ZammadError::InvalidUrl {
                reason: "the path does not end in the cti token",
            });
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(timeout / 2)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false);
        let builder = match proxy {
            None => builder.no_proxy(),
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy.expose_secret())
                    .map_err(|e| ZammadError::Build(e.without_url()))?,
            ),
        };
        let http = builder
            .build()
            .map_err(|e| ZammadError::Build(e.without_url()))?;
        Ok(ZammadClient {
            http,
            endpoint: parsed,
            redacted,
            timeout,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// This client, taking its turns from `other`'s [`MAX_IN_FLIGHT`] rather than its own:
    /// two clients (two connection pools, each driven by the runtime that made its
    /// connections) with one bound between them.
    pub fn sharing_turns_with(mut self, other: &ZammadClient) -> ZammadClient {
        self.in_flight = other.in_flight.clone();
        self
    }

    /// The endpoint with its token replaced by `***`, safe to log.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// How long a request may take (`zammad.timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits for a turn to send: at most [`MAX_IN_FLIGHT`] requests are in flight at once.
    /// Take it before anything that says a request may have reached Zammad (the outbox's
    /// "sending" mark): the wait for it is certainly not a send.
    pub async fn turn(&self) -> Turn {
        Turn {
            _permit: self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        }
    }

    /// Posts one event and returns Zammad's decision (`Continue` for answer and hangup),
    /// in its own turn.
    pub async fn send(&self, req: &CtiRequest) -> Result<ZammadDecision, ZammadError> {
        let turn = self.turn().await;
        self.send_in_turn(turn, req).await
    }

    /// As [`ZammadClient::send`], in `turn`, taken with [`ZammadClient::turn`].
    pub async fn send_in_turn(
        &self,
        turn: Turn,
        req: &CtiRequest,
    ) -> Result<ZammadDecision, ZammadError> {
        let started = Instant::now();
        let result = self.post(req).await;
        drop(turn);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(decision) => tracing::debug!(
                call_id = %req.call_id,
                event = req.event.as_str(),
                elapsed_ms,
                ?decision,
                "zammad accepted the event"
            ),
            Err(error) => tracing::debug!(
                call_id = %req.call_id,
                event = req.event.as_str(),
                elapsed_ms,
                error = %error,
                "zammad request failed"
            ),
        }
        result
    }

    async fn post(&self, req: &CtiRequest) -> Result<ZammadDecision, ZammadError> {
        let (status, body) = self.exchange(req.to_json()).await?;
        classify(req.event, status, &body)
    }

    /// Posts `body` to the endpoint; returns the status and at most [`MAX_REPLY`] bytes of
    /// the reply. A redirect is an error, its body unread.
    async fn exchange(&self, body: impl Into<reqwest::Body>) -> Result<(u16, String), ZammadError> {
        let mut response = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map_or_else(
                    || "nowhere (no Location)".to_string(),
                    |l| self.redacted_location(l),
                );
            return Err(ZammadError::Redirected { status, location });
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_REPLY as u64)
        {
            return Err(ZammadError::ReplyTooLarge { status });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(e))? {
            if bytes.len() + chunk.len() > MAX_REPLY {
                return Err(ZammadError::ReplyTooLarge { status });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// A redirect's `Location`, made absolute against the endpoint, as [`redact`] shows
    /// URLs; anything that is no URL is only quoted in part.
    fn redacted_location(&self, location: &str) -> String {
        let absolute = self.endpoint.join(location);
        match absolute {
            Ok(url) => redact(&url),
            Err(_) => format!(
                "{:?} (not a URL)",
                snippet(location).chars().take(40).collect::<String>()
            ),
        }
    }

    /// Asks Zammad whether the endpoint, the token and the integration are right, without
    /// creating a call: the body carries `"direction":"check"`, which is neither `in` nor
    /// `out`. Zammad runs its checks in the order enabled, configured, token, direction
    /// (docs/zammad.md, "Checks before any event"), and the direction check fails before
    /// any event is handled, so the `422 Invalid 'direction'!` it answers means
    /// "reachable, token accepted, integration on" and nothing is stored but the HTTP log
    /// line every request gets.
    ///
    /// `Ok` is that answer; every other one is the [`ZammadError`] a real event would have
    /// got (401 [`ZammadError::Unauthorized`], 422 "Feature …" [`ZammadError::Disabled`],
    /// an HTML page [`ZammadError::BadReply`], a refused connection
    /// [`ZammadError::Connect`] …); a 2xx is a [`ZammadError::Rejected`], since Zammad
    /// never accepts that body.
    pub async fn probe(&self) -> Result<(), ZammadError> {
        let _turn = self.turn().await;
        let (status, body) = self.exchange(PROBE_BODY).await?;
        let result = classify_probe(status, &body);
        tracing::debug!(status, ok = result.is_ok(), "zammad probe answered");
        result
    }

    fn transport(&self, error: reqwest::Error) -> ZammadError {
        let error = error.without_url();
        if error.is_connect() {
            ZammadError::Connect(error)
        } else if error.is_timeout() {
            ZammadError::Timeout {
                timeout: self.timeout,
            }
        } else {
            ZammadError::Interrupted(error)
        }
    }
}

/// What [`ZammadClient::probe`] posts: an event Zammad does not know, with a direction
/// that is neither `in` nor `out`, and a callId that says who asked (Zammad's CTI "Recent
/// Logs" show every request).
pub const PROBE_BODY: &str =
    r#"{"event":"check","direction":"check","callId":"asterisk-zammad-bridge-check"}"#;
/// The callId of [`PROBE_BODY`]; no call ever has it.
pub const PROBE_CALL_ID: &str = "asterisk-zammad-bridge-check";

/// The probe's answer: 422 `Invalid 'direction'!` (`Invalid direction!` before 2022) is
/// the good one; everything else is sorted like an event's answer.
fn classify_probe(status: u16, body: &str) -> Result<(), ZammadError> {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    if status == 422 && message.starts_with("Invalid") && message.contains("direction") {
        return Ok(());
    }
    match classify(CtiEventKind::NewCall, status, body) {
        Ok(_) => Err(ZammadError::Rejected {
            status,
            snippet: snippet(body),
        }),
        Err(error) => Err(error),
    }
}

/// Sorts one HTTP answer (docs/zammad.md: the checks, the events, "Errors and retries").
fn classify(event: CtiEventKind, status: u16, body: &str) -> Result<ZammadDecision, ZammadError> {
    if (200..300).contains(&status) {
        return ZammadDecision::parse(body).map_err(|e| match e {
            ReplyError::NotJson { snippet } => ZammadError::BadReply { status, snippet },
            other => ZammadError::BadDecision(other),
        });
    }
    let json = serde_json::from_str::<serde_json::Value>(body).ok();
    let message = json
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match status {
        401 => Err(ZammadError::Unauthorized),
        502..=504 => Err(ZammadError::Unavailable { status }),
        _ if json.is_none() => Err(ZammadError::BadReply {
            status,
            snippet: snippet(body),
        }),
        422 | 500 if message.contains("already exists") => Err(ZammadError::AlreadyExists),
        // "Feature is disabled…", "Feature is disable…" (before 5.0), "Feature not configured…".
        422 if message.starts_with("Feature ") => Err(ZammadError::Disabled {
            message: message.to_string(),
        }),
        500 if event != CtiEventKind::NewCall && message.starts_with("Error ID") => {
            Err(ZammadError::UnknownCall)
        }
        _ => Err(ZammadError::Rejected {
            status,
            snippet: snippet(body),
        }),
    }
}

/// `scheme://host[:port]` + the path with its last segment replaced by `***`; no
/// user info, query or fragment.
fn redact(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    let path = url.path();
    match path.rsplit_once('/') {
        Some((head, last)) if !last.is_empty() => out.push_str(&format!("{head}/***")),
        _ => out.push_str(path),
    }
    out
}

#[cfg(test)]
mod tests {
    //! Against the stand-in Zammad; expected values from docs/zammad.md.

    use super::*;
    use crate::standins::zammad::{FakeZammad, FakeZammadConfig, Route};
    use crate::zammad::cti::{CallId, Cause, Direction, Users};

    const TOKEN: &str = "s3cr3tT0ken_ABCdef-123456789";

    fn config() -> FakeZammadConfig {
        FakeZammadConfig {
            token: TOKEN.into(),
            ..FakeZammadConfig::default()
        }
    }

    async fn fake(config: FakeZammadConfig) -> FakeZammad {
        FakeZammad::start(config).await.unwrap()
    }

    fn client_for(url: &str, timeout: Duration) -> ZammadClient {
        ZammadClient::new(SecretString::from(url.to_string()), timeout).unwrap()
    }

    fn client(fz: &FakeZammad) -> ZammadClient {
        client_for(&fz.url(), Duration::from_secs(5))
    }

    fn req(
        event: CtiEventKind,
        direction: Direction,
        id: &str,
        from: &str,
        to: &str,
    ) -> CtiRequest {
        CtiRequest {
            event,
            direction,
            call_id: CallId(id.into()),
            from: from.into(),
            to: to.into(),
            user: None,
            queue: None,
            answering_number: None,
            cause: None,
        }
    }

    fn new_call(id: &str, direction: Direction, from: &str, to: &str) -> CtiRequest {
        req(CtiEventKind::NewCall, direction, id, from, to)
    }

    fn answer(id: &str) -> CtiRequest {
        req(
            CtiEventKind::Answer,
            Direction::In,
            id,
            "4930111",
            "4940222",
        )
    }

    fn hangup(id: &str) -> CtiRequest {
        CtiRequest {
            cause: Some(Cause::NormalClearing),
            ..req(
                CtiEventKind::Hangup,
                Direction::In,
                id,
                "4930111",
                "4940222",
            )
        }
    }

    /// A request of kind `event`; a `hangup` is that of a missed inbound call, the one
    /// event a second copy of which costs more than its loss.
    fn of(event: CtiEventKind) -> CtiRequest {
        CtiRequest {
            cause: (event == CtiEventKind::Hangup).then_some(Cause::Cancel),
            ..req(event, Direction::In, "c1", "4930111", "4940222")
        }
    }

    /// The token appears nowhere in the error, its sources or its Debug form.
    fn assert_no_token(error: &ZammadError) {
        let mut texts = vec![format!("{error:?}")];
        let mut source: Option<&dyn std::error::Error> = Some(error);
        while let Some(e) = source {
            texts.push(e.to_string());
            source = e.source();
        }
        for text in texts {
            assert!(!text.contains(TOKEN), "token leaked: {text}");
        }
    }

    async fn send_err(client: &ZammadClient, req: &CtiRequest) -> ZammadError {
        let error = client.send(req).await.expect_err("an error");
        assert_no_token(&error);
        error
    }

    /// A loopback port nobody listens on.
    async fn closed_port() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr
    }

    #[tokio::test]
    async fn new_call_gets_continue_and_sends_json_with_accept() {
        let fz = fake(config()).await;
        let mut nc = new_call("c1", Direction::In, "4930111", "4940222");
        nc.user = Users::from_names(vec!["Alice".into(), "Bob".into()]);
        let decision = client(&fz).send(&nc).await.unwrap();
        assert_eq!(decision, ZammadDecision::Continue);
        let recs = fz.requests();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!((r.method.as_str(), r.token()), ("POST", Some(TOKEN)));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.accept.as_deref(), Some("application/json"));
        assert_eq!(r.body, nc.to_json());
        assert!(r.body.starts_with(r#"{"event":"newCall","#), "{}", r.body);
        let e = fz.log("c1").unwrap();
        assert_eq!(e.to_comment.as_deref(), Some("Alice, Bob"));

        let client = client(&fz);
        assert_eq!(
            client.send(&answer("c1")).await.unwrap(),
            ZammadDecision::Continue
        );
        assert_eq!(
            client.send(&hangup("c1")).await.unwrap(),
            ZammadDecision::Continue
        );
        assert!(fz.log("c1").unwrap().hungup);
        assert_eq!(fz.violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn blocked_caller_gets_reject() {
        let fz = fake(FakeZammadConfig {
            blocked: vec!["4930666".into()],
            ..config()
        })
        .await;
        let decision = client(&fz)
            .send(&new_call("c1", Direction::In, "4930666", "4940222"))
            .await
            .unwrap();
        let want = ZammadDecision::Reject {
            reason: "busy".into(),
        };
        assert_eq!(decision, want);
    }

    #[tokio::test]
    async fn routed_outbound_call_gets_dial() {
        let fz = fake(FakeZammadConfig {
            routes: vec![Route::new("4930*", "493023125877")],
            default_caller_id: "496990009111".into(),
            ..config()
        })
        .await;
        let client = client(&fz);
        let cases = [
            ("4930609854189", "493023125877"),
            ("492214710334", "496990009111"),
        ];
        for (i, (to, caller_id)) in cases.into_iter().enumerate() {
            let nc = new_call(&format!("o{i}"), Direction::Out, "201", to);
            let want = ZammadDecision::Dial {
                caller_id: caller_id.into(),
                number: to.into(),
            };
            assert_eq!(client.send(&nc).await.unwrap(), want);
        }
    }

    #[tokio::test]
    async fn wrong_token_is_unauthorized_and_never_shown() {
        let fz = fake(config()).await;
        let wrong = fz.url().replace(TOKEN, "not-the-token");
        let error = send_err(&client_for(&wrong, Duration::from_secs(5)), &hangup("c1")).await;
        assert!(matches!(error, ZammadError::Unauthorized), "{error:?}");
        // The client with the right token: its errors never show it either.
        let error = send_err(&client(&fz), &hangup("c1")).await;
        assert!(matches!(error, ZammadError::UnknownCall), "{error:?}");
        assert!(!error.retryable(&of(CtiEventKind::Hangup)));
    }

    #[tokio::test]
    async fn disabled_and_unconfigured_integrations_are_disabled() {
        let cases = [
            (
                false,
                true,
                "Feature is disabled, please contact your administrator!",
            ),
            (
                true,
                false,
                "Feature not configured, please contact your admin!",
            ),
        ];
        for (enabled, configured, want) in cases {
            let fz = fake(FakeZammadConfig {
                enabled,
                configured,
                ..config()
            })
            .await;
            let nc = new_call("c1", Direction::In, "1", "2");
            match send_err(&client(&fz), &nc).await {
                ZammadError::Disabled { message } => assert_eq!(message, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn duplicate_new_call_already_exists_and_counts_as_delivered() {
        let fz = fake(config()).await;
        let client = client(&fz);
        let nc = new_call("c1", Direction::In, "1", "2");
        client.send(&nc).await.unwrap();
        let error = send_err(&client, &nc).await;
        assert!(matches!(error, ZammadError::AlreadyExists), "{error:?}");
        assert!(error.counts_as_delivered(CtiEventKind::NewCall));
        assert!(!error.counts_as_delivered(CtiEventKind::Answer));
        assert!(!error.retryable(&of(CtiEventKind::NewCall)));
    }

    #[tokio::test]
    async fn answer_or_hangup_for_unknown_call_is_unknown_call() {
        let fz = fake(config()).await;
        let client = client(&fz);
        for r in [answer("nope"), hangup("nope")] {
            let error = send_err(&client, &r).await;
            assert!(matches!(error, ZammadError::UnknownCall), "{error:?}");
            assert!(!error.retryable(&r));
            assert!(!error.counts_as_delivered(r.event));
        }
    }

    #[tokio::test]
    async fn html_error_pages_are_bad_replies_and_proxy_pages_unavailable() {
        let fz = fake(config()).await;
        let client = client(&fz);
        fz.fail_next(1, 500, true);
        match send_err(&client, &new_call("c1", Direction::In, "1", "2")).await {
            ZammadError::BadReply { status, snippet } => {
                assert_eq!(status, 500);
                assert!(snippet.starts_with("<!DOCTYPE html>"), "{snippet}");
            }
            other => panic!("{other:?}"),
        }
        for status in [502, 503, 504] {
            fz.fail_next(1, status, true);
            let error = send_err(&client, &new_call("c1", Direction::In, "1", "2")).await;
            assert!(
                matches!(error, ZammadError::Unavailable { status: s } if s == status),
                "{error:?}"
            );
        }
        // None of them reached Zammad's logic.
        assert!(fz.log("c1").is_none());
    }

    #[tokio::test]
    async fn slow_zammad_is_a_timeout_that_may_have_been_delivered() {
        let fz = fake(config()).await;
        fz.set_delay(Duration::from_millis(700));
        let client = client_for(&fz.url(), Duration::from_millis(250));
        let started = Instant::now();
        let error = send_err(&client, &new_call("c1", Direction::In, "1", "2")).await;
        assert!(started.elapsed() < Duration::from_millis(650));
        match &error {
            ZammadError::Timeout { timeout } => assert_eq!(*timeout, Duration::from_millis(250)),
            other => panic!("{other:?}"),
        }
        assert!(error.retryable(&of(CtiEventKind::NewCall)));
        assert!(error.retryable(&of(CtiEventKind::Answer)));
        assert!(!error.retryable(&of(CtiEventKind::Hangup)));
        // The hangup of an answered call: a second one costs less than a call left open.
        assert!(error.retryable(&hangup("c1")));
        // Zammad finished the request after the client gave up: "may have reached".
        fz.wait_for_answered(1).await;
        assert!(fz.log("c1").is_some());
    }

    #[tokio::test]
    async fn refused_connection_is_connect_and_always_retryable() {
        let url = format!("http://{}/api/v1/cti/{TOKEN}", closed_port().await);
        let error = send_err(&client_for(&url, Duration::from_secs(2)), &hangup("c1")).await;
        assert!(matches!(error, ZammadError::Connect(_)), "{error:?}");
        assert!(error.certainly_not_processed());
        for event in [
            CtiEventKind::NewCall,
            CtiEventKind::Answer,
            CtiEventKind::Hangup,
        ] {
            assert!(error.retryable(&of(event)), "{event:?}");
        }
    }

    #[tokio::test]
    async fn probe_tells_reachable_from_wrong_token_and_disabled_and_stores_nothing() {
        let fz = fake(config()).await;
        client(&fz).probe().await.unwrap();
        let wrong = fz.url().replace(TOKEN, "not-the-token");
        let error = client_for(&wrong, Duration::from_secs(5))
            .probe()
            .await
            .unwrap_err();
        assert!(matches!(error, ZammadError::Unauthorized), "{error:?}");
        fz.set_enabled(false);
        let error = client(&fz).probe().await.unwrap_err();
        assert!(matches!(error, ZammadError::Disabled { .. }), "{error:?}");
        assert!(fz.calls().is_empty());
        assert!(fz.requests().iter().all(|r| r.body == PROBE_BODY));
        assert!(PROBE_BODY.contains(PROBE_CALL_ID));
        // A well-formed request but for its direction: nothing for the fake to flag.
        assert_eq!(fz.violations(), Vec::<String>::new());
        let url = format!("http://{}/api/v1/cti/{TOKEN}", closed_port().await);
        let error = client_for(&url, Duration::from_secs(2))
            .probe()
            .await
            .unwrap_err();
        assert!(matches!(error, ZammadError::Connect(_)), "{error:?}");
        // Older text, an HTML page, a 200.
        assert!(classify_probe(422, r#"{"error":"Invalid direction!"}"#).is_ok());
        let html = "<!DOCTYPE html><h1>500</h1>";
        assert!(matches!(
            classify_probe(500, html),
            Err(ZammadError::BadReply { .. })
        ));
        assert!(matches!(
            classify_probe(200, "{}"),
            Err(ZammadError::Rejected { status: 200, .. })
        ));
    }

    /// What [`raw_server`] answers.
    #[derive(Clone)]
    enum Reply {
        Fixed(String),
        /// The head, then body bytes for as long as the client reads.
        Endless(String),
    }

    /// An HTTP server that reads each request (head and `Content-Length` body) and answers
    /// `reply`; returns its address, the requests it got and the body bytes it wrote.
    async fn raw_server(
        reply: Reply,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (seen2, written2) = (seen.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (reply, seen, written) = (reply.clone(), seen2.clone(), written2.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    let _ = read.read_exact(&mut body).await;
                    seen.lock().unwrap().push(head);
                    match reply {
                        Reply::Fixed(text) => {
                            let _ = write.write_all(text.as_bytes()).await;
                        }
                        Reply::Endless(head) => {
                            let _ = write.write_all(head.as_bytes()).await;
                            let mut chunk = vec![b'x'; 16 * 1024];
                            if head.contains("chunked") {
                                chunk = [b"4000\r\n", &chunk[..], b"\r\n"].concat();
                            }
                            while write.write_all(&chunk).await.is_ok() {
                                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        (addr, seen, written)
    }

    #[tokio::test]
    async fn redirects_are_not_followed_but_name_where_they_point_without_the_token() {
        let (elsewhere, elsewhere_seen, _) = raw_server(Reply::Fixed(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                .into(),
        ))
        .await;
        for status in [301, 302, 303, 307, 308] {
            let (addr, seen, _) = raw_server(Reply::Fixed(format!(
                "HTTP/1.1 {status} Moved\r\nLocation: http://{elsewhere}/api/v1/cti/{TOKEN}\r\nContent-Length: 0\r\n\r\n"
            )))
            .await;
            let client = client_for(
                &format!("http://{addr}/api/v1/cti/{TOKEN}"),
                Duration::from_secs(5),
            );
            let error = send_err(&client, &new_call("c1", Direction::In, "1", "2")).await;
            match &error {
                ZammadError::Redirected {
                    status: s,
                    location,
                } => {
                    assert_eq!(*s, status);
                    assert_eq!(location, &format!("http://{elsewhere}/api/v1/cti/***"));
                }
                other => panic!("{status}: {other:?}"),
            }
            assert!(error.to_string().contains("set zammad.url"), "{error}");
            assert!(!error.retryable(&of(CtiEventKind::NewCall)));
            assert!(!error.counts_as_delivered(CtiEventKind::NewCall));
            let heads = seen.lock().unwrap().clone();
            assert_eq!(heads.len(), 1, "{heads:?}");
            assert!(
                !heads[0].to_ascii_lowercase().contains("referer"),
                "{heads:?}"
            );
            // The probe of `check` too.
            let error = client.probe().await.unwrap_err();
            assert!(matches!(error, ZammadError::Redirected { .. }), "{error:?}");
        }
        // A relative Location is shown against the endpoint.
        let (addr, _, _) = raw_server(Reply::Fixed(
            "HTTP/1.1 308 Moved\r\nLocation: /zammad/api/v1/cti/X\r\nContent-Length: 0\r\n\r\n"
                .into(),
        ))
        .await;
        let client = client_for(
            &format!("http://{addr}/api/v1/cti/{TOKEN}"),
            Duration::from_secs(5),
        );
        match send_err(&client, &hangup("c1")).await {
            ZammadError::Redirected { location, .. } => {
                assert_eq!(location, format!("http://{addr}/zammad/api/v1/cti/***"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            elsewhere_seen.lock().unwrap().is_empty(),
            "the other host was reached"
        );
    }

    #[tokio::test]
    async fn a_reply_longer_than_the_cap_is_not_read() {
        for head in [
            // Announced: refused before a byte of the body is read.
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
            // Not announced (connection close): read up to the cap only.
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let (addr, _, written) = raw_server(Reply::Endless(head.to_string())).await;
            let client = client_for(
                &format!("http://{addr}/api/v1/cti/{TOKEN}"),
                Duration::from_secs(10),
            );
            let started = Instant::now();
            let error = send_err(&client, &new_call("c1", Direction::In, "1", "2")).await;
            assert!(
                matches!(error, ZammadError::ReplyTooLarge { .. }),
                "{error:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = written.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                sent < 64 << 20,
                "{sent} bytes went out before the client hung up"
            );
        }
    }

    #[tokio::test]
    async fn a_configured_proxy_is_used_and_nothing_else() {
        let (proxy, proxy_seen, _) = raw_server(Reply::Fixed(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                .into(),
        ))
        .await;
        let url = format!("http://zammad.invalid/api/v1/cti/{TOKEN}");
        let proxy_url: ProxyUrl = format!("http://user:pw@{proxy}").parse().unwrap();
        assert_eq!(proxy_url.to_string(), format!("http://{proxy}"));
        let client = ZammadClient::with_proxy(
            SecretString::from(url.clone()),
            Duration::from_secs(5),
            Some(&proxy_url),
        )
        .unwrap();
        let decision = client
            .send(&new_call("c1", Direction::In, "1", "2"))
            .await
            .unwrap();
        assert_eq!(decision, ZammadDecision::Continue);
        let heads = proxy_seen.lock().unwrap().clone();
        assert!(
            heads[0].starts_with(&format!("POST {url} HTTP/1.1")),
            "{heads:?}"
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains("proxy-authorization: basic"),
            "{heads:?}"
        );
    }

    #[test]
    fn answers_are_classified_like_zammad_sends_them() {
        use CtiEventKind::{Answer, Hangup, NewCall};
        let error_id = r#"{"error":"Error ID aB3dE6gH: Please contact your administrator."}"#;
        let exists = r#"{"error":"This object already exists.","error_human":"This object already exists."}"#;
        let html =
            "<!DOCTYPE html>\n<html><body><h1>500: We're sorry, but something went wrong.</h1>";
        // (event, status, body, expected variant)
        let cases = [
            (NewCall, 200, "{}", "Ok"),
            (NewCall, 200, "<html>hello</html>", "BadReply"),
            (NewCall, 200, r#"{"action":"transfer"}"#, "BadDecision"),
            (NewCall, 500, exists, "AlreadyExists"),
            // Two newCalls racing past Zammad's check (docs/zammad.md, "newCall").
            (
                NewCall,
                422,
                r#"{"error":"Object already exists!"}"#,
                "AlreadyExists",
            ),
            (NewCall, 500, error_id, "Rejected"),
            (Answer, 500, error_id, "UnknownCall"),
            (Hangup, 500, error_id, "UnknownCall"),
            (Hangup, 500, html, "BadReply"),
            (
                Hangup,
                404,
                r#"{"error":"This page doesn't exist.","error_human":"This page doesn't exist."}"#,
                "Rejected",
            ),
            (
                NewCall,
                401,
                r#"{"error":"Invalid token, please contact your admin!"}"#,
                "Unauthorized",
            ),
            (
                NewCall,
                422,
                r#"{"error":"Feature is disabled, please contact your administrator!"}"#,
                "Disabled",
            ),
            (
                NewCall,
                422,
                r#"{"error":"Feature is disable, please contact your admin to enable it!"}"#,
                "Disabled",
            ),
            (
                NewCall,
                422,
                r#"{"error":"Feature not configured, please contact your admin!"}"#,
                "Disabled",
            ),
            (
                NewCall,
                422,
                r#"{"error":"Invalid 'direction'!"}"#,
                "Rejected",
            ),
            (
                NewCall,
                422,
                r#"{"error":"Attribute 'from' required!"}"#,
                "Rejected",
            ),
            (NewCall, 502, "<html>nginx</html>", "Unavailable"),
            (Answer, 503, "", "Unavailable"),
            (Hangup, 504, "{}", "Unavailable"),
        ];
        for (event, status, body, want) in cases {
            let got = match classify(event, status, body) {
                Ok(_) => "Ok",
                Err(e) => variant(&e),
            };
            assert_eq!(got, want, "{event:?} {status} {body}");
        }
    }

    fn variant(e: &ZammadError) -> &'static str {
        match e {
            ZammadError::InvalidUrl { .. } => "InvalidUrl",
            ZammadError::Build(_) => "Build",
            ZammadError::Connect(_) => "Connect",
            ZammadError::Timeout { .. } => "Timeout",
            ZammadError::Interrupted(_) => "Interrupted",
            ZammadError::AlreadyExists => "AlreadyExists",
            ZammadError::UnknownCall => "UnknownCall",
            ZammadError::Unauthorized => "Unauthorized",
            ZammadError::Disabled { .. } => "Disabled",
            ZammadError::Unavailable { .. } => "Unavailable",
            ZammadError::Rejected { .. } => "Rejected",
            ZammadError::BadReply { .. } => "BadReply",
            ZammadError::BadDecision(_) => "BadDecision",
            ZammadError::Redirected { .. } => "Redirected",
            ZammadError::ReplyTooLarge { .. } => "ReplyTooLarge",
        }
    }

    #[test]
    fn only_hangups_that_certainly_did_not_arrive_are_retried() {
        let timeout = ZammadError::Timeout {
            timeout: Duration::from_secs(1),
        };
        let unavailable = |status| ZammadError::Unavailable { status };
        let rejected = ZammadError::Rejected {
            status: 422,
            snippet: String::new(),
        };
        let bad = ZammadError::BadReply {
            status: 500,
            snippet: String::new(),
        };
        let disabled = ZammadError::Disabled {
            message: String::new(),
        };
        // (error, newCall, answer, hangup)
        let cases = [
            (timeout, true, true, false),
            (unavailable(502), true, true, true),
            (unavailable(503), true, true, true),
            // The proxy passed it on and gave up waiting: Zammad may finish it.
            (unavailable(504), true, true, false),
            (ZammadError::AlreadyExists, false, false, false),
            (ZammadError::UnknownCall, false, false, false),
            (ZammadError::Unauthorized, false, false, false),
            (disabled, false, false, false),
            (rejected, false, false, false),
            (bad, false, false, false),
        ];
        for (error, new_call, answer, hangup) in cases {
            let got = [
                error.retryable(&of(CtiEventKind::NewCall)),
                error.retryable(&of(CtiEventKind::Answer)),
                error.retryable(&of(CtiEventKind::Hangup)),
            ];
            assert_eq!(got, [new_call, answer, hangup], "{error:?}");
        }
    }

    #[test]
    fn url_is_redacted_and_checked() {
        let check = |url: &str, want: &str| {
            let client = client_for(url, Duration::from_secs(1));
            assert_eq!(client.redacted_url(), want, "{url}");
            assert!(!format!("{client:?}").contains("TOKEN"), "{client:?}");
        };
        check(
            "https://zammad.example.com/api/v1/cti/TOKEN",
            "https://zammad.example.com/api/v1/cti/***",
        );
        check(
            "http://127.0.0.1:3000/api/v1/cti/TOKEN",
            "http://127.0.0.1:3000/api/v1/cti/***",
        );
        check(
            "https://user:pw@z.example:8443/zammad/api/v1/cti/TOKEN?x=TOKEN#TOKEN",
            "https://z.example:8443/zammad/api/v1/cti/***",
        );
        check(
            "http://[::1]:8080/api/v1/cti/TOKEN",
            "http://[::1]:8080/api/v1/cti/***",
        );
        for bad in [
            "zammad.example.com/api/v1/cti/TOKEN",
            "ftp://z.example/api/v1/cti/TOKEN",
            "https://z.example/",
            "https://z.example/api/v1/cti/",
            "TOKEN",
        ] {
            match ZammadClient::new(SecretString::from(bad.to_string()), Duration::from_secs(1)) {
                Err(e @ ZammadError::InvalidUrl { .. }) => {
                    assert!(!e.to_string().contains("TOKEN"), "{e}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// Two clients sharing their turns hold [`MAX_IN_FLIGHT`] between them: with every
    /// turn taken on one, the other waits until one is given back.
    #[tokio::test]
    async fn clients_sharing_turns_share_the_bound() {
        let url = format!("http://127.0.0.1:9/api/v1/cti/{TOKEN}");
        let a = client_for(&url, Duration::from_secs(1));
        let b = client_for(&url, Duration::from_secs(1)).sharing_turns_with(&a);
        let mut taken = Vec::with_capacity(MAX_IN_FLIGHT);
        for _ in 0..MAX_IN_FLIGHT {
            taken.push(a.turn().await);
        }
        let wait = Duration::from_millis(100);
        assert!(tokio::time::timeout(wait, b.turn()).await.is_err());
        taken.pop();
        assert!(tokio::time::timeout(wait, b.turn()).await.is_ok());
        // Not shared, a client has its own.
        let c = client_for(&url, Duration::from_secs(1));
        assert!(tokio::time::timeout(wait, c.turn()).await.is_ok());
    }
}
