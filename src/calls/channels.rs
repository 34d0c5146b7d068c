//! Channels and call membership: a channel joins the call of its Linkedid, moves when
//! its Linkedid changes (bridges adopt the oldest), and leaves at its Hangup, which may
//! end its call.

use super::Tracker;
use super::model::{Channel, ChannelBlock, ChannelState, Prefix, ShortStr};
use crate::ami::AmiMessage;
use crate::calls::number::{is_withheld, presentation_withholds};
use crate::zammad::cti::{CtiRequest, Direction};

impl Tracker {
    /// Creates or refreshes the channel of the block with `prefix`; returns its Uniqueid.
    /// Re-homes the channel when its Linkedid changed.
    pub(super) fn touch(&mut self, msg: &AmiMessage, prefix: Prefix) -> Option<ShortStr> {
        self.touch_keyed(msg, prefix, false).map(|(uid, _)| uid)
    }

    /// [`Tracker::touch`] of the event's own channel, with the key of its call.
    pub(super) fn touch_in_call(&mut self, msg: &AmiMessage) -> Option<(ShortStr, ShortStr)> {
        self.touch_keyed(msg, "", false)
    }

    /// [`Tracker::touch`] for an event whose handler changes nothing of the call itself
    /// (`VarSet`, `BridgeEnter`, ...): the call's record is looked at again (`take_changes`)
    /// only if the touch changed something a restart needs, which a known channel's
    /// refresh does only when the call's last event moves to another minute or the
    /// channel enters the dialplan (a channel joining or moving a call always does).
    /// In the lab's answered inbound call, 34 events of 83 are of this kind.
    pub(super) fn touch_quiet(&mut self, msg: &AmiMessage) -> Option<ShortStr> {
        self.touch_keyed(msg, "", true).map(|(uid, _)| uid)
    }

    /// [`Tracker::touch`], returning the channel's Uniqueid and the key of its call;
    /// `quiet` as for [`Tracker::touch_quiet`].
    fn touch_keyed(
        &mut self,
        msg: &AmiMessage,
        prefix: Prefix,
        quiet: bool,
    ) -> Option<(ShortStr, ShortStr)> {
        let block = ChannelBlock::read(msg, prefix);
        let uniqueid = block.uniqueid?;
        let linkedid = block.linkedid.unwrap_or(uniqueid);
        let state = block.state();
        let caller = block.caller_num.filter(|c| !is_withheld(c));
        let name = block.caller_name.filter(|n| !is_withheld(n));
        let withheld = block.calling_pres.and_then(presentation_withholds);
        let refresh = |ch: &mut Channel| {
            ch.state = state;
            if let Some(c) = caller.filter(|c| ch.caller_num.as_deref() != Some(*c)) {
                ch.caller_num = Some(c.into());
            }
            if let Some(n) = name.filter(|n| ch.caller_name.as_deref() != Some(*n)) {
                ch.caller_name = Some(n.into());
            }
            if let Some(withheld) = withheld {
                ch.withheld = withheld;
            }
        };
        // What the rest needs of the channel once refreshed: its call, whether it enters
        // the dialplan now (once, when it first reaches Ring: later snapshots in Ring can
        // show another context, as after a masquerade, where a blonde transfer moves the
        // transferee into the transferer's place and the hung-up husk carries the other
        // channel's location), and its caller number for its call.
        let seen = |ch: &mut Channel| {
            refresh(ch);
            let entering = prefix.is_empty()
                && state == ChannelState::Ring
                && !std::mem::replace(&mut ch.entered, true);
            (
                ch.call().clone(),
                entering,
                ch.caller_num.clone(),
                ch.withheld,
            )
        };
        let uid: ShortStr = uniqueid.into();
        // Most events come from a channel known under the same Linkedid: one lookup.
        let fast = match self.channels.get_mut(uniqueid) {
            Some(ch) if ch.linkedid() == linkedid => Some(seen(ch)),
            _ => None,
        };
        let moved = fast.is_none();
        let (key, entering, caller_num, caller_withheld) = match fast {
            Some(seen) => seen,
            None => {
                let moved_from = match self.channels.get(uniqueid) {
                    // Known under another Linkedid: it joins that Linkedid's call.
                    Some(_) => {
                        let target = self.call_key_for(linkedid);
                        let ch = self.channels.get_mut(uniqueid).expect("checked above");
                        if let Some(call) = self.calls.get_mut(&**ch.call()) {
                            call.relinks += 1;
                        }
                        ch.relink(linkedid, target)
                    }
                    None => {
                        let key = self.call_key_for(linkedid);
                        let call = self.calls.get_mut(&*key).expect("just made");
                        call.members.push(uid.clone());
                        let channel = Channel::new(
                            block.channel.unwrap_or("").into(),
                            key,
                            linkedid.into(),
                            state,
                            None,
                            self.events,
                            prefix.is_empty() && msg.event() == Some("Newchannel"),
                        );
                        self.channels.insert(uid.clone(), Box::new(channel));
                        None
                    }
                };
                if let Some(old) = moved_from {
                    self.mark(&old);
                    self.rehome(&uid, &old);
                }
                // The channel is there: found or made above (re-homing moves it, never
                // drops it).
                seen(self.channels.get_mut(&*uid)?)
            }
        };
        // `mark` and `refresh_caller` in one lookup of the call: this runs for every event.
        let found = match self.calls.get_mut(&*key) {
            Some(call) => {
                // The call's record keeps the minute of its last event (`fingerprint`).
                let minute = call.last_event_minute();
                call.last_event_at = self.now;
                call.show_caller(&uid, caller_num.as_ref(), caller_withheld);
                Some(call.last_event_minute() != minute)
            }
            None => None,
        };
        if !quiet || moved || entering || found != Some(false) {
            self.note_change(&key, found.is_some());
        }
        if entering {
            self.detect_origin(msg, &uid, &key);
        }
        Some((uid, key))
    }

    /// Keeps the call's caller number and presentation as its origin channel shows them
    /// ([`Call::show_caller`]).
    pub(super) fn refresh_caller(&mut self, key: &str, uid: &str) {
        if let (Some(call), Some(ch)) = (self.calls.get_mut(key), self.channels.get(uid)) {
            call.show_caller(uid, ch.caller_num.as_ref(), ch.withheld);
        }
    }

    /// The key of the call that owns `linkedid` (following merges), created on demand.
    pub(super) fn call_key_for(&mut self, linkedid: &str) -> ShortStr {
        if let Some(key) = self.aliases.get(linkedid) {
            return key.clone();
        }
        if let Some((key, _)) = self.calls.get_key_value(linkedid) {
            return key.clone();
        }
        let key: ShortStr = linkedid.into();
        self.calls.insert(key.clone(), Box::default());
        key
    }

    /// Moves a channel from call `old` to its new call; an emptied old call is dropped
    /// (a merged consult call) and its Linkedid aliased to the new one.
    pub(super) fn rehome(&mut self, uniqueid: &str, old: &str) {
        let Some(new) = self.channels.get(uniqueid).map(|c| c.call().clone()) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&*new) {
            call.members.push(uniqueid.into());
        }
        let emptied = match self.calls.get_mut(old) {
            Some(call) => {
                call.members.retain(|m| &**m != uniqueid);
                call.members.is_empty()
            }
            None => false,
        };
        if emptied {
            self.aliases.insert(old.into(), new);
            self.emptied.push(old.into());
        }
    }

    /// Calls whose last channel moved to another call (a transfer or pickup merged them):
    /// nothing is left to end them, so a reported one gets its hangup now.
    pub(super) fn end_emptied(&mut self, out: &mut Vec<CtiRequest>) {
        for key in std::mem::take(&mut self.emptied) {
            let Some(call) = self.calls.get(&*key) else {
                continue;
            };
            if !call.members.is_empty() {
                continue;
            }
            self.report_hangup(&key, out);
            self.remove_call(&key);
            self.ended.insert(key);
        }
    }

    pub(super) fn call_of(&self, uniqueid: &str) -> Option<ShortStr> {
        self.channels.get(uniqueid).map(|c| c.call().clone())
    }

    /// The extension behind a channel or interface name: `PJSIP/201-00000a`,
    /// `SIP/201-0a`, `Local/201@phones-0000001;1`, `PJSIP/201` → `201`, if it is one of ours.
    pub(super) fn extension_of(&self, name: &str) -> Option<ShortStr> {
        let rest = name.split_once('/')?.1;
        let end = rest.find(['@', '-', ';', '/']).unwrap_or(rest.len());
        let ext = &rest[..end];
        (self.settings.agents.contains_key(ext) || self.settings.plan.is_extension(ext))
            .then(|| ext.into())
    }

    pub(super) fn on_channel_update(
        &mut self,
        msg: &AmiMessage,
        event: &str,
        out: &mut Vec<CtiRequest>,
    ) {
        let Some((uid, key)) = self.touch_in_call(msg) else {
            return;
        };
        match event {
            "Newstate" if ChannelState::of(msg, "") == ChannelState::Ringing => {
                self.on_leg_ringing(&key, &uid, out)
            }
            "Newexten" if msg.get("Application") == Some("VoiceMail") => {
                self.on_voicemail(&key, &uid, out)
            }
            _ => {}
        }
    }

    /// `VarSet`: the variables the rules read (FreePBX's `AMPUSER`).
    pub(super) fn on_var_set(&mut self, msg: &AmiMessage) {
        let Some(uid) = self.touch_quiet(msg) else {
            return;
        };
        if msg.get("Variable") == Some("AMPUSER")
            && let Some(ch) = self.channels.get_mut(&uid)
        {
            ch.set_ampuser(msg.get("Value").filter(|v| !v.is_empty()));
        }
    }

    pub(super) fn on_hangup_request(&mut self, msg: &AmiMessage) {
        let Some((uid, key)) = self.touch_in_call(msg) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&*key) else {
            return;
        };
        if call.direction == Some(Direction::In)
            && call.origin.as_deref() == Some(&*uid)
            && !call.answered
        {
            let ringing = call.legs.iter().any(|l| l.alive);
            if ringing || call.in_queue || call.legs.is_empty() {
                call.outcome.caller_gave_up = true;
            }
        }
    }

    pub(super) fn on_hangup(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        let Some(uid) = msg.get("Uniqueid") else {
            return;
        };
        if !self.channels.contains_key(uid) {
            self.touch(msg, "");
        }
        let Some(ch) = self.channels.remove(uid) else {
            return;
        };
        self.hung_up.insert(uid.into());
        let key = ch.call().clone();
        self.mark(&key);
        let cause = msg.get("Cause").and_then(|c| c.parse::<u16>().ok());
        let Some(call) = self.calls.get_mut(&*key) else {
            return;
        };
        call.members.retain(|m| &**m != uid);
        for leg in call.legs.iter_mut().filter(|l| &*l.uniqueid == uid) {
            leg.alive = false;
        }
        let is_origin = call.origin.as_deref() == Some(uid);
        let ends = match call.direction {
            Some(Direction::In) => is_origin,
            Some(Direction::Out) => {
                let origin_alive = call
                    .origin
                    .as_deref()
                    .is_some_and(|o| o != uid && self.channels.contains_key(o));
                !origin_alive && !call.legs.iter().any(|l| l.alive)
            }
            None => false,
        } || call.members.is_empty();
        if ends && !call.ended {
            if is_origin || call.outcome.q850.is_none() {
                call.outcome.q850 = cause;
            }
            if call.direction == Some(Direction::In) {
                self.report_new_call(&key, out);
            }
            self.report_hangup(&key, out);
        }
        let call = self.calls.get(&*key).expect("still here");
        if call.members.is_empty() {
            self.remove_call(&key);
            self.aliases.retain(|_, v| **v != *key);
            self.ended.insert(key);
        }
    }
}
