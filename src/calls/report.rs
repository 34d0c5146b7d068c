//! What Zammad is told: the `newCall`, `answer` and `hangup` bodies of a call, each sent
//! at most once, and the names and numbers in them.

use super::Tracker;
use super::model::{AnsweredBy, Call, ChannelState};
use crate::calls::cause::zammad_cause;
use crate::config::AgentEntry;
use crate::zammad::cti::{CallId, CtiEventKind, CtiRequest, Direction, Users};

impl Tracker {
    /// Sends the call's `newCall` if it qualifies and was not sent yet.
    pub(super) fn report_new_call(&mut self, key: &str, out: &mut Vec<CtiRequest>) {
        self.mark(key);
        let Some(call) = self.calls.get(key) else {
            return;
        };
        if call.reported || call.ended || call.internal {
            return;
        }
        let Some(direction) = call.direction else {
            return;
        };
        let (from, user) = match direction {
            Direction::In => {
                let origin = call.origin.as_deref().and_then(|o| self.channels.get(o));
                let caller = origin
                    .and_then(|c| c.caller_num.as_deref())
                    .or(call.caller.as_deref())
                    .unwrap_or("");
                let withheld = origin.map_or(call.caller_withheld, |c| c.withheld);
                let from = if !call.from.is_empty() {
                    call.from.to_string()
                } else if withheld {
                    // The caller asked not to be shown: digits the network still passed
                    // on (a masked or partial number) are not the caller's to give away.
                    self.settings.plan.normalise("")
                } else {
                    self.settings.plan.normalise(caller)
                };
                let mut names = call.claimed_users.as_deref().cloned().unwrap_or_default();
                for name in self.ringing_names(call) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                (from, Users::from_names(names))
            }
            Direction::Out => {
                let origin = call.origin.as_deref();
                let user = call
                    .agent
                    .as_deref()
                    .and_then(|ext| self.agent_name(Some(ext), None, origin))
                    .map(str::to_string);
                let names = match call.claimed_users.as_deref() {
                    Some(claimed) => claimed.clone(),
                    None => user.into_iter().collect(),
                };
                (call.from.to_string(), Users::from_names(names))
            }
        };
        let mut to = call.to.to_string();
        if to.is_empty() {
            // No DID (exten `s`): the first extension that rang stands in for it.
            to = call
                .legs
                .iter()
                .find_map(|l| l.extension.as_deref())
                .unwrap_or("")
                .to_string();
        }
        let internal = direction == Direction::In
            && self.settings.plan.is_extension(&from)
            && self.settings.plan.is_extension(&to);
        let call_id = CallId::of(&self.settings.call_id_prefix, key);
        let call = self.calls.get_mut(key).expect("checked above");
        if internal {
            call.internal = true;
            return;
        }
        call.reported = true;
        call.from = from.as_str().into();
        call.to = to.as_str().into();
        call.call_id = Some(call_id.clone());
        out.push(CtiRequest {
            event: CtiEventKind::NewCall,
            direction,
            call_id,
            from,
            to,
            user,
            queue: call.queue.as_deref().map(str::to_string),
            answering_number: None,
            cause: None,
        });
    }

    /// Names of the agents the call rings (or rang), in the order they were dialed.
    pub(super) fn ringing_names(&self, call: &Call) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        for leg in &call.legs {
            if let Some(name) = self.agent_name(
                leg.extension.as_deref(),
                leg.member_name.as_deref(),
                Some(&leg.uniqueid),
            ) {
                add(name);
            }
        }
        // Legs of a parallel Dial that exist but were not dialed yet (Down, not the origin).
        for uid in &call.members {
            let Some(ch) = self.channels.get(uid) else {
                continue;
            };
            if ch.state != ChannelState::Down
                || call.origin.as_deref() == Some(&**uid)
                || Self::is_leg(call, uid)
            {
                continue;
            }
            let ext = self.extension_of(&ch.name);
            if let Some(name) = self.agent_name(ext.as_deref(), None, Some(uid)) {
                add(name);
            }
        }
        names
    }

    /// Who answers at `ext`: the name `[agents]` gives, else the queue's `MemberName`,
    /// else the caller-ID name of the phone's own channel `uid` (`Channel::name_at`).
    pub(super) fn agent_name<'a>(
        &'a self,
        ext: Option<&str>,
        member: Option<&'a str>,
        uid: Option<&str>,
    ) -> Option<&'a str> {
        ext.and_then(|e| self.settings.agents.get(e))
            .map(AgentEntry::name)
            .or(member)
            .or_else(|| {
                let channel = self.channels.get(uid?)?;
                channel.name_at(ext?)
            })
    }

    pub(super) fn report_answer(&mut self, key: &str, by: AnsweredBy, out: &mut Vec<CtiRequest>) {
        self.mark(key);
        let Some(call) = self.calls.get(key) else {
            return;
        };
        if !call.reported || call.answered || call.ended {
            return;
        }
        let Some(direction) = call.direction else {
            return;
        };
        let (user, answering_number) = match (direction, by) {
            (Direction::Out, _) => (None, None),
            (Direction::In, AnsweredBy::Voicemail) => (Some("voicemail".to_string()), None),
            (Direction::In, AnsweredBy::Leg(uid)) => {
                let leg = call.legs.iter().find(|l| l.uniqueid == uid);
                let by_name = self
                    .channels
                    .get(&uid)
                    .and_then(|c| self.extension_of(&c.name));
                let ext = leg
                    .and_then(|l| l.extension.as_deref())
                    .or(by_name.as_deref());
                let member = leg.and_then(|l| l.member_name.as_deref());
                self.answering(ext, member, Some(&uid))
            }
            (Direction::In, AnsweredBy::Picker { extension }) => {
                self.answering(extension.as_deref(), None, None)
            }
        };
        let call = self.calls.get_mut(key).expect("checked above");
        call.answered = true;
        call.outcome.answered = true;
        out.push(CtiRequest {
            event: CtiEventKind::Answer,
            direction,
            call_id: call.call_id.clone().expect("reported calls have an id"),
            from: call.from.to_string(),
            to: call.to.to_string(),
            user: user.map(Users::One),
            queue: None,
            answering_number,
            cause: None,
        });
    }

    /// `user` and `answeringNumber` for an answer by the agent at `ext` on channel `uid`.
    pub(super) fn answering(
        &self,
        ext: Option<&str>,
        member: Option<&str>,
        uid: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        let agent = ext.and_then(|e| self.settings.agents.get(e));
        let user = self.agent_name(ext, member, uid).map(str::to_string);
        let number = agent
            .and_then(AgentEntry::number)
            .map(str::to_string)
            .or(ext.map(str::to_string));
        (user, number)
    }

    pub(super) fn report_hangup(&mut self, key: &str, out: &mut Vec<CtiRequest>) {
        self.mark(key);
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if call.ended {
            return;
        }
        call.ended = true;
        if !call.reported {
            return;
        }
        let direction = call.direction.expect("reported calls have a direction");
        out.push(CtiRequest {
            event: CtiEventKind::Hangup,
            direction,
            call_id: call.call_id.clone().expect("reported calls have an id"),
            from: call.from.to_string(),
            to: call.to.to_string(),
            user: None,
            queue: None,
            answering_number: None,
            cause: Some(zammad_cause(direction, &call.outcome)),
        });
    }
}
