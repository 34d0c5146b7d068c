//! The FastAGI listener and one session's exchange with Asterisk.
//!
//! Owns the socket side: accepting (at most `agi.max_sessions` at once; more are closed at
//! once, and Asterisk's dialplan goes on), reading the environment block, sending one
//! command at a time and reading its reply (skipping the `HANGUP` lines Asterisk writes
//! when the caller hangs up), and the idle timeout on every read. A session that sends
//! garbage or goes silent is closed and logged; no session affects another.

use super::protocol::{AgiCommand, AgiEnv, AgiError, AgiReply, MAX_LINE, ReplyLine, ReplyReader};
use crate::config::AgiConfig;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    /// `agi.max_sessions` sessions were open already; this one was closed at once.
    Overloaded,
    /// It broke before its environment block ended.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("asterisk closed the FastAGI connection")]
    Closed,
    #[error("asterisk sent nothing for {0:?}")]
    Idle(Duration),
    #[error("a FastAGI line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error(transparent)]
    Protocol(#[from] AgiError),
    #[error("FastAGI connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// One FastAGI connection: the environment Asterisk sent and the command channel.
pub struct Session {
    framed: Framed<TcpStream, LinesCodec>,
    env: AgiEnv,
    replies: ReplyReader,
    idle: Duration,
    hung_up: bool,
}

impl Session {
    /// Reads the `agi_*` block up to its blank line.
    async fn start(stream: TcpStream, idle: Duration) -> Result<Session, SessionError> {
        let mut session = Session {
            framed: Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE)),
            env: AgiEnv::default(),
            replies: ReplyReader::default(),
            idle,
            hung_up: false,
        };
        loop {
            let line = session.read_line().await?;
            if session.env.push_line(&line)? {
                return Ok(session);
            }
        }
    }

    pub fn env(&self) -> &AgiEnv {
        &self.env
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
        match tokio::time::timeout(self.idle, self.framed.next()).await {
            Err(_) => Err(SessionError::Idle(self.idle)),
            Ok(None) => Err(SessionError::Closed),
            Ok(Some(line)) => line.map_err(line_error),
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
    idle_timeout: Duration,
}

impl AgiServer {
    /// Binds `agi.listen`; `Ok(None)` when it is empty (FastAGI disabled). Warns when the
    /// address is not loopback: FastAGI has no authentication.
    pub async fn bind(config: &AgiConfig) -> std::io::Result<Option<AgiServer>> {
        if config.listen.is_empty() {
            return Ok(None);
        }
        let listener = TcpListener::bind(&*config.listen).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            warn!(
                listen = %addr,
                "the FastAGI listener is not on loopback: FastAGI has no authentication, so \
                 anyone who can reach this port can post calls to Zammad; firewall it or use 127.0.0.1"
            );
        }
        info!(listen = %addr, "FastAGI listening");
        Ok(Some(AgiServer {
            listener,
            max_sessions: config.max_sessions,
            idle_timeout: config.idle_timeout,
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// Accepts sessions until `cancel`, then waits up to `grace` for those in progress.
    pub async fn run<S: Script>(self, script: S, cancel: CancellationToken, grace: Duration) {
        let script = Arc::new(script);
        let slots = Arc::new(Semaphore::new(self.max_sessions));
        let sessions = TaskTracker::new();
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(
                    %peer,
                    max_sessions = self.max_sessions,
                    "too many FastAGI sessions at once (agi.max_sessions): closed this one; its \
                     call goes on without Zammad's decision"
                );
                script.not_run(NotRun::Overloaded);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let script = script.clone();
            let idle = self.idle_timeout;
            sessions.spawn(
                async move {
                    let _slot = slot;
                    match Session::start(stream, idle).await {
                        Ok(mut session) => {
                            script.run(&mut session).await;
                        }
                        Err(SessionError::Closed) => {
                            debug!("FastAGI connection closed before its environment ended")
                        }
                        Err(e) => {
                            warn!(error = %e, "FastAGI session refused");
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
