//! What the dialplan tells the tracker over FastAGI (a claim: this call, announce it
//! now) and where Zammad's decision acts over AMI for calls nobody claimed.
//!
//! FastAGI has no authentication of its own, so a claim is taken only for a channel the
//! tracker knows from AMI with the same name, Uniqueid and Linkedid: a session that names
//! anything else (a forged one, or a real one whose channel's AMI events have not arrived
//! yet) is [`ClaimOutcome::Unconfirmed`] and changes nothing. The daemon keeps such a claim
//! and asks again when AMI tells it of that channel, until the session's decision timeout
//! (the tracker reads no clock); a claim never confirmed leaves the call to AMI.

use super::Tracker;
use super::model::ShortStr;
use crate::calls::number::is_withheld;
use crate::zammad::cti::{CallId, CtiRequest, Direction};

/// What a FastAGI `newcall` session learned about its call: the dialplan claims the call,
/// so its `newCall` goes out now (and Zammad's answer can steer the call) and the tracker
/// never sends a second one.
#[derive(Debug, Clone, Default)]
pub struct CallClaim {
    /// `CHANNEL(linkedid)` of the channel running the AGI.
    pub linkedid: String,
    pub uniqueid: String,
    pub channel: String,
    /// `direction=` of the AGI URL; without it the context decides, as for AMI calls.
    pub direction: Option<Direction>,
    pub context: String,
    pub exten: String,
    /// The dialed number as the channel driver saw it, when Asterisk knows it.
    pub dnid: Option<String>,
    /// The channel's caller number, when known.
    pub caller_num: Option<String>,
    /// The caller's presentation withholds the number (`agi_callingpres`).
    pub caller_withheld: bool,
    /// `from=` and `to=` of the URL: what the dialplan says is the caller and the callee
    /// (inside a subroutine the channel's own caller ID or extension can be wrong).
    pub from: Option<String>,
    pub to: Option<String>,
    pub queue: Option<String>,
    /// `user=`: who will ring (inbound) or who calls (outbound).
    pub users: Vec<String>,
}

/// What the tracker made of a [`CallClaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Send this `newCall` now; the tracker will not send another for the call.
    New(CtiRequest),
    /// Zammad already heard of this call (its `newCall` went out before the AGI ran).
    Known(CallId),
    /// Not a call Zammad hears of: internal, ended, or no direction applies.
    NotReported(CallId),
    /// AMI has not shown a channel with the claim's name, Uniqueid and Linkedid (yet):
    /// nothing was changed; ask again once AMI has told more.
    Unconfirmed,
}

/// The channel Zammad's decision acts on over AMI, as known when the `newCall` went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionTarget {
    pub direction: Direction,
    /// Inbound: the caller's channel (to hang up). Outbound: the calling phone's channel.
    pub channel: String,
    /// The call already dialed out, so a new caller ID comes too late for this call.
    pub dialed: bool,
}

impl Tracker {
    /// The dialplan's FastAGI `newcall` claims the call of `claim.linkedid`: when AMI has
    /// shown its channel (same name, Uniqueid and Linkedid), the call's `newCall` is built
    /// now and the tracker will not send another one; else the claim is
    /// [`ClaimOutcome::Unconfirmed`] and changes nothing.
    pub fn claim(&mut self, claim: &CallClaim) -> ClaimOutcome {
        let uid: &str = &claim.uniqueid;
        let Some(ch) = self.channels.get_mut(uid) else {
            if self.hung_up.contains(uid) || self.ended.contains(&claim.linkedid) {
                // The channel hung up on AMI while its FastAGI session was still talking.
                let call_id = CallId::of(&self.settings.call_id_prefix, &claim.linkedid);
                return ClaimOutcome::NotReported(call_id);
            }
            return ClaimOutcome::Unconfirmed;
        };
        if *ch.name != *claim.channel || ch.linkedid() != claim.linkedid {
            return ClaimOutcome::Unconfirmed;
        }
        self.events += 1;
        let caller = claim.caller_num.as_deref().filter(|c| !is_withheld(c));
        if let Some(c) = caller {
            ch.caller_num = Some(c.into());
        }
        ch.withheld = claim.caller_withheld;
        let key = ch.call().clone();
        self.mark(&key);
        let call_id = CallId::of(&self.settings.call_id_prefix, &key);
        let call = self.calls.get(&*key).expect("a channel's call exists");
        if call.reported {
            return ClaimOutcome::Known(call.call_id.clone().unwrap_or(call_id));
        }
        let by_context = if self.settings.inbound_contexts.contains(&claim.context) {
            Some(Direction::In)
        } else if self.settings.outbound_contexts.contains(&claim.context) {
            Some(Direction::Out)
        } else {
            None
        };
        let Some(direction) = claim.direction.or(call.direction).or(by_context) else {
            return ClaimOutcome::NotReported(call_id);
        };
        if call.internal || call.ended {
            return ClaimOutcome::NotReported(call_id);
        }
        let dialed = claim
            .to
            .as_deref()
            .or(Some(claim.exten.as_str()).filter(|e| !e.is_empty() && *e != "s"))
            .or(claim.dnid.as_deref())
            .unwrap_or("");
        let to = if dialed.is_empty() {
            String::new()
        } else {
            self.settings.plan.normalise(dialed)
        };
        let agent: Option<ShortStr> = match claim.from.as_deref() {
            Some(from) => Some(from.into()),
            None => {
                let ampuser = self.channels.get(uid).and_then(|c| c.ampuser());
                self.calling_agent(&claim.channel, caller, ampuser)
            }
        };
        let from = match direction {
            Direction::In => claim
                .from
                .as_deref()
                .map(|f| self.settings.plan.normalise(f))
                .unwrap_or_default(),
            Direction::Out => self.outbound_from(agent.as_deref().unwrap_or("")),
        };
        if direction == Direction::Out && self.settings.plan.is_extension(&to) {
            let call = self.calls.get_mut(&*key).expect("checked above");
            call.internal = true;
            return ClaimOutcome::NotReported(call_id);
        }
        let call = self.calls.get_mut(&*key).expect("checked above");
        call.direction = Some(direction);
        call.origin = Some(uid.into());
        call.to = to.into();
        call.from = from.into();
        if direction == Direction::Out {
            call.agent = agent;
        }
        if let Some(queue) = &claim.queue {
            call.queue = Some(queue.as_str().into());
        }
        call.claimed_users = (!claim.users.is_empty()).then(|| Box::new(claim.users.clone()));
        let mut out = Vec::with_capacity(1);
        self.report_new_call(&key, &mut out);
        match out.pop() {
            Some(request) => ClaimOutcome::New(request),
            None => ClaimOutcome::NotReported(call_id),
        }
    }

    /// Where Zammad's answer to the `newCall` of `call_id` would act over AMI.
    pub fn decision_target(&self, call_id: &CallId) -> Option<DecisionTarget> {
        let key = call_id.0.strip_prefix(&*self.settings.call_id_prefix)?;
        let call = self.calls.get(key)?;
        let origin = call.origin.as_deref()?;
        Some(DecisionTarget {
            direction: call.direction?,
            channel: self.channels.get(origin)?.name.to_string(),
            dialed: !call.legs.is_empty(),
        })
    }
}
