//! The FastAGI listener and one session's exchange with Asterisk.
//!
//! Owns the socket side: accepting, reading the environment block, sending one command at
//! a time and reading its reply (skipping the `HANGUP` lines Asterisk writes when the
//! caller hangs up), and the time limits. A session that sends garbage or goes silent is
//! closed and logged; no session affects another.
//!
//! Anyone who reaches the port can open sessions, so none may keep what others need:
//! - at most `agi.max_sessions` sessions at once, and `agi.max_sessions_per_source` from
//!   one address; a connection beyond either is closed at once (Asterisk's dialplan goes
//!   on);
//! - a session that has not shown it is what it says (its environment block still coming,
//!   or, without `agi.secret`, its channel not yet confirmed by AMI: the script calls
//!   [`Session::settle`]) holds its slot only until a new connection needs it: the oldest
//!   such session gives way ([`Slots`]). Asterisk sends its block at once and AMI knows its
//!   channels already, so its sessions settle within a moment;
//! - the whole environment block must arrive within `agi.idle_timeout` of the connection,
//!   each line of a session within `agi.idle_timeout`, and the whole session after its
//!   environment within `agi.decision_timeout` + `agi.idle_timeout`;
//! - with `agi.secret` set, a session whose URL does not carry `secret=` with that value is
//!   closed after its environment block, before the script sees it.

use super::protocol::{AgiCommand, AgiEnv, AgiError, AgiReply, MAX_LINE, ReplyLine, ReplyReader};
use crate::config::{AgiConfig, UrlSecret};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// What runs in a session: the listener is generic over it, so that it knows nothing of
/// the script it serves (`newcall`, in `agi::newcall`).
pub trait Script: Send + Sync + 'static {
    /// Runs one session, its environment read, to its end.
    fn run(&self, session: &mut Session) -> impl Future<Output = ()> + Send;
    /// A session the script never saw (for its log and metrics).
    fn not_run(&self, why: NotRun);
}

/// Why a session never reached its script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// `agi.max_sessions` sessions were open already, or `agi.max_sessions_per_source`
    /// from its address; this one was closed at once.
    Overloaded,
    /// It broke before its environment block ended (too slow, garbage), or gave its slot
    /// to a new connection while its environment block was still coming.
    Failed,
    /// `agi.secret` is set and its URL did not carry it.
    Refused,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("asterisk closed the FastAGI connection")]
    Closed,
    #[error("asterisk sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the FastAGI session went on past its time limit")]
    TooSlow,
    #[error("the FastAGI session gave its slot to a new connection")]
    Displaced,
    #[error("a FastAGI line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error(transparent)]
    Protocol(#[from] AgiError),
    #[error("FastAGI connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A session's time limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Longest wait for one line.
    idle: Duration,
    /// Longest time for the environment block, from the connection.
    env: Duration,
    /// Longest time for the rest of the session, from the end of the environment block.
    rest: Duration,
}

/// One FastAGI connection: the environment Asterisk sent and the command channel.
pub struct Session {
    framed: Framed<TcpStream, LinesCodec>,
    env: AgiEnv,
    replies: ReplyReader,
    idle: Duration,
    /// No read goes past this: first the end of the environment block's time, then the
    /// end of the session's.
    deadline: Instant,
    hung_up: bool,
    /// Its hold on a session slot: one a new connection may take until [`Session::settle`].
    slot: Slot,
}

impl Session {
    /// Reads the `agi_*` block up to its blank line.
    async fn start(stream: TcpStream, limits: Limits, slot: Slot) -> Result<Session, SessionError> {
        let mut session = Session {
            framed: Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE)),
            env: AgiEnv::default(),
            replies: ReplyReader::default(),
            idle: limits.idle,
            deadline: Instant::now() + limits.env,
            hung_up: false,
            slot,
        };
        loop {
            let line = session.read_line().await?;
            if session.env.push_line(&line)? {
                session.deadline = Instant::now() + limits.rest;
                return Ok(session);
            }
        }
    }

    pub fn env(&self) -> &AgiEnv {
        &self.env
    }

    /// The session has shown it is what it says (its secret, or AMI confirmed its
    /// channel): it keeps its slot from now on. Until then a new connection that finds no
    /// free slot may take this one's, which ends the session. `false` if that happened.
    pub fn settle(&self) -> bool {
        self.slot.settle()
    }

    /// Asterisk reported the channel hung up (a `HANGUP` line) during this session.
    pub fn hung_up(&self) -> bool {
        self.hung_up
    }

    /// Sends one command and waits for its reply.
    pub async fn command(&mut self, command: &AgiCommand) -> Result<AgiReply, SessionError> {
        debug!(command = command.as_str(), "agi command");
        self.framed
            .send(command.as_str())
            .await
            .map_err(line_error)?;
        loop {
            let line = self.read_line().await?;
            match self.replies.push_line(&line)? {
                ReplyLine::Reply(reply) => return Ok(reply),
                ReplyLine::Hangup => self.hung_up = true,
                ReplyLine::More => {}
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, SessionError> {
        let idle_until = Instant::now() + self.idle;
        match tokio::time::timeout_at(idle_until.min(self.deadline), self.framed.next()).await {
            Err(_) if idle_until <= self.deadline => Err(SessionError::Idle(self.idle)),
            Err(_) => Err(SessionError::TooSlow),
            Ok(None) => Err(SessionError::Closed),
            Ok(Some(line)) => line.map_err(line_error),
        }
    }
}

/// The session slots: at most `max` sessions, `per_source` from one address. A session is
/// *unsettled* until it has shown it is what it says ([`Session::settle`]): when a new
/// connection finds no slot, the oldest unsettled session (of the same address, when that
/// address is at its cap) gives its slot up. Asterisk's sessions settle within a moment;
/// a connection that dribbles its block, or a forged session AMI never confirms, keeps
/// nothing.
struct Slots {
    max: usize,
    per_source: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    /// The open sessions by id; ids grow, so the first unsettled one is the oldest.
    open: BTreeMap<u64, Held>,
    by_source: HashMap<IpAddr, usize>,
}

struct Held {
    source: IpAddr,
    settled: bool,
    /// Cancelled when the session gives its slot up.
    displaced: CancellationToken,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    /// `max` sessions are open, all settled.
    Full,
    /// `per_source` sessions of this address are open, all settled.
    SourceFull,
}

impl Slots {
    fn new(max: usize, per_source: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            per_source: per_source.min(max),
            inner: Mutex::new(SlotsInner::default()),
        })
    }

    /// A slot for a connection from `source`, made free if need be.
    fn acquire(self: &Arc<Self>, source: IpAddr) -> Result<Slot, NoSlot> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.by_source.get(&source).copied().unwrap_or(0) >= self.per_source
            && !inner.displace(Some(source))
        {
            return Err(NoSlot::SourceFull);
        }
        if inner.open.len() >= self.max && !inner.displace(None) {
            return Err(NoSlot::Full);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let displaced = CancellationToken::new();
        inner.open.insert(
            id,
            Held {
                source,
                settled: false,
                displaced: displaced.clone(),
            },
        );
        *inner.by_source.entry(source).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            id,
            displaced,
        })
    }
}

impl SlotsInner {
    /// Frees the slot of the oldest unsettled session (of `source`, if given).
    fn displace(&mut self, source: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .find(|(_, h)| !h.settled && source.is_none_or(|s| s == h.source))
            .map(|(id, _)| *id);
        let Some(held) = oldest.and_then(|id| self.open.remove(&id)) else {
            return false;
        };
        self.release(held.source);
        held.displaced.cancel();
        true
    }

    fn release(&mut self, source: IpAddr) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }
}

/// A session's hold on a slot; freed when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    displaced: CancellationToken,
}

impl Slot {
    /// The session read its environment: it keeps its slot from now on. `false` if it
    /// gave the slot up meanwhile.
    fn settle(&self) -> bool {
        let mut inner = self
            .slots
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match inner.open.get_mut(&self.id) {
            Some(held) => {
                held.settled = true;
                true
            }
            None => false,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self
            .slots
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = inner.open.remove(&self.id) {
            inner.release(held.source);
        }
    }
}

/// At most one warning per period for what a flood repeats (refused connections, bad
/// sessions): says how many were left out since the last one.
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(left out since the last)` when a warning may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match state.0 {
            Some(last) if now < last + self.every => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

fn line_error(e: LinesCodecError) -> SessionError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => SessionError::LineTooLong,
        LinesCodecError::Io(e) => SessionError::Io(e),
    }
}

/// The bound FastAGI listener.
pub struct AgiServer {
    listener: TcpListener,
    max_sessions: usize,
    max_sessions_per_source: usize,
    limits: Limits,
    secret: Option<UrlSecret>,
}

impl AgiServer {
    /// Binds `agi.listen`; `Ok(None)` when it is empty (FastAGI disabled). Warns when the
    /// address is not loopback and `agi.secret` is not set.
    pub async fn bind(config: &AgiConfig) -> std::io::Result<Option<AgiServer>> {
        if config.listen.is_empty() {
            return Ok(None);
        }
        let listener = TcpListener::bind(&*config.listen).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && config.secret.is_none() {
            warn!(
                listen = %addr,
                "the FastAGI listener is not on loopback and agi.secret is not set: anyone \
                 who can reach this port can open sessions; set agi.secret, firewall it or \
                 use 127.0.0.1"
            );
        }
        info!(listen = %addr, secret = config.secret.is_some(), "FastAGI listening");
        Ok(Some(AgiServer {
            listener,
            max_sessions: config.max_sessions,
            max_sessions_per_source: config.max_sessions_per_source,
            limits: Limits {
                idle: config.idle_timeout,
                env: config.idle_timeout,
                rest: config.decision_timeout.saturating_add(config.idle_timeout),
            },
            secret: config.secret.clone(),
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// The same server, its listener registered with the runtime this is called on (a
    /// listener answers to the runtime that made it: one moved to another runtime's thread
    /// would still be woken through the first).
    pub fn reregister(self) -> std::io::Result<AgiServer> {
        let listener = self.listener.into_std()?;
        Ok(AgiServer {
            listener: TcpListener::from_std(listener)?,
            ..self
        })
    }

    /// Accepts sessions until `cancel`, then waits up to `grace` for those in progress.
    pub async fn run<S: Script>(self, script: S, cancel: CancellationToken, grace: Duration) {
        let script = Arc::new(script);
        let slots = Slots::new(self.max_sessions, self.max_sessions_per_source);
        let sessions = TaskTracker::new();
        let overloaded = Throttle::new(Duration::from_secs(10));
        let failed = Arc::new(Throttle::new(Duration::from_secs(10)));
        let refused = Arc::new(Throttle::new(Duration::from_secs(10)));
        let secret = Arc::new(self.secret.clone());
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = cancel.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    warn!(error = %e, "FastAGI accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match slots.acquire(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    if let Some(left_out) = overloaded.allow() {
                        let key = match why {
                            NoSlot::Full => "agi.max_sessions",
                            NoSlot::SourceFull => "agi.max_sessions_per_source",
                        };
                        warn!(
                            %peer,
                            limit = key,
                            like_it_since_last_warning = left_out,
                            "too many FastAGI sessions at once: closed this one; its call goes \
                             on without Zammad's decision"
                        );
                    }
                    script.not_run(NotRun::Overloaded);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let script = script.clone();
            let limits = self.limits;
            let (failed, refused, secret) = (failed.clone(), refused.clone(), secret.clone());
            sessions.spawn(
                async move {
                    let displaced = slot.displaced.clone();
                    let started = tokio::select! {
                        biased;
                        _ = displaced.cancelled() => Err(SessionError::Displaced),
                        started = Session::start(stream, limits, slot) => started,
                    };
                    let mut session = match started {
                        Ok(session) => session,
                        Err(SessionError::Closed) => {
                            debug!("FastAGI connection closed before its environment ended");
                            return;
                        }
                        Err(SessionError::Displaced) => {
                            debug!("FastAGI session still reading its environment gave its slot to a new connection");
                            script.not_run(NotRun::Failed);
                            return;
                        }
                        Err(e) => {
                            if let Some(left_out) = failed.allow() {
                                warn!(error = %e, like_it_since_last_warning = left_out,
                                    "FastAGI session refused");
                            }
                            script.not_run(NotRun::Failed);
                            return;
                        }
                    };
                    if let Some(secret) = &*secret
                        && !session.env().query().iter().any(|(k, v)| k == "secret" && secret.matches(v))
                    {
                        if let Some(left_out) = refused.allow() {
                            warn!(like_it_since_last_warning = left_out,
                                "FastAGI session without the right secret= (agi.secret): closed");
                        }
                        script.not_run(NotRun::Refused);
                        return;
                    }
                    // With a secret, knowing it is enough; without, the script settles the
                    // session once AMI confirms its channel.
                    if secret.is_some() && !session.settle() {
                        script.not_run(NotRun::Failed);
                        return;
                    }
                    tokio::select! {
                        biased;
                        () = script.run(&mut session) => {}
                        _ = displaced.cancelled() => {
                            debug!("FastAGI session not confirmed yet gave its slot to a new connection");
                            script.not_run(NotRun::Failed);
                        }
                    }
                }
                .instrument(info_span!("agi", %peer)),
            );
        }
        sessions.close();
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            warn!("FastAGI sessions still open at shutdown");
        }
    }
}
