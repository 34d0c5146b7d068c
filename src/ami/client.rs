//! The AMI connection task and its handle.
//!
//! Owns the AMI socket (TCP, or TLS: [`super::tls`]): one task holds the `Framed<AmiStream, AmiCodec>`, logs in
//! (MD5 challenge; the secret in clear text only with `ami.plain_login`), keeps the map of
//! pending actions keyed by ActionID, sends a `Ping` every `ping_interval`, and reconnects
//! with [`Backoff`] when
//! the connection is lost. Everyone else holds a cloneable [`AmiHandle`], which sends a
//! command plus a `oneshot` over `mpsc`. Events go out on an unbounded channel as
//! [`AmiInput`], so the reader never waits on anyone (Asterisk drops a client whose reads
//! lag); the connection state goes out on a `watch` as [`AmiStatus`]. What the events mean
//! is the tracker's business.
//!
//! ```text
//! spawn(settings, cancel) -> (AmiHandle, UnboundedReceiver<AmiInput>, watch::Receiver<AmiStatus>, JoinHandle<()>)
//! AmiHandle::action(&self, AmiMessage) -> Result<AmiMessage, AmiError>        one response
//! AmiHandle::list_action(&self, AmiMessage) -> Result<Vec<AmiMessage>, AmiError>  list events
//! AmiHandle::list_action_in_stream(&self, AmiMessage, tag) -> Result<(), AmiError>  list as an AmiInput
//! ```

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::backoff::Backoff;
use super::codec::{AmiCodec, AmiFrame};
use super::message::{AmiKind, AmiMessage};
use super::stream::{AmiStream, ReadNow, Tap};
use super::tls::AmiTls;
use crate::config::AmiConfig;

/// How to reach and keep the AMI connection.
#[derive(Debug, Clone)]
pub struct AmiSettings {
    /// `host:port`.
    pub address: String,
    pub username: String,
    pub secret: SecretString,
    /// How often to send `Ping`.
    pub ping_interval: Duration,
    /// How long a `Ping` may go unanswered before the connection counts as dead; also
    /// bounds each write.
    pub ping_timeout: Duration,
    /// Bounds the TCP connect, and then the login.
    pub connect_timeout: Duration,
    /// How long [`AmiHandle::action`] and [`AmiHandle::list_action`] wait for their reply.
    pub action_timeout: Duration,
    pub backoff: Backoff,
    /// TLS on the connection (`ami.tls`), else plain TCP.
    pub tls: Option<AmiTls>,
    /// Where every byte read from Asterisk also goes (`record`); `None` in the daemon.
    pub tap: Option<Tap>,
    /// Send the secret in clear text when the MD5 challenge is refused (`ami.plain_login`);
    /// off, such a login fails with [`AmiError::ChallengeRefused`] and the secret stays here.
    pub plain_login: bool,
}

impl AmiSettings {
    /// Settings with the defaults: ping every 15 s, 5 s for a pong, a connect and login,
    /// and an action; reconnect after 1 s doubling to 60 s.
    pub fn new(
        address: impl Into<String>,
        username: impl Into<String>,
        secret: SecretString,
    ) -> Self {
        Self {
            address: address.into(),
            username: username.into(),
            secret,
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            action_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            tls: None,
            tap: None,
            plain_login: false,
        }
    }

    /// From the `[ami]` config section; `secret` is the resolved secret (inline, file or
    /// environment, which the config loader decides).
    pub fn from_config(config: &AmiConfig, secret: impl Into<SecretString>) -> Self {
        let mut settings = Self::new(
            config.address.clone(),
            config.username.clone(),
            secret.into(),
        );
        settings.ping_interval = config.ping_interval;
        settings.tls = config.tls.then(|| AmiTls::from_config(config));
        settings.plain_login = config.plain_login;
        settings
    }
}

/// The connection state, on a `watch` channel (readiness reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmiStatus {
    /// Connecting or logging in.
    Connecting,
    LoggedIn,
    /// Waiting before the next attempt.
    Backoff,
}

/// What the connection tells its consumer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmiInput {
    /// A (re)login succeeded; events follow. After a reconnect the consumer should
    /// resynchronise (e.g. with `CoreShowChannels`).
    LoggedIn,
    /// An event that no list action claimed.
    Event(AmiMessage),
    /// The answer to [`AmiHandle::list_action_in_stream`], where the list ended: its
    /// events, or why there are none (the error's message), and the caller's `tag`.
    List {
        tag: u64,
        result: Result<Vec<AmiMessage>, String>,
    },
    /// The logged-in connection was lost; events may have been missed.
    Disconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    #[error("failed to connect to AMI at {address}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {timeout:?} connecting to AMI at {address}")]
    ConnectTimeout { address: String, timeout: Duration },
    /// The TLS handshake failed; `problem` says why in an admin's words (which certificate
    /// check, what to set).
    #[error("TLS with AMI at {address} failed: {problem}")]
    Tls { address: String, problem: String },
    #[error("timed out after {timeout:?} logging in to AMI at {address}")]
    LoginTimeout { address: String, timeout: Duration },
    #[error("failed to log in to AMI at {address} as user {username}: {message}")]
    AuthFailed {
        address: String,
        username: String,
        message: String,
    },
    /// The server would not give an MD5 challenge; the secret was not sent.
    #[error(
        "AMI at {address} refused the MD5 challenge ({message}), so the secret was not sent: \
         it would go in clear text (to allow that, set ami.plain_login = true)"
    )]
    ChallengeRefused { address: String, message: String },
    #[error("AMI at {address} closed the connection")]
    Closed { address: String },
    #[error("failed to talk to AMI at {address}")]
    Io {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("no answer to ping from AMI at {address} within {timeout:?}")]
    PingTimeout { address: String, timeout: Duration },
    #[error("action {action} was rejected by AMI: {message}")]
    Rejected {
        action: String,
        action_id: String,
        message: String,
    },
    #[error("refused to send action {action}")]
    InvalidAction {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("lost the AMI connection before action {action} was answered")]
    Disconnected { action: String },
    #[error("cannot send action {action}: not logged in to AMI")]
    NotConnected { action: String },
    #[error("timed out after {timeout:?} waiting for AMI to answer action {action}")]
    Timeout { action: String, timeout: Duration },
    #[error("the AMI connection task has stopped")]
    Stopped,
}

/// Sends actions through the connection task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AmiHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<AmiStatus>,
    action_timeout: Duration,
    read_now: ReadNow,
}

#[derive(Debug)]
enum Command {
    Action {
        action: AmiMessage,
        reply: oneshot::Sender<Result<AmiMessage, AmiError>>,
    },
    List {
        action: AmiMessage,
        reply: ListReply,
    },
}

/// Where a list action's events go.
#[derive(Debug)]
enum ListReply {
    /// Back to the caller of [`AmiHandle::list_action`].
    Caller(oneshot::Sender<Result<Vec<AmiMessage>, AmiError>>),
    /// Into the input stream, as [`AmiInput::List`] with this tag.
    Stream(u64),
}

impl ListReply {
    fn is_closed(&self) -> bool {
        match self {
            ListReply::Caller(reply) => reply.is_closed(),
            ListReply::Stream(_) => false,
        }
    }

    fn send(
        self,
        result: Result<Vec<AmiMessage>, AmiError>,
        inputs: &mpsc::UnboundedSender<AmiInput>,
    ) {
        match self {
            ListReply::Caller(reply) => drop(reply.send(result)),
            ListReply::Stream(tag) => {
                let result = result.map_err(|e| e.to_string());
                drop(inputs.send(AmiInput::List { tag, result }));
            }
        }
    }
}

impl AmiHandle {
    /// Sends `action` (its `Action` header first; any `ActionID` is replaced by a unique
    /// one) and returns its response. `Response: Error` becomes [`AmiError::Rejected`].
    pub async fn action(&self, action: AmiMessage) -> Result<AmiMessage, AmiError> {
        let name = self.check(&action)?;
        let (reply, rx) = oneshot::channel();
        self.request(Command::Action { action, reply }, rx, name)
            .await
    }

    /// Sends a list action (`CoreShowChannels`, `Status`, ...) and returns the events
    /// carrying its ActionID, up to (not including) the one with `EventList: Complete`.
    /// Those events are not forwarded as [`AmiInput::Event`].
    pub async fn list_action(&self, action: AmiMessage) -> Result<Vec<AmiMessage>, AmiError> {
        let name = self.check(&action)?;
        let (reply, rx) = oneshot::channel();
        let reply = ListReply::Caller(reply);
        self.request(Command::List { action, reply }, rx, name)
            .await
    }

    /// Sends a list action whose answer comes in the input stream, as one
    /// [`AmiInput::List`] with `tag` at the place where the list ended, so that the
    /// consumer takes it in order with the events around it (a list handed over beside
    /// the stream can be overtaken by the events that followed it). A rejection or a lost
    /// connection comes the same way; no answer from a live Asterisk means no input. Returns
    /// once the action is queued.
    pub async fn list_action_in_stream(
        &self,
        action: AmiMessage,
        tag: u64,
    ) -> Result<(), AmiError> {
        self.check(&action)?;
        let reply = ListReply::Stream(tag);
        self.commands
            .send(Command::List { action, reply })
            .await
            .map_err(|_| AmiError::Stopped)
    }

    /// Has the socket read at once, even while its reads are paused under load
    /// ([`super::stream`]): for someone waiting on an event that may have arrived.
    pub fn read_now(&self) {
        self.read_now.ask();
    }

    /// The current connection state.
    pub fn status(&self) -> AmiStatus {
        *self.status.borrow()
    }

    fn check(&self, action: &AmiMessage) -> Result<String, AmiError> {
        let name = action.get("Action").unwrap_or_default().to_owned();
        if name.is_empty() {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "it has no Action header");
            return Err(AmiError::InvalidAction {
                action: name,
                source,
            });
        }
        if let Err(source) = AmiCodec::check(action) {
            return Err(AmiError::InvalidAction {
                action: name,
                source,
            });
        }
        if self.status() != AmiStatus::LoggedIn {
            return Err(AmiError::NotConnected { action: name });
        }
        Ok(name)
    }

    async fn request<T>(
        &self,
        command: Command,
        rx: oneshot::Receiver<Result<T, AmiError>>,
        action: String,
    ) -> Result<T, AmiError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| AmiError::Stopped)?;
        match tokio::time::timeout(self.action_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AmiError::Stopped),
            Err(_) => Err(AmiError::Timeout {
                action,
                timeout: self.action_timeout,
            }),
        }
    }
}

impl Connection {
    /// A connection not made yet, and the handle that talks to it (`queue` actions may
    /// wait at once).
    fn new(
        settings: AmiSettings,
        cancel: CancellationToken,
        inputs: mpsc::UnboundedSender<AmiInput>,
        queue: usize,
    ) -> (Self, AmiHandle) {
        let (commands_tx, commands) = mpsc::channel(queue);
        let (status, status_rx) = watch::channel(AmiStatus::Connecting);
        let read_now = ReadNow::default();
        let handle = AmiHandle {
            commands: commands_tx,
            status: status_rx,
            action_timeout: settings.action_timeout,
            read_now: read_now.clone(),
        };
        let connection = Connection {
            settings,
            read_now,
            cancel,
            commands,
            inputs,
            status,
            next_id: 0,
            pending: HashMap::new(),
            ping: None,
        };
        (connection, handle)
    }
}

/// Starts the connection task, which runs until `cancel` fires.
///
/// Returns the handle for actions, the inputs (login, events, disconnects) in wire order,
/// the status, and the task (it ends after cancellation, having sent `Logoff`).
pub fn spawn(
    settings: AmiSettings,
    cancel: CancellationToken,
) -> (
    AmiHandle,
    mpsc::UnboundedReceiver<AmiInput>,
    watch::Receiver<AmiStatus>,
    JoinHandle<()>,
) {
    let (inputs, inputs_rx) = mpsc::unbounded_channel();
    let span = info_span!("ami", address = %settings.address);
    let (connection, handle) = Connection::new(settings, cancel, inputs, 256);
    let status_rx = handle.status.clone();
    let task = tokio::spawn(connection.run().instrument(span));
    (handle, inputs_rx, status_rx, task)
}

/// One connection attempt and no reconnect, for `check`: connects and logs in once and
/// returns the error if that fails; otherwise serves actions through the handle until
/// `cancel` fires (then sends `Logoff`) or the connection is lost. Events are dropped.
pub async fn connect_once(
    settings: AmiSettings,
    cancel: CancellationToken,
) -> Result<(AmiHandle, JoinHandle<()>), AmiError> {
    let (inputs, _) = mpsc::unbounded_channel();
    let (mut connection, handle) = Connection::new(settings, cancel, inputs, 16);
    let framed = connection.connect_and_login().await?;
    connection.status.send_replace(AmiStatus::LoggedIn);
    let task = tokio::spawn(async move {
        let _ = connection.serve(framed).await;
        connection.status.send_replace(AmiStatus::Connecting);
        connection.fail_waiters();
    });
    Ok((handle, task))
}

/// An action sent and not yet answered.
enum Pending {
    Action {
        name: String,
        reply: oneshot::Sender<Result<AmiMessage, AmiError>>,
    },
    List {
        name: String,
        items: Vec<AmiMessage>,
        reply: ListReply,
    },
}

impl Pending {
    fn is_closed(&self) -> bool {
        match self {
            Pending::Action { reply, .. } => reply.is_closed(),
            Pending::List { reply, .. } => reply.is_closed(),
        }
    }

    fn fail(
        self,
        error: impl FnOnce(String) -> AmiError,
        inputs: &mpsc::UnboundedSender<AmiInput>,
    ) {
        match self {
            Pending::Action { name, reply } => drop(reply.send(Err(error(name)))),
            Pending::List { name, reply, .. } => reply.send(Err(error(name)), inputs),
        }
    }
}

/// Why a logged-in session ended.
enum Ended {
    Cancelled,
    Lost(AmiError),
}

/// What woke the session loop.
enum Wake {
    Cancelled,
    Frame(Option<io::Result<AmiFrame>>),
    Command(Option<Command>),
    PingDue,
    PingTimeout,
}

type AmiFramed = Framed<AmiStream, AmiCodec>;

/// Bytes read from Asterisk at most at once.
const READ_BUFFER: usize = 8 * 1024;

struct Connection {
    settings: AmiSettings,
    /// Ends the socket's pauses ([`AmiHandle::read_now`]).
    read_now: ReadNow,
    cancel: CancellationToken,
    /// Commands from every `AmiHandle`.
    commands: mpsc::Receiver<Command>,
    /// Never blocks: the reader must keep up with Asterisk.
    inputs: mpsc::UnboundedSender<AmiInput>,
    status: watch::Sender<AmiStatus>,
    next_id: u64,
    /// Waiters by ActionID; each gets its reply, or `Disconnected` when the socket goes.
    pending: HashMap<String, Pending>,
    /// The outstanding `Ping`: its ActionID and the moment it times out.
    ping: Option<(String, Instant)>,
}

impl Connection {
    async fn run(mut self) {
        let cancel = self.cancel.clone();
        loop {
            self.status.send_replace(AmiStatus::Connecting);
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                connected = self.connect_and_login() => connected,
            };
            match connected {
                Ok(framed) => {
                    self.settings.backoff.reset();
                    info!(username = %self.settings.username, "logged in to AMI");
                    self.status.send_replace(AmiStatus::LoggedIn);
                    let _ = self.inputs.send(AmiInput::LoggedIn);
                    let ended = self.serve(framed).await;
                    self.status.send_replace(AmiStatus::Connecting);
                    self.fail_waiters();
                    let _ = self.inputs.send(AmiInput::Disconnected);
                    match ended {
                        Ended::Cancelled => return,
                        Ended::Lost(error) => {
                            warn!(error = %chain(&error), "lost the AMI connection")
                        }
                    }
                }
                Err(error @ (AmiError::AuthFailed { .. } | AmiError::ChallengeRefused { .. })) => {
                    error!(
                        username = %self.settings.username,
                        address = %self.settings.address,
                        error = %chain(&error),
                        "AMI authentication failed"
                    );
                }
                Err(error @ AmiError::Tls { .. }) => {
                    error!(error = %chain(&error), "AMI TLS handshake failed");
                }
                Err(error) => warn!(error = %chain(&error), "failed to connect to AMI"),
            }
            self.fail_waiters();
            self.status.send_replace(AmiStatus::Backoff);
            let delay = self.settings.backoff.next_delay();
            debug!(?delay, "waiting before reconnecting to AMI");
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn next_action_id(&mut self) -> String {
        self.next_id += 1;
        format!("azb-{}", self.next_id)
    }

    async fn connect_and_login(&mut self) -> Result<AmiFramed, AmiError> {
        let address = self.settings.address.clone();
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&address))
            .await
            .map_err(|_| AmiError::ConnectTimeout {
                address: address.clone(),
                timeout,
            })?
            .map_err(|source| AmiError::Connect {
                address: address.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let tap = self.settings.tap.clone();
        let stream = match &self.settings.tls {
            None => AmiStream::plain(stream, tap, self.read_now.clone()),
            Some(tls) => tokio::time::timeout(timeout, tls.handshake(stream))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no TLS handshake within {timeout:?}: is ami.address Asterisk's TLS \
                         port (tlsbindaddr in manager.conf)?"
                    ))
                })
                .map(|stream| AmiStream::tls(stream, tap))
                .map_err(|problem| AmiError::Tls {
                    address: address.clone(),
                    problem,
                })?,
        };
        // Reads of at most 8 KiB (tokio-util's default): the task decodes what up to 128
        // reads bring before it lets another task run (tokio's budget counts reads, not
        // frames), so the read size bounds how long a burst of events holds the thread,
        // FastAGI claims waiting on it included (under a millisecond at 8 KiB).
        let mut framed = Framed::with_capacity(stream, AmiCodec::new(), READ_BUFFER);
        tokio::time::timeout(timeout, self.login(&mut framed))
            .await
            .map_err(|_| AmiError::LoginTimeout { address, timeout })??;
        Ok(framed)
    }

    /// `Challenge` (MD5), then `Login` with the key. When the challenge is refused the
    /// secret goes out in clear text only with `plain_login` (and a warning); otherwise the
    /// login ends there.
    async fn login(&mut self, framed: &mut AmiFramed) -> Result<(), AmiError> {
        let id = self.next_action_id();
        let challenge = AmiMessage::from_pairs([
            ("Action", "Challenge"),
            ("ActionID", &id),
            ("AuthType", "MD5"),
        ]);
        self.write(framed, &challenge).await?;
        let reply = self.read_response(framed, &id).await?;

        let id = self.next_action_id();
        let mut login = AmiMessage::from_pairs([
            ("Action", "Login"),
            ("ActionID", &id),
            ("Username", &self.settings.username),
        ]);
        match reply.get("Challenge").filter(|_| !is_error(&reply)) {
            Some(challenge) => {
                login.push("AuthType", "MD5");
                login.push(
                    "Key",
                    &md5_key(challenge, self.settings.secret.expose_secret()),
                );
            }
            None if self.settings.plain_login => {
                warn!(
                    address = %self.settings.address,
                    message = reply.get("Message").unwrap_or_default(),
                    "AMI refused the MD5 challenge: sending the secret in clear text \
                     (ami.plain_login = true)"
                );
                login.push("Secret", self.settings.secret.expose_secret());
            }
            None => {
                return Err(AmiError::ChallengeRefused {
                    address: self.settings.address.clone(),
                    message: reply.get("Message").unwrap_or("no message").to_owned(),
                });
            }
        }
        login.push("Events", "on");
        self.write(framed, &login).await?;
        let reply = self.read_response(framed, &id).await?;
        if reply
            .response()
            .is_some_and(|r| r.eq_ignore_ascii_case("success"))
        {
            return Ok(());
        }
        Err(AmiError::AuthFailed {
            address: self.settings.address.clone(),
            username: self.settings.username.clone(),
            message: reply.get("Message").unwrap_or("no message").to_owned(),
        })
    }

    /// Reads until the response to `id` (before login nothing else is expected).
    async fn read_response(
        &self,
        framed: &mut AmiFramed,
        id: &str,
    ) -> Result<AmiMessage, AmiError> {
        loop {
            match framed.next().await {
                None => return Err(self.closed()),
                Some(Err(source)) => return Err(self.io_error(source)),
                Some(Ok(AmiFrame::Banner(banner))) => debug!(%banner, "AMI banner"),
                Some(Ok(AmiFrame::Skipped(skipped))) => {
                    warn!(error = %skipped, "skipped unreadable AMI input")
                }
                Some(Ok(AmiFrame::Message(message))) => {
                    if message.kind() == AmiKind::Response && message.action_id() == Some(id) {
                        return Ok(message);
                    }
                    debug!(
                        event = message.event(),
                        "ignoring an AMI frame during login"
                    );
                }
            }
        }
    }

    async fn write(&self, framed: &mut AmiFramed, message: &AmiMessage) -> Result<(), AmiError> {
        match tokio::time::timeout(self.settings.ping_timeout, framed.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(self.io_error(source)),
            Err(_) => {
                Err(self.io_error(io::Error::new(io::ErrorKind::TimedOut, "write timed out")))
            }
        }
    }

    fn closed(&self) -> AmiError {
        AmiError::Closed {
            address: self.settings.address.clone(),
        }
    }

    fn io_error(&self, source: io::Error) -> AmiError {
        AmiError::Io {
            address: self.settings.address.clone(),
            source,
        }
    }

    /// The logged-in session: frames in, commands out, pings, until the connection is
    /// lost or cancelled.
    async fn serve(&mut self, mut framed: AmiFramed) -> Ended {
        let interval = self.settings.ping_interval;
        let mut ping_tick = tokio::time::interval_at(Instant::now() + interval, interval);
        ping_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.ping = None;
        let mut commands_open = true;
        loop {
            let ping_deadline = self.ping.as_ref().map(|(_, deadline)| *deadline);
            let wake = tokio::select! {
                _ = self.cancel.cancelled() => Wake::Cancelled,
                frame = framed.next() => Wake::Frame(frame),
                command = self.commands.recv(), if commands_open => Wake::Command(command),
                _ = ping_tick.tick() => Wake::PingDue,
                _ = sleep_until_some(ping_deadline), if ping_deadline.is_some() => Wake::PingTimeout,
            };
            match wake {
                Wake::Cancelled => {
                    let id = self.next_action_id();
                    let logoff = AmiMessage::from_pairs([("Action", "Logoff"), ("ActionID", &id)]);
                    if let Err(error) = self.write(&mut framed, &logoff).await {
                        debug!(error = %chain(&error), "failed to log off");
                    }
                    return Ended::Cancelled;
                }
                Wake::Frame(None) => return Ended::Lost(self.closed()),
                Wake::Frame(Some(Err(source))) => return Ended::Lost(self.io_error(source)),
                Wake::Frame(Some(Ok(frame))) => self.on_frame(frame),
                Wake::Command(None) => commands_open = false,
                Wake::Command(Some(command)) => {
                    if let Err(error) = self.send_command(&mut framed, command).await {
                        return Ended::Lost(error);
                    }
                }
                Wake::PingDue => {
                    self.pending.retain(|_, pending| !pending.is_closed());
                    if self.ping.is_none() {
                        let id = self.next_action_id();
                        let ping = AmiMessage::from_pairs([("Action", "Ping"), ("ActionID", &id)]);
                        if let Err(error) = self.write(&mut framed, &ping).await {
                            return Ended::Lost(error);
                        }
                        self.ping = Some((id, Instant::now() + self.settings.ping_timeout));
                    }
                }
                Wake::PingTimeout => {
                    return Ended::Lost(AmiError::PingTimeout {
                        address: self.settings.address.clone(),
                        timeout: self.settings.ping_timeout,
                    });
                }
            }
        }
    }

    async fn send_command(
        &mut self,
        framed: &mut AmiFramed,
        command: Command,
    ) -> Result<(), AmiError> {
        let (action, pending) = match command {
            Command::Action { reply, .. } if reply.is_closed() => return Ok(()),
            Command::List { reply, .. } if reply.is_closed() => return Ok(()),
            Command::Action { action, reply } => {
                let name = action.get("Action").unwrap_or_default().to_owned();
                (action, Pending::Action { name, reply })
            }
            Command::List { action, reply } => {
                let name = action.get("Action").unwrap_or_default().to_owned();
                let items = Vec::new();
                (action, Pending::List { name, items, reply })
            }
        };
        let id = self.next_action_id();
        let message = with_action_id(&action, &id);
        if let Err(source) = AmiCodec::check(&message) {
            // The handle checks too; this only guards against a bug, without dropping the
            // connection.
            pending.fail(
                |action| AmiError::InvalidAction { action, source },
                &self.inputs,
            );
            return Ok(());
        }
        self.pending.insert(id, pending);
        self.write(framed, &message).await
    }

    fn on_frame(&mut self, frame: AmiFrame) {
        match frame {
            AmiFrame::Banner(banner) => debug!(%banner, "unexpected AMI banner in a session"),
            AmiFrame::Skipped(skipped) => warn!(error = %skipped, "skipped unreadable AMI input"),
            AmiFrame::Message(message) => match message.kind() {
                AmiKind::Response => self.on_response(message),
                AmiKind::Event => self.on_event(message),
                AmiKind::Other => {
                    debug!("ignoring an AMI frame that is neither event nor response")
                }
            },
        }
    }

    fn on_response(&mut self, response: AmiMessage) {
        let Some(id) = response.action_id().map(str::to_owned) else {
            debug!(
                response = response.response(),
                "AMI response without an ActionID"
            );
            return;
        };
        if self.ping.as_ref().is_some_and(|(ping, _)| *ping == id) {
            self.ping = None;
            return;
        }
        match self.pending.remove(&id) {
            None => debug!(action_id = %id, "AMI response nobody waits for"),
            Some(Pending::Action { name, reply }) => {
                let result = match rejection(&name, &id, &response) {
                    Some(rejected) => Err(rejected),
                    None => Ok(response),
                };
                let _ = reply.send(result);
            }
            Some(Pending::List { name, items, reply }) => {
                if let Some(rejected) = rejection(&name, &id, &response) {
                    reply.send(Err(rejected), &self.inputs);
                } else if response
                    .get("EventList")
                    .is_some_and(|v| v.eq_ignore_ascii_case("start"))
                {
                    self.pending
                        .insert(id, Pending::List { name, items, reply });
                } else {
                    // Answered without a list: nothing follows.
                    reply.send(Ok(items), &self.inputs);
                }
            }
        }
    }

    fn on_event(&mut self, event: AmiMessage) {
        if let Some(id) = event.action_id()
            && let Some(Pending::List { items, .. }) = self.pending.get_mut(id)
        {
            if !event
                .get("EventList")
                .is_some_and(|v| v.eq_ignore_ascii_case("complete"))
            {
                items.push(event);
                return;
            }
            if let Some(Pending::List { items, reply, .. }) = self.pending.remove(id) {
                reply.send(Ok(items), &self.inputs);
            }
            return;
        }
        let _ = self.inputs.send(AmiInput::Event(event));
    }

    /// Answers every waiter, and every command still queued, with `Disconnected`.
    fn fail_waiters(&mut self) {
        for (_, pending) in self.pending.drain() {
            pending.fail(|action| AmiError::Disconnected { action }, &self.inputs);
        }
        self.ping = None;
        while let Ok(command) = self.commands.try_recv() {
            let pending = match command {
                Command::Action { action, reply } => Pending::Action {
                    name: action.get("Action").unwrap_or_default().to_owned(),
                    reply,
                },
                Command::List { action, reply } => Pending::List {
                    name: action.get("Action").unwrap_or_default().to_owned(),
                    items: Vec::new(),
                    reply,
                },
            };
            pending.fail(|action| AmiError::NotConnected { action }, &self.inputs);
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn is_error(response: &AmiMessage) -> bool {
    response
        .response()
        .is_some_and(|r| r.eq_ignore_ascii_case("error"))
}

fn rejection(action: &str, action_id: &str, response: &AmiMessage) -> Option<AmiError> {
    is_error(response).then(|| AmiError::Rejected {
        action: action.to_owned(),
        action_id: action_id.to_owned(),
        message: response.get("Message").unwrap_or_default().to_owned(),
    })
}

/// `action` with its `ActionID` (if any) replaced by `id`, right after the first header.
fn with_action_id(action: &AmiMessage, id: &str) -> AmiMessage {
    let mut message = AmiMessage::with_capacity(128, action.len() + 1);
    for (n, (key, value)) in action
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("ActionID"))
        .enumerate()
    {
        message.push(key, value);
        if n == 0 {
            message.push("ActionID", id);
        }
    }
    message
}

/// The key of an MD5 login: lowercase hex of md5(challenge ‖ secret).
pub fn md5_key(challenge: &str, secret: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(challenge.as_bytes());
    hasher.update(secret.as_bytes());
    format!("{:x}", hasher.finalize())
}

/// An error with its sources, `outer: inner: ...`, for one log field.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standins::ami::{FakeAmi, FakeAmiConfig};
    use std::path::Path;

    const WAIT: Duration = Duration::from_secs(5);

    fn settings(fake: &FakeAmi) -> AmiSettings {
        let mut settings = AmiSettings::new(
            fake.addr().to_string(),
            "bridge",
            SecretString::from("bridge-secret"),
        );
        settings.ping_interval = Duration::from_secs(3600);
        settings.ping_timeout = Duration::from_secs(2);
        settings.connect_timeout = Duration::from_secs(2);
        settings.action_timeout = Duration::from_secs(2);
        settings.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(100), 0.0);
        settings
    }

    struct Client {
        handle: AmiHandle,
        inputs: mpsc::UnboundedReceiver<AmiInput>,
        status: watch::Receiver<AmiStatus>,
        task: JoinHandle<()>,
        cancel: CancellationToken,
    }

    fn start(settings: AmiSettings) -> Client {
        let cancel = CancellationToken::new();
        let (handle, inputs, status, task) = spawn(settings, cancel.clone());
        Client {
            handle,
            inputs,
            status,
            task,
            cancel,
        }
    }

    impl Client {
        async fn next(&mut self) -> AmiInput {
            tokio::time::timeout(WAIT, self.inputs.recv())
                .await
                .expect("an AMI input in time")
                .expect("the input channel open")
        }

        async fn next_event(&mut self) -> AmiMessage {
            match self.next().await {
                AmiInput::Event(event) => event,
                other => panic!("expected an event, got {other:?}"),
            }
        }

        async fn wait_status(&mut self, want: AmiStatus) {
            tokio::time::timeout(WAIT, self.status.wait_for(|s| *s == want))
                .await
                .expect("the status in time")
                .unwrap();
        }

        /// Waits for LoggedIn and the FakeAmi's FullyBooted that follows it.
        async fn logged_in(&mut self) {
            assert_eq!(self.next().await, AmiInput::LoggedIn);
            assert_eq!(self.next_event().await.event(), Some("FullyBooted"));
            self.wait_status(AmiStatus::LoggedIn).await;
        }
    }

    fn action(pairs: &[(&str, &str)]) -> AmiMessage {
        AmiMessage::from_pairs(pairs.iter().copied())
    }

    fn named<'a>(
        actions: &'a [AmiMessage],
        name: &'a str,
    ) -> impl Iterator<Item = &'a AmiMessage> + 'a {
        actions
            .iter()
            .filter(move |a| a.get("Action") == Some(name))
    }

    #[tokio::test]
    async fn md5_login_then_recorded_events_flow_through_in_order() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;

        let actions = fake.actions();
        let challenge = named(&actions, "Challenge").next().expect("a Challenge");
        assert_eq!(challenge.get("AuthType"), Some("MD5"));
        let login = named(&actions, "Login").next().expect("a Login");
        assert_eq!(login.get("AuthType"), Some("MD5"));
        assert_eq!(login.get("Username"), Some("bridge"));
        assert_eq!(login.get("Events"), Some("on"));
        assert_eq!(
            login.get("Secret"),
            None,
            "the secret must not cross the wire"
        );
        assert_eq!(login.get("Key").map(str::len), Some(32));

        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ami-transcripts/inbound-answered.txt");
        let transcript = std::fs::read(path).unwrap();
        let names: Vec<String> = String::from_utf8_lossy(&transcript)
            .lines()
            .filter_map(|l| l.strip_prefix("Event: "))
            .map(str::to_owned)
            .collect();
        assert_eq!(fake.send_events(&transcript), Some(names.len()));
        for name in &names {
            assert_eq!(client.next_event().await.event(), Some(name.as_str()));
        }
        assert!(client.inputs.try_recv().is_err());
        assert_eq!(fake.connections(), 1);
    }

    #[tokio::test]
    async fn a_refused_challenge_sends_no_secret_unless_plain_login_allows_it() {
        let fake = FakeAmi::start(FakeAmiConfig {
            md5_challenge: false,
            ..FakeAmiConfig::default()
        })
        .await;
        // As an impostor on 5038 would: no challenge. Nothing is sent but the Challenge.
        let mut client = start(settings(&fake));
        client.wait_status(AmiStatus::Backoff).await;
        let actions = fake.actions();
        assert!(named(&actions, "Login").next().is_none(), "{actions:?}");
        assert!(actions.iter().all(|a| a.get("Secret").is_none()));
        client.cancel.cancel();
        let Err(error) = connect_once(settings(&fake), CancellationToken::new()).await else {
            panic!("logged in without a challenge");
        };
        assert!(
            matches!(error, AmiError::ChallengeRefused { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("ami.plain_login"), "{error}");
        assert!(!error.to_string().contains("bridge-secret"), "{error}");
        // Opted in: the plain secret, as Asterisk without MD5 wants it.
        let mut settings = settings(&fake);
        settings.plain_login = true;
        let mut client = start(settings);
        client.logged_in().await;
        let actions = fake.actions();
        let login = named(&actions, "Login").next().expect("a Login");
        assert_eq!(login.get("Secret"), Some("bridge-secret"));
        assert_eq!(login.get("Key"), None);
    }

    #[tokio::test]
    async fn a_wrong_secret_backs_off_instead_of_looping() {
        let fake = FakeAmi::start(FakeAmiConfig {
            secret: "other".into(),
            ..FakeAmiConfig::default()
        })
        .await;
        let mut settings = settings(&fake);
        settings.backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(200), 0.0);
        let mut client = start(settings);
        client.wait_status(AmiStatus::Backoff).await;
        // Delays 100, 200, 200, ...: about 6 attempts in 1.1 s. A loop without a pause
        // would make hundreds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let attempts = fake.connections();
        assert!((3..=9).contains(&attempts), "{attempts} attempts");
        assert_eq!(fake.logins(), 0);
        assert!(client.inputs.try_recv().is_err(), "no LoggedIn, no events");
        assert_eq!(
            client
                .handle
                .action(action(&[("Action", "Ping")]))
                .await
                .unwrap_err()
                .to_string(),
            "cannot send action Ping: not logged in to AMI"
        );
    }

    #[test]
    fn the_authentication_error_names_user_and_address_but_not_the_secret() {
        let error = AmiError::AuthFailed {
            address: "127.0.0.1:5038".into(),
            username: "bridge".into(),
            message: "Authentication failed".into(),
        };
        assert_eq!(
            error.to_string(),
            "failed to log in to AMI at 127.0.0.1:5038 as user bridge: Authentication failed"
        );
    }

    #[test]
    fn md5_key_is_lowercase_hex_of_challenge_then_secret() {
        // RFC 1321 test vector: md5("abc").
        assert_eq!(md5_key("a", "bc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[tokio::test]
    async fn responses_in_another_order_reach_their_own_callers() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        fake.reorder_next(3);
        let h = &client.handle;
        let (one, two, three) = tokio::join!(
            h.action(action(&[("Action", "UserEvent"), ("UserEvent", "one")])),
            h.action(action(&[
                ("Action", "Setvar"),
                ("Variable", "x"),
                ("Value", "1")
            ])),
            h.action(action(&[("Action", "Redirect"), ("ActionID", "mine")])),
        );
        // The fake answers every action with its own name as the Message.
        assert_eq!(one.unwrap().get("Message"), Some("UserEvent"));
        assert_eq!(two.unwrap().get("Message"), Some("Setvar"));
        assert_eq!(three.unwrap().get("Message"), Some("Redirect"));

        let actions = fake.actions();
        let ids: Vec<&str> = actions.iter().filter_map(AmiMessage::action_id).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "ActionIDs must be unique: {ids:?}");
        assert!(!ids.contains(&"mine"), "the caller's ActionID is replaced");
    }

    #[tokio::test]
    async fn an_error_response_is_a_rejection() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        fake.set_reply(
            "Hangup",
            action(&[("Response", "Error"), ("Message", "No such channel")]),
        );
        let error = client
            .handle
            .action(action(&[
                ("Action", "Hangup"),
                ("Channel", "PJSIP/x"),
                ("Cause", "17"),
            ]))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AmiError::Rejected { action, message, .. } if action == "Hangup" && message == "No such channel"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_action_with_a_line_break_is_refused_and_the_connection_stays() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        let evil = action(&[("Action", "Setvar"), ("Value", "1\r\nAction: Originate")]);
        let error = client.handle.action(evil).await.unwrap_err();
        assert!(matches!(error, AmiError::InvalidAction { .. }), "{error:?}");
        assert!(named(&fake.actions(), "Setvar").next().is_none());
        let ping = client
            .handle
            .action(action(&[("Action", "Ping")]))
            .await
            .unwrap();
        assert_eq!(ping.get("Ping"), Some("Pong"));
        assert_eq!(fake.connections(), 1);
    }

    fn channel(name: &str, uniqueid: &str) -> AmiMessage {
        action(&[
            ("Channel", name),
            ("ChannelState", "6"),
            ("Uniqueid", uniqueid),
            ("Linkedid", "1795596369.0"),
        ])
    }

    #[tokio::test]
    async fn core_show_channels_collects_the_list_without_forwarding_it() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        fake.set_channels(vec![
            channel("PJSIP/trunk-00000001", "1795596369.0"),
            channel("PJSIP/201-00000002", "1795596369.1"),
        ]);
        let list = client
            .handle
            .list_action(action(&[("Action", "CoreShowChannels")]))
            .await
            .unwrap();
        let channels: Vec<_> = list.iter().map(|e| (e.event(), e.get("Channel"))).collect();
        assert_eq!(
            channels,
            [
                (Some("CoreShowChannel"), Some("PJSIP/trunk-00000001")),
                (Some("CoreShowChannel"), Some("PJSIP/201-00000002")),
            ]
        );

        fake.set_channels(Vec::new());
        let empty = client
            .handle
            .list_action(action(&[("Action", "CoreShowChannels")]))
            .await
            .unwrap();
        assert!(empty.is_empty(), "{empty:?}");

        // Nothing of the lists reached the event channel: the next event is this one.
        assert!(fake.send_raw(&b"Event: Marker\r\nPrivilege: user,all\r\n\r\n"[..]));
        assert_eq!(client.next_event().await.event(), Some("Marker"));
    }

    #[tokio::test]
    async fn a_list_in_the_stream_comes_where_asterisk_ended_it() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        fake.set_channels(vec![channel("PJSIP/trunk-00000001", "1795596369.0")]);
        let list = || action(&[("Action", "CoreShowChannels")]);
        let asked = |n: usize| {
            let fake = &fake;
            async move {
                tokio::time::timeout(WAIT, async {
                    while named(&fake.actions(), "CoreShowChannels").count() < n {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("the list action reached the fake")
            }
        };

        // An event before the list and one sent after Asterisk answered it.
        assert!(fake.send_raw(&b"Event: Before\r\n\r\n"[..]));
        client
            .handle
            .list_action_in_stream(list(), 7)
            .await
            .unwrap();
        asked(1).await;
        assert!(fake.send_raw(&b"Event: After\r\n\r\n"[..]));
        assert_eq!(client.next_event().await.event(), Some("Before"));
        match client.next().await {
            AmiInput::List {
                tag: 7,
                result: Ok(items),
            } => {
                let names: Vec<_> = items.iter().map(|e| e.get("Channel")).collect();
                assert_eq!(names, [Some("PJSIP/trunk-00000001")]);
            }
            other => panic!("expected the list tagged 7, got {other:?}"),
        }
        assert_eq!(client.next_event().await.event(), Some("After"));

        // A rejection comes the same way.
        fake.set_reply(
            "CoreShowChannels",
            action(&[("Response", "Error"), ("Message", "Permission denied")]),
        );
        client
            .handle
            .list_action_in_stream(list(), 8)
            .await
            .unwrap();
        match client.next().await {
            AmiInput::List {
                tag: 8,
                result: Err(message),
            } => {
                assert!(message.contains("Permission denied"), "{message}")
            }
            other => panic!("expected the rejection tagged 8, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_connection_fails_the_waiter_and_the_client_logs_in_again() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        fake.set_silent_actions(&["Hangup"]);
        let handle = client.handle.clone();
        let waiter = tokio::spawn(async move {
            handle
                .action(action(&[("Action", "Hangup"), ("Channel", "PJSIP/x")]))
                .await
        });
        tokio::time::timeout(WAIT, async {
            while named(&fake.actions(), "Hangup").next().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the Hangup reached the fake");
        assert!(fake.drop_connection());

        let result = waiter.await.unwrap();
        assert!(
            matches!(&result, Err(AmiError::Disconnected { action }) if action == "Hangup"),
            "{result:?}"
        );
        assert_eq!(client.next().await, AmiInput::Disconnected);
        client.logged_in().await;
        assert_eq!(fake.logins(), 2);
        assert_eq!(fake.connections(), 2);
        let ping = client
            .handle
            .action(action(&[("Action", "Ping")]))
            .await
            .unwrap();
        assert_eq!(ping.get("Ping"), Some("Pong"));
    }

    #[tokio::test]
    async fn an_unanswered_ping_drops_the_connection_and_reconnects() {
        let fake = FakeAmi::start(FakeAmiConfig {
            silent_actions: vec!["Ping".into()],
            ..FakeAmiConfig::default()
        })
        .await;
        let mut settings = settings(&fake);
        settings.ping_interval = Duration::from_millis(100);
        settings.ping_timeout = Duration::from_millis(100);
        let mut client = start(settings);
        client.logged_in().await;
        assert_eq!(client.next().await, AmiInput::Disconnected);
        client.logged_in().await;
        assert!(fake.connections() >= 2);
        assert!(named(&fake.actions(), "Ping").next().is_some());
    }

    #[tokio::test]
    async fn answered_pings_keep_the_connection() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut settings = settings(&fake);
        settings.ping_interval = Duration::from_millis(50);
        settings.ping_timeout = Duration::from_millis(300);
        let mut client = start(settings);
        client.logged_in().await;
        // Longer than ping_timeout: a pong the client failed to match would show.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(named(&fake.actions(), "Ping").count() >= 5);
        assert_eq!(fake.connections(), 1);
        assert!(client.inputs.try_recv().is_err(), "no Disconnected");
    }

    #[tokio::test]
    async fn cancelling_logs_off_and_ends_the_task() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut client = start(settings(&fake));
        client.logged_in().await;
        client.cancel.cancel();
        tokio::time::timeout(WAIT, &mut client.task)
            .await
            .expect("the task ends")
            .unwrap();
        assert_eq!(client.next().await, AmiInput::Disconnected);
        tokio::time::timeout(WAIT, async {
            while named(&fake.actions(), "Logoff").next().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a Logoff");
        let error = client
            .handle
            .action(action(&[("Action", "Ping")]))
            .await
            .unwrap_err();
        assert!(
            matches!(error, AmiError::NotConnected { .. } | AmiError::Stopped),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_address_backs_off() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut settings = AmiSettings::new(address, "bridge", SecretString::from("x"));
        settings.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(40), 0.0);
        let mut client = start(settings);
        client.wait_status(AmiStatus::Backoff).await;
        let error = client
            .handle
            .action(action(&[("Action", "Ping")]))
            .await
            .unwrap_err();
        assert!(matches!(error, AmiError::NotConnected { .. }), "{error:?}");
    }
}
