//! `run`: wires the parts together. The AMI connection task and the FastAGI sessions feed
//! one tracker task, which turns AMI events and FastAGI claims into CTI requests for the
//! outbox; the outbox talks to Zammad. Zammad's answer to a `newCall` goes back to the
//! FastAGI session that claimed the call, or, for a call seen only on AMI, becomes an AMI
//! action here (DESIGN.md §6).
//!
//! The tracker runs here, not in the socket reader: the reader only decodes and forwards,
//! so Asterisk never waits on us. Claims are taken before AMI events, so a claimed call's
//! `newCall` is queued before anything the tracker learns about it later.

use crate::agi::AgiServer;
use crate::agi::newcall::{Claim, ClaimReply, NewcallScript};
use crate::ami::client::{self, AmiHandle, AmiInput, AmiSettings};
use crate::config::Config;
use crate::cti::ZammadDecision;
use crate::cti::{CallId, CtiEventKind, CtiRequest};
use crate::decision::{self, CallAction};
use crate::delivery::{DecisionSender, Outbox};
use crate::tracker::{ClaimOutcome, DecisionTarget, Tracker, TrackerSettings};
use crate::zammad::{ZammadClient, ZammadError};
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long shutdown waits for requests still in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The addresses the daemon listens on, once they are bound.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub agi: Option<SocketAddr>,
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_reporting(config, shutdown, None).await
}

/// Like [`run`]; tells `ready` where it listens once every listener is bound (ports chosen
/// by the system with `:0` become known this way).
pub async fn run_reporting(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Listening>>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.ami.tls,
        "ami.tls = true: AMI over TLS is not supported yet; use loopback or an stunnel"
    );
    let settings = TrackerSettings::from_config(&config).context("invalid [calls] patterns")?;
    let url = config.zammad.url.clone().context("zammad.url is not set")?;
    let zammad = ZammadClient::new(url, config.zammad.timeout)
        .context("failed to set up the zammad client")?;
    info!(zammad = %zammad.redacted_url(), ami = %config.ami.address, "starting");
    let agi = AgiServer::bind(&config.agi).await.with_context(|| {
        format!(
            "failed to listen for FastAGI on agi.listen = {:?}",
            config.agi.listen
        )
    })?;
    let secret = config.ami.secret.clone().context("ami.secret is not set")?;
    let ami_settings = AmiSettings::from_config(&config.ami, secret);
    let (ami, mut inputs, _status, ami_task) = client::spawn(ami_settings, shutdown.clone());
    let outbox = Outbox::new(zammad, shutdown.clone());
    let (claims_tx, mut claims) = mpsc::unbounded_channel::<Claim>();
    let agi_addr = agi.as_ref().map(AgiServer::local_addr);
    let agi_task = agi.map(|server| {
        let script = NewcallScript::new(&config.agi, claims_tx.clone());
        let grace = config.agi.decision_timeout + Duration::from_secs(1);
        tokio::spawn(server.run(script, shutdown.clone(), grace))
    });
    let mut tracker = Tracker::new(settings);
    let mut requests = Vec::new();
    if let Some(ready) = ready {
        let _ = ready.send(Listening { agi: agi_addr });
    }

    loop {
        tokio::select! {
            biased;
            Some(claim) = claims.recv() => on_claim(&mut tracker, &outbox, claim),
            input = inputs.recv() => match input {
                Some(AmiInput::Event(msg)) => {
                    tracker.handle(&msg, &mut requests);
                    for request in requests.drain(..) {
                        send(&tracker, &outbox, &ami, request);
                    }
                }
                Some(AmiInput::LoggedIn) => info!("ami logged in; following calls"),
                Some(AmiInput::Disconnected) => warn!("ami connection lost; reconnecting"),
                None => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    drop(claims_tx);
    if let Some(task) = agi_task {
        let _ = task.await;
    }
    info!(open_calls = outbox.open_calls(), "shutting down");
    if !outbox.close(SHUTDOWN_GRACE).await {
        warn!(
            open_calls = outbox.open_calls(),
            "shutdown grace period over with requests undelivered"
        );
    }
    let _ = ami_task.await;
    Ok(())
}

/// Queues a request the tracker made from AMI events. Zammad's answer to a `newCall` acts
/// on the call over AMI.
fn send(tracker: &Tracker, outbox: &Outbox, ami: &AmiHandle, request: CtiRequest) {
    if request.event != CtiEventKind::NewCall {
        outbox.push(request);
        return;
    }
    let Some(target) = tracker.decision_target(&request.call_id) else {
        outbox.push(request);
        return;
    };
    let (tx, rx): (DecisionSender, _) = oneshot::channel();
    let call_id = request.call_id.clone();
    outbox.push_with_decision(request, tx);
    tokio::spawn(act_over_ami(ami.clone(), call_id, target, rx));
}

/// A FastAGI session claims its call: the tracker builds the `newCall` (or says Zammad
/// already knows the call) and the session gets Zammad's answer to wait for.
fn on_claim(tracker: &mut Tracker, outbox: &Outbox, claim: Claim) {
    let reply = match tracker.claim(&claim.claim) {
        ClaimOutcome::New(request) => {
            let (tx, rx) = oneshot::channel();
            let reply = ClaimReply {
                call_id: request.call_id.clone(),
                direction: Some(request.direction),
                decision: Some(rx),
            };
            outbox.push_with_decision(request, tx);
            reply
        }
        ClaimOutcome::Known(call_id) => {
            info!(call_id = %call_id, event = "agi.newcall",
                "zammad already heard of this call from AMI; FastAGI cannot steer it any more");
            ClaimReply {
                direction: tracker.decision_target(&call_id).map(|t| t.direction),
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
    let _ = claim.reply.send(reply);
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
