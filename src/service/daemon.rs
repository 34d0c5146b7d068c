//! `run`: wires the parts together. The AMI connection task and the FastAGI sessions feed
//! one tracker task, which turns AMI events and FastAGI claims into CTI requests; those
//! are written to the state journal and then handed to the outbox, which talks to Zammad.
//! Zammad's answer to a `newCall` goes back to the FastAGI session that claimed the call,
//! or, for a call seen only on AMI, becomes an AMI action here (docs/dialplan.md).
//!
//! The tracker runs here, not in the socket reader: the reader only decodes and forwards,
//! so Asterisk never waits on us. Claims are taken before AMI events, so a claimed call's
//! `newCall` is queued before anything the tracker learns about it later, and go out at
//! once, ahead of the AMI batch (their sessions wait for Zammad's answer). Inputs are taken
//! in batches (whatever is ready); one journal write covers a batch, before its events are
//! queued (its sync follows on the journal's sync thread).
//!
//! Recovery (docs/persistence.md): at start-up the tracker and the outbox take back what the
//! state dir kept; after every AMI login, and every `ami.reconcile_interval`, the daemon
//! asks Asterisk for its channels (`CoreShowChannels`) and the tracker ends the calls that
//! vanished and adopts the ones it did not know; calls silent for `calls.stale_after` are
//! swept. On shutdown the FastAGI listener stops, what is queued gets
//! `state.shutdown_grace` to be delivered, and the rest stays in the journal.

use crate::agi::AgiServer;
use crate::ami::AmiMessage;
use crate::ami::client::{self, AmiHandle, AmiInput, AmiSettings, AmiStatus};
use crate::calls::decision::{self, CallAction};
use crate::calls::{ClaimOutcome, DecisionTarget, Tracker, TrackerSettings};
use crate::config::Config;
use crate::service::admin::AdminServer;
use crate::service::health::{Health, Listening};
use crate::service::journal::{Record, Store};
use crate::service::metrics::Metrics;
use crate::service::newcall::{Claim, ClaimReply, NewcallScript, WaitingClaims};
use crate::service::outbox::{DecisionSender, Outbox};
use crate::zammad::cti::{CallId, CtiEventKind, CtiRequest, ZammadDecision};
use crate::zammad::{ZammadClient, ZammadError};
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, interval_at};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Most inputs taken into one batch (one journal commit).
const MAX_BATCH: usize = 512;

/// The runtime the daemon runs on: one thread for all of its tasks (the AMI reader, the
/// tracker loop, the outbox's workers and their HTTP, the admin listener), plus the
/// FastAGI sessions' own thread ([`AgiThread`], another runtime like this one), the
/// journal's sync thread and tokio's pool for blocking calls (name lookups). Events
/// arrive one by one, a few microseconds of work each: on a runtime with a thread per
/// core, most of an event's cost was waking the task on another thread (a futex call each
/// way) to hand it over, not the work. One thread keeps each hand-over a push to a local
/// queue, and a few hundred calls a second use a small part of it.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The FastAGI sessions, on a thread (and current-thread runtime) of their own: a session
/// is the one thing a call waits for (its dialplan stands still meanwhile), so it must
/// not queue behind the daemon's bulk work, the AMI batches and the HTTP of every call's
/// events. It meets the daemon at the claim (a channel each way); the outbox's worker of
/// a claimed call runs here ([`Outbox::with_sessions_on`]), so that Zammad's answer comes
/// to this thread and reaches the session without the daemon's.
struct AgiThread {
    /// Closed when the thread's server has stopped (or the thread ended).
    stopped: Option<oneshot::Receiver<()>>,
    /// The thread's runtime.
    runtime: tokio::runtime::Handle,
    /// Dropped to let the runtime go, once the outbox's workers on it are done.
    release: oneshot::Sender<()>,
}

impl AgiThread {
    fn spawn(
        server: AgiServer,
        script: NewcallScript,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> std::io::Result<AgiThread> {
        let (stopped_tx, stopped) = oneshot::channel::<()>();
        let (release, released) = oneshot::channel::<()>();
        let (runtime_tx, runtime_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("azb-fastagi".into())
            .spawn(move || {
                let runtime = match runtime() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = runtime_tx.send(Err(e));
                        return;
                    }
                };
                let _ = runtime_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    match server.reregister() {
                        Ok(server) => server.run(script, shutdown, grace).await,
                        Err(e) => error!(error = %e, "could not take over the FastAGI listener"),
                    }
                    drop(stopped_tx);
                    // The outbox's workers here run on until the daemon has closed it.
                    let _ = released.await;
                });
            })?;
        // A runtime builds in microseconds: waiting for it here holds the daemon's start
        // no longer than that.
        let runtime = runtime_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the FastAGI thread ended")))?;
        Ok(AgiThread {
            stopped: Some(stopped),
            runtime,
            release,
        })
    }

    /// Whether the server still runs (it stops only at shutdown, unless it failed).
    fn serving(&mut self) -> bool {
        self.stopped.as_mut().is_some_and(|stopped| {
            matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        })
    }

    /// Waits until the server has stopped (after `shutdown`, its sessions' grace).
    async fn stopped(&mut self) {
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }

    /// Lets the thread end, once nothing more runs on its runtime (the outbox is closed).
    fn release(self) {
        drop(self.release);
    }
}

/// A request on its way to the outbox, with who waits for Zammad's answer to it.
struct Pending {
    request: CtiRequest,
    /// A FastAGI session's claim.
    decision: Option<DecisionSender>,
    /// A `newCall` seen only on AMI: where Zammad's answer acts.
    ami_target: Option<DecisionTarget>,
}

/// The daemon's task state.
struct Daemon {
    tracker: Tracker,
    outbox: Outbox,
    store: Store,
    ami: AmiHandle,
    next_seq: u64,
    pending: Vec<Pending>,
    requests: Vec<CtiRequest>,
    stale_after: Duration,
    metrics: Arc<Metrics>,
    /// Logins to AMI so far (every one after the first is a reconnect).
    ami_logins: u64,
    /// FastAGI claims whose channel AMI has not shown yet: tried again when it does.
    waiting: WaitingClaims,
    /// Answers to claims, given once the batch that holds their calls is written (the
    /// sessions run on another thread: told earlier, one could set `ZAMMAD_CALLID` in the
    /// dialplan before its call is in the journal).
    answers: Vec<(oneshot::Sender<ClaimReply>, ClaimReply)>,
}

/// Runs the daemon until `shutdown` is cancelled. Tells `ready` where it listens once
/// every listener is bound (ports chosen by the system with `:0` become known this way;
/// a caller that does not care drops the receiver). Each config from `reloads` (a SIGHUP)
/// replaces `[agents]`, `[calls]` and `[numbers]` without touching the calls under way;
/// changes to other sections are logged as needing a restart (a caller without reloads
/// passes a receiver whose sender is gone).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: oneshot::Sender<Listening>,
    mut reloads: mpsc::UnboundedReceiver<Config>,
) -> anyhow::Result<()> {
    let settings = TrackerSettings::from_config(&config);
    let url = config.zammad.url.clone().context("zammad.url is not set")?;
    let zammad_client = || {
        ZammadClient::with_proxy(
            url.clone(),
            config.zammad.timeout,
            config.zammad.proxy.as_ref(),
        )
    };
    let zammad = zammad_client().context("failed to set up the zammad client")?;
    let (store, state, _journal_thread) = Store::open(&config.state.dir)?;
    info!(
        zammad = %zammad.redacted_url(),
        ami = %config.ami.address,
        state_dir = %config.state.dir.display(),
        open_calls = state.calls.len(),
        undelivered = state.items.len(),
        "starting"
    );
    let agi = AgiServer::bind(&config.agi).await.with_context(|| {
        format!(
            "failed to listen for FastAGI on agi.listen = {:?}",
            config.agi.listen
        )
    })?;
    let admin = AdminServer::bind(&config.admin.listen)
        .await
        .with_context(|| {
            format!(
                "failed to listen for /health and /metrics on admin.listen = {:?}",
                config.admin.listen
            )
        })?;
    let secret = config.ami.secret.clone().context("ami.secret is not set")?;
    let ami_settings = AmiSettings::from_config(&config.ami, secret);
    let (ami, mut inputs, mut ami_status, ami_task) = client::spawn(ami_settings, shutdown.clone());
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::new(
        zammad,
        shutdown.clone(),
        store.clone(),
        config.state.max_outbox,
        metrics.clone(),
    );
    let mut tracker = Tracker::new(settings);
    tracker.persist_changes();
    tracker.set_now(unix_now());
    let next_seq = state.next_seq();
    // Calls kept without a live channel end at once.
    let mut restored = Vec::new();
    tracker.restore(state.calls, &mut restored);
    outbox.restore(state.items);

    let (claims_tx, mut claims) = mpsc::unbounded_channel::<Claim>();
    let agi_addr = agi.as_ref().map(AgiServer::local_addr);
    let mut agi_task = agi
        .map(|server| {
            let script = NewcallScript::new(
                &config.agi,
                &config.zammad.call_id_prefix,
                claims_tx.clone(),
                metrics.clone(),
            );
            let grace = config.agi.decision_timeout + Duration::from_secs(1);
            AgiThread::spawn(server, script, shutdown.clone(), grace)
        })
        .transpose()
        .context("failed to start the FastAGI thread")?;
    let outbox = match &agi_task {
        // The sessions' calls get a connection pool of their own, on their runtime.
        Some(agi) => outbox.with_sessions_on(
            agi.runtime.clone(),
            zammad_client().context("failed to set up the zammad client")?,
        ),
        None => outbox,
    };
    let mut d = Daemon {
        tracker,
        outbox,
        store,
        ami,
        next_seq,
        pending: Vec::new(),
        requests: restored,
        stale_after: config.calls.stale_after,
        metrics: metrics.clone(),
        ami_logins: 0,
        waiting: WaitingClaims::default(),
        answers: Vec::new(),
    };
    d.take_requests();
    let every = config.ami.reconcile_interval;
    let mut reconcile_timer = interval_at(Instant::now() + every, every);
    let sweep_every = (config.calls.stale_after / 4).min(Duration::from_secs(60));
    let mut sweep_timer = interval_at(Instant::now() + sweep_every, sweep_every);
    let (health_tx, health) = watch::channel(Health {
        agi_ok: true,
        ..Health::default()
    });
    let admin_addr = admin.as_ref().map(AdminServer::local_addr);
    let admin_task = admin.map(|server| {
        server.spawn(
            metrics.clone(),
            health.clone(),
            agi_addr.is_some(),
            shutdown.clone(),
        )
    });
    let _ = ready.send(Listening {
        agi: agi_addr,
        admin: admin_addr,
        health,
    });

    loop {
        d.tracker.set_now(unix_now());
        let mut claimed = false;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(claim) = claims.recv() => {
                d.on_claim(claim);
                claimed = true;
            }
            input = inputs.recv() => match input {
                Some(input) => d.on_input(input),
                None => break,
            },
            _ = reconcile_timer.tick() => {
                if d.ami.status() == AmiStatus::LoggedIn {
                    d.ask_for_channels();
                }
            }
            _ = sweep_timer.tick() => d.sweep(),
            Ok(()) = ami_status.changed() => {}
            Some(new) = reloads.recv() => d.reload(&config, new),
        }
        // Claims that came meanwhile join them and go out at once: their sessions wait for
        // Zammad's answer, and must not wait behind a batch of AMI events as well.
        while let Ok(claim) = claims.try_recv() {
            d.on_claim(claim);
            claimed = true;
        }
        if claimed {
            d.flush();
        }
        // Whatever else is ready joins this batch.
        for _ in 0..MAX_BATCH {
            if let Ok(claim) = claims.try_recv() {
                d.on_claim(claim);
            } else if let Ok(input) = inputs.try_recv() {
                d.on_input(input);
            } else {
                break;
            }
        }
        d.flush();
        let now = Health {
            ami_connected: *ami_status.borrow() == AmiStatus::LoggedIn,
            agi_ok: agi_task.as_mut().is_none_or(AgiThread::serving),
            active_calls: d.tracker.active_calls(),
            outbox_depth: d.outbox.depth(),
        };
        metrics.set_ami_connected(now.ami_connected);
        metrics.set_calls_active(now.active_calls);
        health_tx.send_if_modified(|h| {
            let changed = *h != now;
            *h = now;
            changed
        });
    }

    // Stopping: claims already made and events already read still count.
    claims.close();
    while let Ok(claim) = claims.try_recv() {
        d.on_claim(claim);
    }
    while let Ok(input) = inputs.try_recv() {
        d.on_input(input);
    }
    d.flush();
    drop(claims_tx);
    let Daemon { outbox, store, .. } = d;
    if let Some(agi) = &mut agi_task {
        agi.stopped().await;
    }
    let grace = config.state.shutdown_grace;
    info!(
        open_calls = outbox.open_calls(),
        undelivered = outbox.depth(),
        "shutting down"
    );
    if !outbox.close(grace).await {
        warn!(
            undelivered = outbox.depth(),
            "shutdown grace period (state.shutdown_grace) over: the rest stays in the state \
             dir and is delivered after the next start"
        );
    }
    if let Some(agi) = agi_task {
        agi.release();
    }
    if let Err(e) = store.flush().await {
        error!(error = %e, "could not write the last of the state journal");
    }
    store.close().await;
    let _ = ami_task.await;
    if let Some(task) = admin_task {
        // Stops once open scrapes are answered; a stuck client is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// SIGHUP: `[agents]`, `[calls]`, `[numbers]` from `new`; the rest waits for a restart.
    fn reload(&mut self, running: &Config, new: Config) {
        let restart = running.sections_needing_restart(&new);
        // The callId prefix belongs to [zammad]: calls under way must keep theirs.
        let mut reloaded = new.clone();
        reloaded.zammad = running.zammad.clone();
        self.tracker
            .set_settings(TrackerSettings::from_config(&reloaded));
        self.stale_after = new.calls.stale_after;
        info!(
            agents = new.agents.len(),
            "config reloaded: [agents], [calls] and [numbers] apply to what happens from now on"
        );
        if !restart.is_empty() {
            warn!(
                sections = ?restart,
                "config changes in these sections take effect only after a restart"
            );
        }
    }

    fn on_input(&mut self, input: AmiInput) {
        match input {
            AmiInput::Event(msg) => {
                self.metrics.ami_event();
                self.tracker.handle(&msg, &mut self.requests);
                self.take_requests();
                if !self.waiting.is_empty() {
                    for uid in [msg.get("Uniqueid"), msg.get("DestUniqueid")]
                        .into_iter()
                        .flatten()
                    {
                        for claim in self.waiting.take(uid) {
                            self.on_claim(claim);
                        }
                    }
                }
            }
            AmiInput::LoggedIn => {
                info!("ami logged in; following calls");
                if self.ami_logins > 0 {
                    self.metrics.ami_reconnected();
                }
                self.ami_logins += 1;
                self.ask_for_channels();
            }
            AmiInput::Disconnected => warn!("ami connection lost; reconnecting"),
            AmiInput::List { tag, result } => {
                self.on_channels(tag, result);
                for claim in self.waiting.take_all() {
                    self.on_claim(claim);
                }
            }
        }
    }

    /// Moves the tracker's requests to `pending`; a `newCall` gets its AMI decision target.
    fn take_requests(&mut self) {
        for request in self.requests.drain(..) {
            let ami_target = (request.event == CtiEventKind::NewCall)
                .then(|| self.tracker.decision_target(&request.call_id))
                .flatten();
            self.pending.push(Pending {
                request,
                decision: None,
                ami_target,
            });
        }
    }

    /// A FastAGI session claims its call: the tracker builds the `newCall` (or says
    /// Zammad already knows the call) and the session gets Zammad's answer to wait for,
    /// once `flush` has written the call ([`Daemon::answers`]). A claim AMI has not
    /// confirmed waits, unanswered, until AMI tells of its channel (or its session stops
    /// waiting).
    fn on_claim(&mut self, claim: Claim) {
        let reply = match self.tracker.claim(&claim.claim) {
            ClaimOutcome::Unconfirmed => {
                self.waiting.push(claim);
                // Its channel's events may be waiting in a paused socket.
                self.ami.read_now();
                return;
            }
            ClaimOutcome::New(request) => {
                let (tx, rx) = oneshot::channel();
                let reply = ClaimReply {
                    call_id: request.call_id.clone(),
                    direction: Some(request.direction),
                    decision: Some(rx),
                };
                self.pending.push(Pending {
                    request,
                    decision: Some(tx),
                    ami_target: None,
                });
                reply
            }
            ClaimOutcome::Known(call_id) => {
                info!(call_id = %call_id, event = "agi.newcall",
                    "zammad already heard of this call from AMI; FastAGI cannot steer it any more");
                ClaimReply {
                    direction: self.tracker.decision_target(&call_id).map(|t| t.direction),
                    call_id,
                    decision: None,
                }
            }
            ClaimOutcome::NotReported(call_id) => ClaimReply {
                call_id,
                direction: None,
                decision: None,
            },
        };
        self.answers.push((claim.reply, reply));
    }

    /// Asks Asterisk for its channels. The answer comes in the AMI input stream where the
    /// list ended, tagged with the tracker's event count now: the tracker takes it after
    /// the events before it and before those after it.
    fn ask_for_channels(&self) {
        let since = self.tracker.events_seen();
        let ami = self.ami.clone();
        tokio::spawn(async move {
            let action = AmiMessage::from_pairs([("Action", "CoreShowChannels")]);
            if let Err(e) = ami.list_action_in_stream(action, since).await {
                warn!(error = %e, "could not ask asterisk for its channels (CoreShowChannels); \
                    asking again after the next login or ami.reconcile_interval");
            }
        });
    }

    /// Asterisk's channels (asked for when the tracker had seen `since` events).
    fn on_channels(&mut self, since: u64, channels: Result<Vec<AmiMessage>, String>) {
        let channels = match channels {
            Ok(channels) => channels,
            Err(e) => {
                warn!(error = %e, "could not list asterisk's channels (CoreShowChannels; the AMI \
                    user needs write = reporting): calls that ended unseen are ended at the next \
                    try or after calls.stale_after");
                return;
            }
        };
        self.tracker.reconcile(&channels, since, &mut self.requests);
        let count = |kind| self.requests.iter().filter(|r| r.event == kind).count();
        let (ended, adopted) = (count(CtiEventKind::Hangup), count(CtiEventKind::NewCall));
        if ended + adopted > 0 {
            info!(
                live_channels = channels.len(),
                ended, adopted, "reconciled with asterisk's channels"
            );
        }
        self.take_requests();
    }

    fn sweep(&mut self) {
        self.tracker
            .sweep(self.stale_after.as_secs(), &mut self.requests);
        for r in &self.requests {
            if r.event == CtiEventKind::Hangup {
                warn!(call_id = %r.call_id, direction = r.direction.as_str(), event = "hangup",
                    "no event for longer than calls.stale_after: call ended");
            }
        }
        self.take_requests();
    }

    /// Writes the batch (changed calls, new events) to the journal, then queues the events
    /// and answers the claims.
    fn flush(&mut self) {
        let mut records: Vec<Record> = self
            .tracker
            .take_changes()
            .into_iter()
            .map(|(key, call)| match call {
                Some(call) => Record::Call {
                    key,
                    call: Box::new(call),
                },
                None => Record::End { key },
            })
            .collect();
        let mut staged = Vec::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if !self.outbox.admit(&p.request) {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            records.push(Record::Item {
                seq,
                request: p.request.clone(),
            });
            staged.push((seq, p));
        }
        // Written before any event of the batch can go out (a failed write is logged by
        // the journal; the calls go on in memory); the sync follows on its own thread.
        if !records.is_empty() {
            let _ = self.store.write_and_sync_soon(records);
        }
        for (seq, p) in staged {
            match (p.decision, p.ami_target) {
                (Some(tx), _) => self.outbox.push_for_session(seq, p.request, tx),
                (None, Some(target)) => {
                    let (tx, rx) = oneshot::channel();
                    let call_id = p.request.call_id.clone();
                    self.outbox.push_with_decision(seq, p.request, tx);
                    tokio::spawn(act_over_ami(self.ami.clone(), call_id, target, rx));
                }
                (None, None) => self.outbox.push(seq, p.request),
            }
        }
        // After the workers: a claimed call's runs on the sessions' thread, whose runtime
        // takes tasks in the order they come, so its `newCall` goes out before the
        // session's next command (measured at the median: the other way round, the
        // session's command leaves 50 µs earlier and Zammad's answer comes 110 µs later).
        for (session, answer) in self.answers.drain(..) {
            let _ = session.send(answer);
        }
    }
}

/// Zammad's answer for a call seen only on AMI: a reject hangs the caller's channel up
/// with cause 17, a dial sets `CALLERID(num)` on the calling phone's channel.
async fn act_over_ami(
    ami: AmiHandle,
    call_id: CallId,
    target: DecisionTarget,
    decision: oneshot::Receiver<Result<ZammadDecision, ZammadError>>,
) {
    let direction = target.direction.as_str();
    let Ok(Ok(decision)) = decision.await else {
        return;
    };
    let action = match CallAction::decide(target.direction, &decision) {
        Ok(action) => action,
        Err(ignored) => {
            warn!(call_id = %call_id, direction, event = "newCall", reason = %ignored,
                "zammad's answer not acted on");
            return;
        }
    };
    let Some(message) = decision::ami_action(&target.channel, &action) else {
        return;
    };
    if matches!(action, CallAction::Dial { .. }) && target.dialed {
        warn!(call_id = %call_id, direction, event = "newCall",
            "zammad named a caller ID after the call had dialed out: it comes too late for \
             this call; run AGI(agi://127.0.0.1:4573/newcall) before Dial() \
             (asterisk-examples/extensions.conf)");
    }
    match ami.action(message).await {
        Ok(reply) if reply.response() == Some("Success") => {
            info!(call_id = %call_id, direction, event = "newCall", action = action.as_str(),
                channel = %target.channel, "zammad's answer carried out over AMI")
        }
        Ok(reply) => warn!(call_id = %call_id, direction, event = "newCall",
            action = action.as_str(), reply = reply.get("Message").unwrap_or(""),
            "asterisk refused the action for zammad's answer (the channel may be gone)"),
        Err(e) => warn!(call_id = %call_id, direction, event = "newCall",
            action = action.as_str(), error = %e, "could not carry out zammad's answer over AMI"),
    }
}
