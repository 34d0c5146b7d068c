//! The FastAGI `newcall` script: `AGI(agi://127.0.0.1:4573/newcall[?direction=in|out]
//! [&queue=NAME][&user=NAME,NAME][&from=NUMBER][&to=NUMBER])`.
//!
//! One session: learn the call's Linkedid, claim the call from the tracker (through the
//! daemon, so this call's `newCall` is queued before any of its later events), wait at
//! most `agi.decision_timeout` from the session's start for Zammad's answer, then set
//! `ZAMMAD_CALLID`, `ZAMMAD_ACTION` and, for a dial, `CALLERID(num)` and
//! `ZAMMAD_CALLERID`; a reject with `agi.reject = "hangup"` ends in `EXEC Hangup 17`.
//! A slow or broken Zammad delays the call by the timeout at most: the `newCall` is still
//! delivered by the outbox afterwards.
//!
//! The claim counts only once AMI confirms the session's channel (its name, Uniqueid and
//! Linkedid as AMI showed them; `calls::claims`). Asterisk announces a channel on AMI
//! before its dialplan reaches the AGI, so a real session's claim is confirmed at once;
//! when AMI lags, the claim waits in the daemon ([`WaitingClaims`]) within the same
//! `agi.decision_timeout`. A claim still unconfirmed then is given up: the session is told
//! `continue` (outcome `unconfirmed`) and a real call is reported from AMI as any other.

use crate::agi::protocol::AgiCommand;
use crate::agi::server::{NotRun, Script, Throttle};
use crate::agi::server::{Session, SessionError};
use crate::calls::CallClaim;
use crate::calls::decision::{CallAction, action_commands, call_id_command};
use crate::calls::number::presentation_withholds;
use crate::config::{AgiConfig, RejectMode};
use crate::service::metrics::{Metrics, SessionOutcome};
use crate::zammad::ZammadError;
use crate::zammad::cti::{CallId, Direction, ZammadDecision};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Zammad's answer to a claimed call's `newCall`.
pub type DecisionReceiver = oneshot::Receiver<Result<ZammadDecision, ZammadError>>;

/// A session's claim on a call, for the daemon (which owns the tracker and the outbox).
pub struct Claim {
    pub claim: CallClaim,
    pub reply: oneshot::Sender<ClaimReply>,
}

/// The daemon's answer to a [`Claim`].
pub struct ClaimReply {
    pub call_id: CallId,
    /// The call's direction, when it is reported to Zammad.
    pub direction: Option<Direction>,
    /// Zammad's decision, when this claim sent the call's `newCall`.
    pub decision: Option<DecisionReceiver>,
}

pub type ClaimSender = mpsc::UnboundedSender<Claim>;

/// Claims the tracker could not confirm yet ([`crate::calls::ClaimOutcome::Unconfirmed`]),
/// by the Uniqueid they name, for the daemon to try again when AMI tells of that channel.
/// A claim whose session stopped waiting (its decision timeout passed) is dropped
/// unanswered: those are swept whenever the count has doubled, so the map stays about the
/// size of the sessions open.
#[derive(Default)]
pub struct WaitingClaims {
    by_uniqueid: HashMap<String, Vec<Claim>>,
    count: usize,
    sweep_at: usize,
}

impl WaitingClaims {
    /// Keeps `claim` until AMI tells of its channel.
    pub fn push(&mut self, claim: Claim) {
        if claim.reply.is_closed() {
            return;
        }
        if self.count >= self.sweep_at {
            self.by_uniqueid.retain(|_, claims| {
                claims.retain(|c| !c.reply.is_closed());
                !claims.is_empty()
            });
            self.count = self.by_uniqueid.values().map(Vec::len).sum();
            self.sweep_at = (self.count * 2).max(64);
        }
        self.count += 1;
        self.by_uniqueid
            .entry(claim.claim.uniqueid.clone())
            .or_default()
            .push(claim);
    }

    pub fn is_empty(&self) -> bool {
        self.by_uniqueid.is_empty()
    }

    /// The claims naming the channel `uniqueid` whose sessions still wait.
    pub fn take(&mut self, uniqueid: &str) -> Vec<Claim> {
        let claims = self.by_uniqueid.remove(uniqueid).unwrap_or_default();
        self.count -= claims.len();
        claims
            .into_iter()
            .filter(|c| !c.reply.is_closed())
            .collect()
    }

    /// Every claim whose session still waits (after Asterisk's channel list came).
    pub fn take_all(&mut self) -> Vec<Claim> {
        self.count = 0;
        std::mem::take(&mut self.by_uniqueid)
            .into_values()
            .flatten()
            .filter(|c| !c.reply.is_closed())
            .collect()
    }
}

/// The `newcall` script, shared by all sessions.
pub struct NewcallScript {
    claims: ClaimSender,
    decision_timeout: Duration,
    reject: RejectMode,
    /// `zammad.call_id_prefix`, for the `ZAMMAD_CALLID` of a claim never confirmed.
    call_id_prefix: String,
    metrics: Arc<Metrics>,
    /// A flood of forged sessions logs one line per period, not one each.
    unconfirmed: Throttle,
    odd: Throttle,
}

impl Script for NewcallScript {
    async fn run(&self, session: &mut Session) {
        NewcallScript::run(self, session).await;
    }

    fn not_run(&self, why: NotRun) {
        self.metrics.agi_session(match why {
            NotRun::Overloaded => SessionOutcome::Overloaded,
            NotRun::Failed => SessionOutcome::Failed,
            NotRun::Refused => SessionOutcome::Refused,
        });
    }
}

impl NewcallScript {
    pub fn new(
        config: &AgiConfig,
        call_id_prefix: &str,
        claims: ClaimSender,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            claims,
            decision_timeout: config.decision_timeout,
            reject: config.reject,
            call_id_prefix: call_id_prefix.to_string(),
            metrics,
            unconfirmed: Throttle::new(Duration::from_secs(10)),
            odd: Throttle::new(Duration::from_secs(10)),
        }
    }

    /// Runs one session to its end, logs and counts how it went.
    pub async fn run(&self, session: &mut Session) -> SessionOutcome {
        let outcome = self.run_session(session).await;
        self.metrics.agi_session(outcome);
        outcome
    }

    async fn run_session(&self, session: &mut Session) -> SessionOutcome {
        let script = session.env().script().to_string();
        if script != "newcall" {
            warn!(
                script = %script,
                "unknown FastAGI script; the only one is newcall (agi://HOST:PORT/newcall)"
            );
            return SessionOutcome::Failed;
        }
        match self.decide(session, Instant::now()).await {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(error = %e, "FastAGI newcall session ended early");
                SessionOutcome::Failed
            }
        }
    }

    async fn decide(
        &self,
        session: &mut Session,
        started: Instant,
    ) -> Result<SessionOutcome, SessionError> {
        let deadline = started + self.decision_timeout;
        let env = session.env();
        let mut claim = CallClaim {
            uniqueid: env.get("uniqueid").unwrap_or("").to_string(),
            channel: env.get("channel").unwrap_or("").to_string(),
            context: env.get("context").unwrap_or("").to_string(),
            exten: env.get("extension").unwrap_or("").to_string(),
            dnid: env.known("dnid").map(str::to_string),
            caller_num: env.known("callerid").map(str::to_string),
            caller_withheld: env
                .get("callingpres")
                .and_then(presentation_withholds)
                .unwrap_or(false),
            ..CallClaim::default()
        };
        for (key, value) in env.query() {
            apply_param(&mut claim, &key, value);
        }
        let reply = session
            .command(&AgiCommand::get_variable("CHANNEL(linkedid)")?)
            .await?;
        claim.linkedid = match reply.value() {
            Some(linkedid) if !linkedid.is_empty() => linkedid.to_string(),
            _ => {
                if let Some(left_out) = self.odd.allow() {
                    warn!(reply = ?reply, like_it_since_last_warning = left_out,
                        "CHANNEL(linkedid) unknown; using the channel's uniqueid");
                }
                claim.uniqueid.clone()
            }
        };

        let (tx, rx) = oneshot::channel();
        let unconfirmed_call_id = CallId::of(&self.call_id_prefix, &claim.linkedid);
        let named = (claim.channel.clone(), claim.uniqueid.clone());
        let claimed = self.claims.send(Claim { claim, reply: tx }).is_ok();
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) if claimed => {
                // AMI confirmed the channel: the session keeps its slot.
                session.settle();
                Some(answer)
            }
            Err(_) if claimed => None,
            _ => {
                warn!("the daemon is shutting down; the call goes on without Zammad");
                return Ok(SessionOutcome::Failed);
            }
        };
        let confirmed = answer.is_some();
        let answer = answer.unwrap_or_else(|| {
            if let Some(left_out) = self.unconfirmed.allow() {
                warn!(
                    channel = %named.0,
                    uniqueid = %named.1,
                    like_it_since_last_warning = left_out,
                    "no AMI event showed this FastAGI session's channel (name, Uniqueid and \
                     Linkedid) within agi.decision_timeout: not a claim; the call goes on \
                     (continue) and, if it is real, is reported from AMI"
                );
            }
            ClaimReply {
                call_id: unconfirmed_call_id,
                direction: None,
                decision: None,
            }
        });
        let call_id = answer.call_id;
        // The callId is known now: the dialplan gets it while Zammad decides, so that
        // one round trip less follows Zammad's answer.
        session.command(&call_id_command(&call_id)?).await?;
        let (action, outcome) = match (answer.direction, answer.decision) {
            (Some(direction), Some(decision)) => {
                let action = wait_for_decision(&call_id, direction, decision, deadline).await;
                self.metrics.agi_decision(started.elapsed());
                let outcome = match &action {
                    Some(CallAction::Reject) => SessionOutcome::Reject,
                    Some(CallAction::Dial { .. }) => SessionOutcome::Dial,
                    Some(CallAction::Continue) => SessionOutcome::Continue,
                    None => SessionOutcome::Timeout,
                };
                (action.unwrap_or(CallAction::Continue), outcome)
            }
            _ if !confirmed => (CallAction::Continue, SessionOutcome::Unconfirmed),
            _ => (CallAction::Continue, SessionOutcome::NotClaimed),
        };
        for command in action_commands(&action, self.reject)? {
            session.command(&command).await?;
        }
        if confirmed {
            info!(
                call_id = %call_id,
                direction = answer.direction.map_or("none", Direction::as_str),
                event = "agi.newcall",
                action = action.as_str(),
                outcome = outcome.as_str(),
                caller_hung_up = session.hung_up(),
                "dialplan told"
            );
        } else {
            // One per session of a flood: the warning above stands for them.
            debug!(call_id = %call_id, event = "agi.newcall", outcome = outcome.as_str(),
                "dialplan told");
        }
        Ok(outcome)
    }
}

/// Zammad's answer turned into an action; `None` when it did not come before `deadline`.
/// Errors, and answers that cannot be acted on, are logged and become `continue`.
async fn wait_for_decision(
    call_id: &CallId,
    direction: Direction,
    decision: DecisionReceiver,
    deadline: Instant,
) -> Option<CallAction> {
    let dir = direction.as_str();
    match tokio::time::timeout_at(deadline, decision).await {
        Err(_) => {
            warn!(
                call_id = %call_id, direction = dir, event = "newCall",
                "zammad did not answer within agi.decision_timeout; the call goes on and \
                 newCall is still delivered"
            );
            None
        }
        Ok(Err(_)) => Some(CallAction::Continue),
        Ok(Ok(Err(e))) => {
            warn!(call_id = %call_id, direction = dir, event = "newCall", error = %e,
                "no decision from zammad; the call goes on");
            Some(CallAction::Continue)
        }
        Ok(Ok(Ok(decision))) => match CallAction::decide(direction, &decision) {
            Ok(action) => Some(action),
            Err(ignored) => {
                warn!(call_id = %call_id, direction = dir, event = "newCall", reason = %ignored,
                    "zammad's answer not acted on; the call goes on");
                Some(CallAction::Continue)
            }
        },
    }
}

/// One query parameter of the AGI URL. Unknown ones are logged and ignored.
fn apply_param(claim: &mut CallClaim, key: &str, value: String) {
    let value = value.trim().to_string();
    match key {
        "direction" => match value.as_str() {
            "in" => claim.direction = Some(Direction::In),
            "out" => claim.direction = Some(Direction::Out),
            _ => warn!(direction = %value, "FastAGI newcall: direction must be in or out; ignored"),
        },
        "queue" if !value.is_empty() => claim.queue = Some(value),
        "user" => {
            claim.users = value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect()
        }
        "from" if !value.is_empty() => claim.from = Some(value),
        "to" if !value.is_empty() => claim.to = Some(value),
        "queue" | "from" | "to" => {}
        // Checked by the listener before the script runs (`agi.secret`).
        "secret" => {}
        _ => warn!(parameter = %key, "FastAGI newcall: unknown parameter ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut claim = CallClaim::default();
        apply_param(&mut claim, "direction", "out".into());
        apply_param(&mut claim, "user", "Alice Example, Bob,,".into());
        apply_param(&mut claim, "queue", "support".into());
        apply_param(&mut claim, "to", " +4930123 ".into());
        apply_param(&mut claim, "from", "".into());
        apply_param(&mut claim, "colour", "blue".into());
        assert_eq!(claim.direction, Some(Direction::Out));
        assert_eq!(claim.users, ["Alice Example", "Bob"]);
        assert_eq!(claim.queue.as_deref(), Some("support"));
        assert_eq!(claim.to.as_deref(), Some("+4930123"));
        assert_eq!(claim.from, None);
        apply_param(&mut claim, "direction", "sideways".into());
        assert_eq!(claim.direction, Some(Direction::Out));
    }
}
