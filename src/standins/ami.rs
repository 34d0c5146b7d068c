//! `FakeAmi`: a scripted AMI peer on `127.0.0.1:0`, for tests and the in-process demo.
//!
//! Owns a listener and one task per accepted connection. Each connection speaks enough
//! AMI to be a convincing Asterisk: the banner, `Challenge` (MD5) and `Login` (plain or
//! MD5 key; a wrong secret gets `Authentication failed` and the socket closed), then
//! `Ping`, `CoreShowChannels` (an event list), `Logoff`, and `Response: Success` for any
//! other action. Every action received is recorded. The test drives it: stream recorded
//! bytes to the logged-in client, drop the connection, stay silent on chosen actions,
//! answer a batch of actions in reverse order, or take a while to list the channels (as
//! a busy Asterisk does, with events going on meanwhile). It knows nothing of calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info_span};

use crate::ami::AmiMessage;
use crate::ami::client::md5_key;
use crate::ami::codec::{AmiCodec, AmiFrame};

/// How the fake behaves; change it later with the setters on [`FakeAmi`].
#[derive(Debug, Clone)]
pub struct FakeAmiConfig {
    pub username: String,
    pub secret: String,
    /// The greeting line, without its CRLF.
    pub banner: String,
    /// Answer `Challenge` with a challenge; false refuses it (as an impostor on the port
    /// would, to be sent the secret in clear text): the client then logs in only with
    /// `ami.plain_login`.
    pub md5_challenge: bool,
    /// Actions (names compared case-insensitively, e.g. `"Ping"`) that get no reply at all.
    pub silent_actions: Vec<String>,
    /// Wait before answering a failed login (Asterisk waits 1 s).
    pub auth_failure_delay: Duration,
}

impl Default for FakeAmiConfig {
    fn default() -> Self {
        Self {
            username: "bridge".into(),
            secret: "bridge-secret".into(),
            banner: "Asterisk Call Manager/11.0.0".into(),
            md5_challenge: true,
            silent_actions: Vec::new(),
            auth_failure_delay: Duration::ZERO,
        }
    }
}

/// The running fake. Dropping it stops the listener and closes every connection.
pub struct FakeAmi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _accept: AbortOnDropHandle<()>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Logins {
    total: usize,
    /// A logged-in connection is open.
    current: bool,
}

enum Control {
    Raw(Bytes),
    Drop,
}

struct Shared {
    config: Mutex<FakeAmiConfig>,
    actions: Mutex<Vec<AmiMessage>>,
    channels: Mutex<Vec<AmiMessage>>,
    /// The logged-in connection that `send_raw` and `drop_connection` address, by
    /// connection number; cleared when it closes.
    current: Mutex<Option<(usize, mpsc::UnboundedSender<Control>)>>,
    connections: AtomicUsize,
    logins: watch::Sender<Logins>,
    /// How many of the next ordinary responses to hold back and then send in reverse.
    reorder: AtomicUsize,
    /// Replies set by the test, by lowercase action name.
    scripted: Mutex<HashMap<String, AmiMessage>>,
    /// How long `CoreShowChannels` takes to list the channels.
    list_delay: Mutex<Duration>,
    /// Channel lists handed out so far.
    lists: AtomicUsize,
}

/// A std mutex guard; the fake never holds one across an `.await`.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeAmi {
    /// Binds `127.0.0.1:0` and starts accepting.
    pub async fn start(config: FakeAmiConfig) -> FakeAmi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake AMI");
        let addr = listener
            .local_addr()
            .expect("local address of the fake AMI");
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            actions: Mutex::default(),
            channels: Mutex::default(),
            current: Mutex::default(),
            connections: AtomicUsize::new(0),
            logins: watch::Sender::new(Logins::default()),
            reorder: AtomicUsize::new(0),
            scripted: Mutex::default(),
            list_delay: Mutex::default(),
            lists: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(
            accept_loop(listener, Arc::clone(&shared)).instrument(info_span!("fake_ami", %addr)),
        );
        FakeAmi {
            addr,
            shared,
            _accept: AbortOnDropHandle::new(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every action received so far, on every connection, in order.
    pub fn actions(&self) -> Vec<AmiMessage> {
        lock(&self.shared.actions).clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        self.shared.logins.borrow().total
    }

    /// Waits until a logged-in connection is open.
    pub async fn wait_logged_in(&self) {
        let mut logins = self.shared.logins.subscribe();
        let _ = logins.wait_for(|l| l.current).await;
    }

    /// Waits until `n` logins have succeeded in all.
    pub async fn wait_logins(&self, n: usize) {
        let mut logins = self.shared.logins.subscribe();
        let _ = logins.wait_for(|l| l.total >= n).await;
    }

    /// Writes `bytes` as they are to the logged-in connection. False if there is none.
    pub fn send_raw(&self, bytes: impl Into<Bytes>) -> bool {
        match &*lock(&self.shared.current) {
            Some((_, control)) => control.send(Control::Raw(bytes.into())).is_ok(),
            None => false,
        }
    }

    /// Sends the `Event:` frames of a recorded stream (a transcript: banner, responses
    /// and events) to the logged-in connection, byte for byte. Returns how many events it
    /// sent, or `None` if no client is logged in.
    pub fn send_events(&self, transcript: &[u8]) -> Option<usize> {
        let (events, count) = event_frames(transcript);
        self.send_raw(events).then_some(count)
    }

    /// Closes the logged-in connection's socket.
    pub fn drop_connection(&self) -> bool {
        match lock(&self.shared.current).take() {
            Some((_, control)) => control.send(Control::Drop).is_ok(),
            None => false,
        }
    }

    /// The channels `CoreShowChannels` reports: each message holds a channel's headers
    /// (`Channel`, `Uniqueid`, `Linkedid`, ...); `Event` and `ActionID` are added.
    pub fn set_channels(&self, channels: Vec<AmiMessage>) {
        *lock(&self.shared.channels) = channels;
    }

    /// The secret logins need from now on (a changed one makes the next login fail, as
    /// when an admin edits manager.conf).
    pub fn set_secret(&self, secret: &str) {
        lock(&self.shared.config).secret = secret.to_owned();
    }

    /// Actions that from now on get no reply at all (e.g. `["Ping"]`).
    pub fn set_silent_actions(&self, actions: &[&str]) {
        lock(&self.shared.config).silent_actions =
            actions.iter().map(|a| (*a).to_owned()).collect();
    }

    /// From now on, answers `action` (after login) with `reply` (its first header should be
    /// `Response`; the `ActionID` is added after it), e.g. an `Error` for `Hangup`.
    pub fn set_reply(&self, action: &str, reply: AmiMessage) {
        lock(&self.shared.scripted).insert(action.to_ascii_lowercase(), reply);
    }

    /// From now on `CoreShowChannels` is answered at once ("Channels will follow") and
    /// its list comes `delay` later: the channels as they are then, after the events sent
    /// meanwhile, as Asterisk walking a long channel list while calls go on.
    pub fn set_list_delay(&self, delay: Duration) {
        *lock(&self.shared.list_delay) = delay;
    }

    /// Channel lists (`CoreShowChannels`) handed out so far. Each takes the channels set
    /// with [`FakeAmi::set_channels`] at the moment it is counted.
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// Holds back the replies to the next `n` ordinary actions (not Login, Ping or
    /// CoreShowChannels) and then sends them in reverse order.
    pub fn reorder_next(&self, n: usize) {
        self.shared.reorder.store(n, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with this task, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "fake AMI accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let number = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        connections.spawn(
            serve(stream, Arc::clone(&shared), number)
                .instrument(info_span!("peer", %peer, number)),
        );
        while connections.try_join_next().is_some() {}
    }
}

/// What one connection's loop woke up for.
enum Wake {
    Frame(Option<std::io::Result<AmiFrame>>),
    Control(Option<Control>),
}

/// What to do after an action.
enum Reply {
    Send(Vec<AmiMessage>),
    SendAndClose(Vec<AmiMessage>),
}

struct Session {
    shared: Arc<Shared>,
    number: usize,
    challenge: Option<String>,
    logged_in: bool,
    held: Vec<AmiMessage>,
    control: mpsc::UnboundedSender<Control>,
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, number: usize) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, AmiCodec::new());
    let (control, mut controls) = mpsc::unbounded_channel();
    let mut session = Session {
        shared,
        number,
        challenge: None,
        logged_in: false,
        held: Vec::new(),
        control,
    };
    let banner = format!("{}\r\n", lock(&session.shared.config).banner);
    if write.write_all(banner.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let wake = tokio::select! {
            frame = reader.next() => Wake::Frame(frame),
            control = controls.recv() => Wake::Control(control),
        };
        let reply = match wake {
            Wake::Frame(Some(Ok(AmiFrame::Message(action)))) => session.handle(action).await,
            Wake::Frame(Some(Ok(_))) => continue,
            Wake::Frame(None | Some(Err(_))) => break,
            Wake::Control(Some(Control::Raw(bytes))) => match write.write_all(&bytes).await {
                Ok(()) => continue,
                Err(_) => break,
            },
            Wake::Control(Some(Control::Drop) | None) => break,
        };
        let (messages, close) = match reply {
            Reply::Send(messages) => (messages, false),
            Reply::SendAndClose(messages) => (messages, true),
        };
        if write_messages(&mut write, &messages).await.is_err() || close {
            break;
        }
    }
    session.closed();
}

async fn write_messages(
    write: &mut OwnedWriteHalf,
    messages: &[AmiMessage],
) -> std::io::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut buf = BytesMut::new();
    for message in messages {
        AmiCodec::new().encode(message, &mut buf)?;
    }
    write.write_all(&buf).await
}

impl Session {
    async fn handle(&mut self, action: AmiMessage) -> Reply {
        lock(&self.shared.actions).push(action.clone());
        let name = action
            .get("Action")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let id = action.action_id().map(str::to_owned);
        let config = lock(&self.shared.config).clone();
        if config
            .silent_actions
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&name))
        {
            return Reply::Send(Vec::new());
        }
        let respond = |pairs: &[(&str, &str)]| response(id.as_deref(), pairs);
        match name.as_str() {
            "challenge" if !config.md5_challenge => Reply::Send(vec![respond(&[
                ("Response", "Error"),
                ("Message", "Authentication type not supported"),
            ])]),
            "challenge"
                if !action
                    .get("AuthType")
                    .is_some_and(|t| t.eq_ignore_ascii_case("md5")) =>
            {
                Reply::Send(vec![respond(&[
                    ("Response", "Error"),
                    ("Message", "Must specify AuthType"),
                ])])
            }
            "challenge" => {
                let challenge = fastrand::u32(100_000_000..1_000_000_000).to_string();
                let reply = respond(&[("Response", "Success"), ("Challenge", &challenge)]);
                self.challenge = Some(challenge);
                Reply::Send(vec![reply])
            }
            "login" if self.logged_in => Reply::Send(vec![respond(&[
                ("Response", "Success"),
                ("Message", "Already authenticated"),
            ])]),
            "login" => {
                if !self.credentials_ok(&action, &config) {
                    tokio::time::sleep(config.auth_failure_delay).await;
                    return Reply::SendAndClose(vec![respond(&[
                        ("Response", "Error"),
                        ("Message", "Authentication failed"),
                    ])]);
                }
                self.logged_in();
                let booted = AmiMessage::from_pairs([
                    ("Event", "FullyBooted"),
                    ("Privilege", "system,all"),
                    ("Uptime", "1"),
                    ("LastReload", "1"),
                    ("Status", "Fully Booted"),
                ]);
                Reply::Send(vec![
                    respond(&[
                        ("Response", "Success"),
                        ("Message", "Authentication accepted"),
                    ]),
                    booted,
                ])
            }
            "logoff" => Reply::SendAndClose(vec![respond(&[
                ("Response", "Goodbye"),
                ("Message", "Thanks for all the fish."),
            ])]),
            _ if !self.logged_in => Reply::Send(vec![respond(&[
                ("Response", "Error"),
                ("Message", "Permission denied"),
            ])]),
            _ if lock(&self.shared.scripted).contains_key(&name) => {
                let scripted = lock(&self.shared.scripted)[&name].clone();
                let pairs: Vec<(&str, &str)> = scripted.iter().collect();
                Reply::Send(vec![respond(&pairs)])
            }
            "ping" => Reply::Send(vec![respond(&[
                ("Response", "Success"),
                ("Ping", "Pong"),
                ("Timestamp", "1795596369.000000"),
            ])]),
            "coreshowchannels" => Reply::Send(self.core_show_channels(id)),
            _ => {
                let action_name = action.get("Action").unwrap_or_default();
                let reply = respond(&[("Response", "Success"), ("Message", action_name)]);
                Reply::Send(self.maybe_hold(reply))
            }
        }
    }

    fn credentials_ok(&self, action: &AmiMessage, config: &FakeAmiConfig) -> bool {
        if action.get("Username") != Some(config.username.as_str()) {
            return false;
        }
        let md5 = action
            .get("AuthType")
            .is_some_and(|t| t.eq_ignore_ascii_case("md5"));
        match (
            md5,
            &self.challenge,
            action.get("Key"),
            action.get("Secret"),
        ) {
            (true, Some(challenge), Some(key), _) => {
                key.eq_ignore_ascii_case(&md5_key(challenge, &config.secret))
            }
            (false, _, _, Some(secret)) => secret == config.secret,
            _ => false,
        }
    }

    fn logged_in(&mut self) {
        self.logged_in = true;
        *lock(&self.shared.current) = Some((self.number, self.control.clone()));
        self.shared.logins.send_modify(|l| {
            l.total += 1;
            l.current = true;
        });
    }

    fn closed(&mut self) {
        let mut current = lock(&self.shared.current);
        if current.as_ref().is_some_and(|(n, _)| *n == self.number) {
            *current = None;
        }
        let still_open = current.is_some();
        drop(current);
        self.shared.logins.send_modify(|l| l.current = still_open);
    }

    fn core_show_channels(&self, id: Option<String>) -> Vec<AmiMessage> {
        let start = response(
            id.as_deref(),
            &[
                ("Response", "Success"),
                ("EventList", "start"),
                ("Message", "Channels will follow"),
            ],
        );
        let delay = *lock(&self.shared.list_delay);
        if delay.is_zero() {
            let mut out = vec![start];
            out.extend(Self::channel_list(&self.shared, id.as_deref()));
            return out;
        }
        let shared = Arc::clone(&self.shared);
        let control = self.control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut buf = BytesMut::new();
            let list = Session::channel_list(&shared, id.as_deref());
            for message in &list {
                if AmiCodec::new().encode(message, &mut buf).is_err() {
                    return;
                }
            }
            if control.send(Control::Raw(buf.freeze())).is_err() {
                // The connection closed meanwhile: nobody got this list.
                shared.lists.fetch_sub(1, Ordering::SeqCst);
            }
        });
        vec![start]
    }

    /// The `CoreShowChannel` events and the closing `CoreShowChannelsComplete` of the
    /// channels set now; counts a list handed out.
    fn channel_list(shared: &Shared, id: Option<&str>) -> Vec<AmiMessage> {
        let channels = lock(&shared.channels).clone();
        shared.lists.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::with_capacity(channels.len() + 1);
        for channel in &channels {
            let mut event = AmiMessage::from_pairs([("Event", "CoreShowChannel")]);
            if let Some(id) = id {
                event.push("ActionID", id);
            }
            for (key, value) in channel.iter() {
                if !key.eq_ignore_ascii_case("Event") && !key.eq_ignore_ascii_case("ActionID") {
                    event.push(key, value);
                }
            }
            out.push(event);
        }
        let count = channels.len().to_string();
        let mut complete = AmiMessage::from_pairs([("Event", "CoreShowChannelsComplete")]);
        if let Some(id) = id {
            complete.push("ActionID", id);
        }
        complete.push("EventList", "Complete");
        complete.push("ListItems", &count);
        out.push(complete);
        out
    }

    fn maybe_hold(&mut self, reply: AmiMessage) -> Vec<AmiMessage> {
        let hold = self.shared.reorder.load(Ordering::SeqCst);
        if hold == 0 {
            return vec![reply];
        }
        self.held.push(reply);
        if self.held.len() < hold {
            return Vec::new();
        }
        self.shared.reorder.store(0, Ordering::SeqCst);
        let mut held = std::mem::take(&mut self.held);
        held.reverse();
        held
    }
}

/// A response: the first pair (`Response: ...`), then `ActionID` if the action had one,
/// then the rest.
fn response(id: Option<&str>, pairs: &[(&str, &str)]) -> AmiMessage {
    let mut message = AmiMessage::with_capacity(128, pairs.len() + 1);
    let mut pairs = pairs.iter();
    if let Some((key, value)) = pairs.next() {
        message.push(key, value);
    }
    if let Some(id) = id {
        message.push("ActionID", id);
    }
    for (key, value) in pairs {
        message.push(key, value);
    }
    message
}

/// The `Event:` frames of a recorded stream, each with its blank line, and their count.
fn event_frames(transcript: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(transcript.len());
    let mut count = 0;
    let mut frame_start = 0;
    let mut line_start = 0;
    while line_start < transcript.len() {
        let line_end = memchr::memchr(b'\n', &transcript[line_start..])
            .map_or(transcript.len(), |i| line_start + i + 1);
        let line = &transcript[line_start..line_end];
        if line == b"\r\n" || line == b"\n" {
            let frame = &transcript[frame_start..line_end];
            if frame.starts_with(b"Event:") {
                out.extend_from_slice(frame);
                count += 1;
            }
            frame_start = line_end;
        } else if frame_start == line_start && line.starts_with(b"Asterisk Call Manager") {
            // The banner line is not followed by a blank line.
            frame_start = line_end;
        }
        line_start = line_end;
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Speaks raw bytes to the fake and returns everything it wrote until it closed or
    /// went quiet for 200 ms.
    async fn talk(fake: &FakeAmi, send: &[u8]) -> String {
        let mut stream = TcpStream::connect(fake.addr()).await.unwrap();
        stream.write_all(send).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            if n == 0 {
                return String::from_utf8(got).unwrap() + "<closed>";
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_the_socket_closed() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let got = talk(
            &fake,
            b"Action: Login\r\nActionID: 1\r\nUsername: bridge\r\nSecret: nope\r\n\r\n",
        )
        .await;
        assert_eq!(
            got,
            "Asterisk Call Manager/11.0.0\r\nResponse: Error\r\nActionID: 1\r\nMessage: Authentication failed\r\n\r\n<closed>"
        );
        assert_eq!(fake.logins(), 0);
    }

    #[tokio::test]
    async fn plain_login_then_ping_and_permission_checks() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let got = talk(&fake, b"Action: Ping\r\nActionID: 0\r\n\r\n").await;
        assert!(
            got.contains("Response: Error\r\nActionID: 0\r\nMessage: Permission denied\r\n\r\n"),
            "{got}"
        );
        let got = talk(
            &fake,
            b"Action: Login\r\nActionID: 1\r\nUsername: bridge\r\nSecret: bridge-secret\r\n\r\nAction: Ping\r\nActionID: 2\r\n\r\n",
        )
        .await;
        assert!(got.contains("Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\nEvent: FullyBooted"), "{got}");
        assert!(
            got.contains("Response: Success\r\nActionID: 2\r\nPing: Pong\r\n"),
            "{got}"
        );
        assert_eq!(fake.logins(), 1);
        assert_eq!(fake.connections(), 2);
        assert_eq!(fake.actions().len(), 3);
    }

    #[tokio::test]
    async fn md5_login_uses_the_challenge_it_sent() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        let mut stream = TcpStream::connect(fake.addr()).await.unwrap();
        stream
            .write_all(b"Action: Challenge\r\nActionID: 1\r\nAuthType: md5\r\n\r\n")
            .await
            .unwrap();
        let mut reader = FramedRead::new(&mut stream, AmiCodec::new());
        assert!(matches!(reader.next().await, Some(Ok(AmiFrame::Banner(_)))));
        let Some(Ok(AmiFrame::Message(reply))) = reader.next().await else {
            panic!()
        };
        let challenge = reply.get("Challenge").unwrap().to_owned();
        assert!(challenge.bytes().all(|b| b.is_ascii_digit()), "{challenge}");
        drop(reader);
        let login = format!(
            "Action: Login\r\nActionID: 2\r\nAuthType: MD5\r\nUsername: bridge\r\nKey: {}\r\n\r\n",
            md5_key(&challenge, "bridge-secret")
        );
        stream.write_all(login.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), fake.wait_logged_in())
            .await
            .unwrap();
        assert_eq!(fake.logins(), 1);
    }

    #[tokio::test]
    async fn a_slow_channel_list_comes_after_the_events_sent_meanwhile() {
        let fake = FakeAmi::start(FakeAmiConfig::default()).await;
        fake.set_list_delay(Duration::from_secs(1));
        let channel =
            |uid: &str| AmiMessage::from_pairs([("Channel", "PJSIP/201-1"), ("Uniqueid", uid)]);
        fake.set_channels(vec![channel("1.1")]);
        let mut stream = TcpStream::connect(fake.addr()).await.unwrap();
        stream
            .write_all(b"Action: Login\r\nActionID: 1\r\nUsername: bridge\r\nSecret: bridge-secret\r\n\r\nAction: CoreShowChannels\r\nActionID: 2\r\n\r\n")
            .await
            .unwrap();
        let mut reader = FramedRead::new(&mut stream, AmiCodec::new());
        let mut next = async || loop {
            match reader.next().await {
                Some(Ok(AmiFrame::Message(m))) => return m,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(next().await.get("Message"), Some("Authentication accepted"));
        assert_eq!(next().await.get("Event"), Some("FullyBooted"));
        assert_eq!(next().await.get("Message"), Some("Channels will follow"));
        assert_eq!(fake.lists(), 0, "not listed yet");
        // An event meanwhile, and the channels as they are when the list is taken.
        assert!(fake.send_raw(&b"Event: Newchannel\r\nUniqueid: 1.2\r\n\r\n"[..]));
        fake.set_channels(vec![channel("1.1"), channel("1.2")]);
        assert_eq!(next().await.get("Event"), Some("Newchannel"));
        let listed: Vec<AmiMessage> = vec![next().await, next().await];
        assert_eq!(listed[0].get("Uniqueid"), Some("1.1"));
        assert_eq!(listed[1].get("Uniqueid"), Some("1.2"));
        assert_eq!(listed[1].get("ActionID"), Some("2"));
        let complete = next().await;
        assert_eq!(complete.get("Event"), Some("CoreShowChannelsComplete"));
        assert_eq!(complete.get("ListItems"), Some("2"));
        assert_eq!(fake.lists(), 1);
    }

    #[test]
    fn event_frames_keep_only_events_byte_for_byte() {
        let transcript = b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: 1\r\n\r\nEvent: A\r\nX: 1\r\n\r\n\r\nEvent: B\r\n\r\nResponse: Goodbye\r\n\r\n";
        let (events, count) = event_frames(transcript);
        assert_eq!(count, 2);
        assert_eq!(events, b"Event: A\r\nX: 1\r\n\r\nEvent: B\r\n\r\n");
    }
}
