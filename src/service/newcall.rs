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

use crate::agi::protocol::AgiCommand;
use crate::agi::server::{NotRun, Script};
use crate::agi::server::{Session, SessionError};
use crate::calls::CallClaim;
use crate::calls::decision::{CallAction, agi_commands};
use crate::calls::number::presentation_withholds;
use crate::config::{AgiConfig, RejectMode};
use crate::service::metrics::{Metrics, SessionOutcome};
use crate::zammad::ZammadError;
use crate::zammad::cti::{CallId, Direction, ZammadDecision};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

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

/// The `newcall` script, shared by all sessions.
pub struct NewcallScript {
    claims: ClaimSender,
    decision_timeout: Duration,
    reject: RejectMode,
    metrics: Arc<Metrics>,
}

impl Script for NewcallScript {
    async fn run(&self, session: &mut Session) {
        NewcallScript::run(self, session).await;
    }

    fn not_run(&self, why: NotRun) {
        self.metrics.agi_session(match why {
            NotRun::Overloaded => SessionOutcome::Overloaded,
            NotRun::Failed => SessionOutcome::Failed,
        });
    }
}

impl NewcallScript {
    pub fn new(config: &AgiConfig, claims: ClaimSender, metrics: Arc<Metrics>) -> Self {
        Self {
            claims,
            decision_timeout: config.decision_timeout,
            reject: config.reject,
            metrics,
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
                warn!(reply = ?reply, "CHANNEL(linkedid) unknown; using the channel's uniqueid");
                claim.uniqueid.clone()
            }
        };

        let (tx, rx) = oneshot::channel();
        let claimed = self.claims.send(Claim { claim, reply: tx }).is_ok();
        let answer = match rx.await {
            Ok(answer) if claimed => answer,
            _ => {
                warn!("the daemon is shutting down; the call goes on without Zammad");
                return Ok(SessionOutcome::Failed);
            }
        };
        let call_id = answer.call_id;
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
            _ => (CallAction::Continue, SessionOutcome::NotClaimed),
        };
        for command in agi_commands(&call_id, &action, self.reject)? {
            session.command(&command).await?;
        }
        info!(
            call_id = %call_id,
            direction = answer.direction.map_or("none", Direction::as_str),
            event = "agi.newcall",
            action = action.as_str(),
            outcome = outcome.as_str(),
            caller_hung_up = session.hung_up(),
            "dialplan told"
        );
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
