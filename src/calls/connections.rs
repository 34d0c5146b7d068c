//! Who dialed whom and who got connected: Dial, queue and pickup events as legs of a
//! call, ringing, and the answer that counts (the origin's own dial or queue).

use super::Tracker;
use super::model::{AnsweredBy, Call, Leg, ShortStr};
use crate::ami::AmiMessage;
use crate::calls::cause::DialOutcome;
use crate::calls::number::is_withheld;
use crate::zammad::cti::{CtiRequest, Direction};

impl Tracker {
    pub(super) fn is_leg(call: &Call, uid: &str) -> bool {
        call.legs.iter().any(|l| &*l.uniqueid == uid)
    }

    pub(super) fn on_leg_ringing(&mut self, key: &str, uid: &str, out: &mut Vec<CtiRequest>) {
        let Some(call) = self.calls.get(key) else {
            return;
        };
        if call.direction == Some(Direction::In) && Self::is_leg(call, uid) {
            self.report_new_call(key, out);
        }
    }

    pub(super) fn on_voicemail(&mut self, key: &str, uid: &str, out: &mut Vec<CtiRequest>) {
        let Some(call) = self.calls.get(key) else {
            return;
        };
        if call.direction != Some(Direction::In) || call.origin.as_deref() != Some(uid) {
            return;
        }
        self.report_new_call(key, out);
        self.report_answer(key, AnsweredBy::Voicemail, out);
    }

    /// The dialed channel of a Dial/queue event and the caller's call (both channel blocks
    /// refreshed). `None` without a caller block (Originate, call files): such a dial
    /// belongs to no call yet.
    pub(super) fn dial_parties(&mut self, msg: &AmiMessage) -> Option<(ShortStr, ShortStr)> {
        let caller = self.touch(msg, "");
        let dest = self.touch(msg, "Dest");
        let key = self.call_of(caller.as_deref()?)?;
        Some((dest?, key))
    }

    pub(super) fn on_dial_begin(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        let Some((dest, key)) = self.dial_parties(msg) else {
            return;
        };
        if let Some(ch) = self.channels.get_mut(&dest) {
            ch.dialed = true;
        }
        if let Some(caller) = msg.get("Uniqueid") {
            self.detect_originated_origin(msg, caller, &key);
        }
        let dest_name = msg.get("DestChannel").unwrap_or("");
        let extension = self.extension_of(dest_name);
        let to_trunk = self
            .settings
            .trunk_channel
            .as_ref()
            .is_some_and(|re| re.is_match(dest_name));
        let call = self.calls.get_mut(&*key).expect("a channel's call exists");
        if !Self::is_leg(call, &dest) {
            call.add_leg(Leg {
                uniqueid: dest.clone(),
                extension: extension.clone(),
                member_name: None,
                alive: true,
            });
        }
        if call.direction.is_some() {
            return;
        }
        let dest_number = msg
            .get("DestCallerIDNum")
            .filter(|n| !is_withheld(n))
            .or_else(|| msg.get("DestExten"));
        self.make_outbound(&key, to_trunk, dest_number, out);
    }

    pub(super) fn on_dial_state(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        self.touch(msg, "");
        let Some(dest) = self.touch(msg, "Dest") else {
            return;
        };
        let ringing = matches!(msg.get("DialStatus"), Some("RINGING" | "PROGRESS"));
        if let Some(key) = self.call_of(&dest).filter(|_| ringing) {
            self.on_leg_ringing(&key, &dest, out);
        }
    }

    pub(super) fn on_dial_end(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        let Some((dest, key)) = self.dial_parties(msg) else {
            return;
        };
        let status = msg.get("DialStatus").and_then(DialOutcome::parse);
        let forwarded = msg.get("Forward").is_some_and(|f| !f.is_empty());
        let Some(call) = self.calls.get_mut(&*key) else {
            return;
        };
        if !Self::is_leg(call, &dest) {
            // A dial that began while we were not looking (before a reconnect or a
            // restart): its end still tells who answered.
            if self.call_of(&dest).as_deref() != Some(&*key) {
                return;
            }
            let extension = self.extension_of(msg.get("DestChannel").unwrap_or(""));
            let call = self.calls.get_mut(&*key).expect("checked above");
            call.add_leg(Leg {
                uniqueid: dest.clone(),
                extension,
                member_name: None,
                alive: true,
            });
        }
        let call = self.calls.get_mut(&*key).expect("checked above");
        if forwarded {
            call.outcome.forwarded = true;
        }
        let caller = msg.get("Uniqueid").unwrap_or("");
        let from_origin = call.origin.as_deref() == Some(caller);
        match status {
            Some(DialOutcome::Answer) => {
                if let Some(ch) = self.channels.get_mut(caller) {
                    ch.connected_to = Some(dest.clone());
                }
                self.report_new_call(&key, out);
                // Answered means the external party is connected: only the origin's own
                // dial says so. An inner leg that answers (a Local channel's dial, a
                // call-acceptance step) may still be dropped before the caller's dial
                // ends; when it is not, the caller's DialEnd ANSWER follows.
                if from_origin {
                    let leg = self.connected_leg(&dest);
                    self.report_answer(&key, AnsweredBy::Leg(leg), out);
                }
            }
            Some(outcome) => {
                call.outcome.best_dial = call.outcome.best_dial.max(Some(outcome));
                if call.direction == Some(Direction::In) {
                    self.report_new_call(&key, out);
                }
            }
            None => {}
        }
    }

    pub(super) fn on_agent_called(&mut self, msg: &AmiMessage) {
        let Some((dest, key)) = self.dial_parties(msg) else {
            return;
        };
        let extension = msg
            .get("Interface")
            .and_then(|i| self.extension_of(i))
            .or_else(|| self.extension_of(msg.get("DestChannel").unwrap_or("")));
        let member_name = msg.get("MemberName").filter(|m| !m.is_empty());
        let queue = msg.get("Queue");
        let call = self.calls.get_mut(&*key).expect("a channel's call exists");
        if let Some(q) = queue {
            call.queue = Some(q.into());
        }
        match call.legs.iter_mut().find(|l| l.uniqueid == dest) {
            Some(leg) => {
                leg.extension = leg.extension.take().or(extension);
                leg.member_name = member_name.map(Into::into);
            }
            None => call.add_leg(Leg {
                uniqueid: dest,
                extension,
                member_name: member_name.map(Into::into),
                alive: true,
            }),
        }
    }

    pub(super) fn on_agent_connect(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        self.on_agent_called(msg);
        let (Some(caller), Some(dest)) = (msg.get("Uniqueid"), msg.get("DestUniqueid")) else {
            return;
        };
        let Some(key) = self.call_of(caller) else {
            return;
        };
        if let Some(ch) = self.channels.get_mut(caller) {
            ch.connected_to = Some(dest.into());
        }
        self.report_new_call(&key, out);
        // A queue inside a Local channel connects that channel, not yet the caller: the
        // caller's own DialEnd ANSWER follows (see `on_dial_end`).
        let from_origin = self
            .calls
            .get(&*key)
            .is_some_and(|c| c.origin.as_deref() == Some(caller));
        if from_origin {
            let leg = self.connected_leg(dest);
            self.report_answer(&key, AnsweredBy::Leg(leg), out);
        }
    }

    /// The channel at the far end of a connection that reached `dest`: through Local
    /// channel pairs (the `;1` the caller dialed is answered because its `;2` was
    /// connected to someone) to the leg that really answered.
    pub(super) fn connected_leg(&self, dest: &str) -> ShortStr {
        let mut leg: ShortStr = dest.into();
        // Local pairs nest only as deep as the dialplan goes; the bound keeps a malformed
        // stream from looping.
        for _ in 0..16 {
            let Some(half) = self.channels.get(&leg) else {
                break;
            };
            let Some(sibling) = half.local_sibling_name() else {
                break;
            };
            // Both halves of a Local pair share the requester's Linkedid, so the other
            // half is among the members of this half's call.
            let inner = self.calls.get(half.call()).and_then(|call| {
                call.members
                    .iter()
                    .filter_map(|uid| self.channels.get(uid))
                    .find(|c| *c.name == *sibling)
                    .and_then(|c| c.connected_to.clone())
            });
            match inner {
                Some(next) => leg = next,
                None => break,
            }
        }
        leg
    }

    pub(super) fn on_queue(&mut self, msg: &AmiMessage, join: bool) {
        let Some((_, key)) = self.touch_in_call(msg) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&*key) else {
            return;
        };
        if join {
            if let Some(q) = msg.get("Queue") {
                call.queue = Some(q.into());
            }
            call.in_queue = true;
        } else {
            call.in_queue = false;
            if !call.answered {
                call.outcome.queue_unserved = true;
            }
        }
    }

    /// `Pickup`: the channel in the main block picked up the ringing leg in `Target*`.
    pub(super) fn on_pickup(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        self.touch(msg, "");
        let Some(target) = self.touch(msg, "Target") else {
            return;
        };
        let Some(key) = self.call_of(&target) else {
            return;
        };
        let extension = msg.get("Channel").and_then(|n| self.extension_of(n));
        self.report_new_call(&key, out);
        self.report_answer(&key, AnsweredBy::Picker { extension }, out);
    }
}
