//! What lets a call go on across a restart or an AMI gap: the record the state dir
//! keeps ([`CallRecord`]), restoring it, reconciling with Asterisk's channel list, and
//! the sweep of calls that went silent.

use super::Tracker;
use super::model::{AnsweredBy, Call, Channel, ChannelState, Leg, ShortStr};
use crate::ami::AmiMessage;
use crate::calls::cause::CallOutcome;
use crate::zammad::cti::{CallId, CtiRequest, Direction};
use std::collections::HashSet;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};
/// A reported call as the state dir keeps it: what the tracker needs to go on with it
/// after a restart (its callId, what Zammad was told, its live channels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub(super) call_id: CallId,
    pub(super) direction: Direction,
    pub(super) origin: Option<ShortStr>,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) queue: Option<String>,
    pub(super) in_queue: bool,
    pub(super) agent: Option<ShortStr>,
    pub(super) legs: Vec<Leg>,
    pub(super) answered: bool,
    pub(super) outcome: CallOutcome,
    pub(super) channels: Vec<ChannelRecord>,
    pub(super) last_event_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct ChannelRecord {
    pub(super) uniqueid: ShortStr,
    pub(super) name: ShortStr,
    pub(super) linkedid: ShortStr,
    pub(super) state: u8,
    pub(super) caller_num: Option<ShortStr>,
}

/// What [`Call::stored`] holds for a record the state dir holds but whose hash is not
/// known (restored, or of a call before): even, so unlike any [`Tracker::fingerprint`].
const UNLIKE_ANY: NonZeroU64 = NonZeroU64::new(2).expect("not zero");

impl Tracker {
    /// The reported calls changed since the last call: `Some(record)` to keep, `None` to
    /// forget (the call ended, or is no longer one Zammad hears of).
    pub fn take_changes(&mut self) -> Vec<(String, Option<CallRecord>)> {
        let mut changes = Vec::with_capacity(self.dirty.len());
        // Drained and put back, so that the set keeps its room for the next batch.
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain() {
            let Some(call) = self.calls.get(&*key) else {
                if self.gone_stored.remove(&*key) {
                    changes.push((key.to_string(), None));
                }
                continue;
            };
            // A call of that key that came back (a claim after its end) finds the record
            // of the one before held, unlike any of its own.
            let stored = if self.gone_stored.remove(&*key) {
                Some(UNLIKE_ANY)
            } else {
                call.stored
            };
            let keep = call.reported && !call.ended;
            let hash = keep.then(|| Self::fingerprint(call));
            if hash == stored {
                continue;
            }
            changes.push((key.to_string(), hash.map(|_| self.record_of(call))));
            self.calls.get_mut(&*key).expect("just read").stored = hash;
        }
        self.dirty = dirty;
        changes
    }

    /// A hash of what a restart needs of `call`, taken without building its record: the
    /// record is written only when this changes. Channel states and caller numbers are
    /// left out: they change on most events, and after a restart Asterisk's channel list
    /// brings them up to date (`reconcile`) before anything reads them. The channels'
    /// names and Linkedids are not read either: a channel's name never changes, so the
    /// Uniqueids of its members and the count of their Linkedid changes (`relinks`) tell
    /// when those do, and the call alone is read (one lookup per changed call, not one
    /// per channel).
    fn fingerprint(call: &Call) -> NonZeroU64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
        call.call_id.hash(&mut h);
        call.direction.hash(&mut h);
        call.origin.hash(&mut h);
        call.from.hash(&mut h);
        call.to.hash(&mut h);
        call.queue.hash(&mut h);
        call.in_queue.hash(&mut h);
        call.agent.hash(&mut h);
        call.legs.hash(&mut h);
        call.answered.hash(&mut h);
        call.outcome.hash(&mut h);
        call.members.hash(&mut h);
        call.relinks.hash(&mut h);
        call.last_event_minute().hash(&mut h);
        NonZeroU64::new(h.finish() | 1).expect("odd")
    }

    pub(super) fn record_of(&self, call: &Call) -> CallRecord {
        CallRecord {
            call_id: call.call_id.clone().expect("reported calls have an id"),
            direction: call.direction.expect("reported calls have a direction"),
            origin: call.origin.clone(),
            from: call.from.to_string(),
            to: call.to.to_string(),
            queue: call.queue.as_deref().map(str::to_string),
            in_queue: call.in_queue,
            agent: call.agent.clone(),
            legs: call.legs.to_vec(),
            answered: call.answered,
            outcome: call.outcome,
            channels: call
                .members
                .iter()
                .filter_map(|uid| {
                    let ch = self.channels.get(uid)?;
                    Some(ChannelRecord {
                        uniqueid: uid.clone(),
                        name: ch.name.clone(),
                        linkedid: ch.linkedid().into(),
                        state: ch.state.code(),
                        caller_num: ch.caller_num.clone(),
                    })
                })
                .collect(),
            // To the minute (`Call::last_event_minute`): a record then changes only when
            // something a restart needs changes.
            last_event_at: call.last_event_minute() * 60,
        }
    }

    /// Takes back the calls the state dir kept (at start-up, before any event).
    /// A call kept without any live channel has nothing left to follow: its hangup goes
    /// to `out` at once.
    pub fn restore(
        &mut self,
        records: impl IntoIterator<Item = (String, CallRecord)>,
        out: &mut Vec<CtiRequest>,
    ) {
        for (key, r) in records {
            let key: ShortStr = key.into();
            let mut call = Call {
                call_id: Some(r.call_id),
                direction: Some(r.direction),
                origin: r.origin,
                from: r.from.into(),
                to: r.to.into(),
                queue: r.queue.map(String::into_boxed_str),
                in_queue: r.in_queue,
                agent: r.agent,
                legs: r.legs.into_boxed_slice(),
                reported: true,
                answered: r.answered,
                outcome: r.outcome,
                last_event_at: r.last_event_at,
                ..Call::default()
            };
            for ch in r.channels {
                call.members.push(ch.uniqueid.clone());
                if ch.linkedid != key {
                    self.aliases.insert(ch.linkedid.clone(), key.clone());
                }
                self.channels.insert(
                    ch.uniqueid,
                    Box::new(Channel::new(
                        ch.name,
                        key.clone(),
                        ch.linkedid,
                        ChannelState::from_code(ch.state),
                        ch.caller_num,
                        0,
                        false,
                    )),
                );
            }
            let nothing_left = call.members.is_empty();
            // Held, but unlike any record: the first change writes it again.
            call.stored = Some(UNLIKE_ANY);
            self.calls.insert(key.clone(), Box::new(call));
            if nothing_left {
                self.mark(&key);
                self.report_hangup(&key, out);
                self.remove_call(&key);
                self.ended.insert(key);
            }
        }
    }

    /// Brings the tracker in line with the channels Asterisk has now (`CoreShowChannel`
    /// events, asked for when [`Tracker::events_seen`] was `since`): channels known
    /// before that and no longer there hung up while we were not looking (their calls get
    /// their hangup, with the best cause known); channels we did not know are followed
    /// from now on, and an inbound call found that way is reported at once ("joined
    /// late"), answered if its caller is already talking to a phone.
    pub fn reconcile(&mut self, live: &[AmiMessage], since: u64, out: &mut Vec<CtiRequest>) {
        let present: HashSet<&str> = live.iter().filter_map(|c| c.get("Uniqueid")).collect();
        let mut gone: Vec<ShortStr> = self
            .channels
            .iter()
            .filter(|(uid, ch)| ch.seen_at <= since && !present.contains(&***uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        gone.sort();
        for uid in gone {
            self.hang_up_unseen(&uid, out);
        }
        let mut adopted: Vec<ShortStr> = Vec::new();
        // Channels born while we were not looking: first learnt from this list, or from an
        // event after the list was asked for that was not their `Newchannel` (events go on
        // between the login and the list, and tell only the rest of such a channel's life).
        let mut new_channels: HashSet<&str> = HashSet::new();
        for snapshot in live {
            let Some(uid) = snapshot.get("Uniqueid") else {
                continue;
            };
            let known = self.channels.get(uid);
            let learnt_midway = known.is_none_or(|ch| ch.seen_at > since && !ch.born_seen);
            let known = known.is_some();
            let linkedid = snapshot.get("Linkedid").unwrap_or(uid);
            if !known && (self.hung_up.contains(uid) || self.ended.contains(linkedid)) {
                // Listed before its hangup reached us: gone already.
                continue;
            }
            self.touch(snapshot, "");
            if learnt_midway && let Some(key) = self.call_of(uid) {
                self.adopt(snapshot, uid, &key);
                adopted.push(key);
                new_channels.insert(uid);
            }
        }
        adopted.sort();
        adopted.dedup();
        // A phone that entered an outbound context and has a channel in its call born while
        // we were not looking (not the other half of its own Local pair) dialed unseen,
        // whether the phone itself was learnt from the list, from events since the list was
        // asked for, or before (the connection dropped between its Newchannel and its
        // DialBegin, or the daemon restarted meanwhile).
        let mut dialed_unseen: Vec<ShortStr> = self
            .calls
            .iter()
            .filter(|(_, c)| c.direction.is_none() && !c.reported)
            .filter_map(|(key, c)| {
                let (origin, _) = c.out_origin.as_deref()?;
                let sibling = self
                    .channels
                    .get(origin)
                    .and_then(|o| o.local_sibling_name());
                c.members
                    .iter()
                    .filter(|m| *m != origin && new_channels.contains(&***m))
                    .filter_map(|m| self.channels.get(m))
                    .any(|ch| sibling.as_deref() != Some(&*ch.name))
                    .then(|| key.clone())
            })
            .collect();
        dialed_unseen.sort();
        for key in &dialed_unseen {
            self.adopt_outbound(key, live, out);
        }
        let keys: Vec<ShortStr> = self.calls.keys().cloned().collect();
        for key in keys {
            let Some(call) = self.calls.get(&key) else {
                continue;
            };
            if call.direction != Some(Direction::In) || call.answered || call.ended {
                continue;
            }
            let talking = self.talking_to(&key, live);
            if !call.reported && (adopted.contains(&key) || talking.is_some()) {
                self.report_new_call(&key, out);
            }
            if let Some(extension) = talking {
                self.report_answer(&key, AnsweredBy::Picker { extension }, out);
            }
        }
        // The list can move a call's last channel into another call (a transfer merged
        // them while we were away): that call ends now, as after an event.
        self.end_emptied(out);
    }

    /// A call found only in a snapshot whose phone (in an outbound context) has another
    /// channel with it: the dial out happened unseen. Its other channels become its legs;
    /// if the phone is already up in a bridge, the far end answered.
    pub(super) fn adopt_outbound(
        &mut self,
        key: &str,
        live: &[AmiMessage],
        out: &mut Vec<CtiRequest>,
    ) {
        let Some(call) = self.calls.get(key) else {
            return;
        };
        let Some((origin, _)) = call.out_origin.as_deref().cloned() else {
            return;
        };
        if call.direction.is_some() || call.reported {
            return;
        }
        let others: Vec<ShortStr> = call
            .members
            .iter()
            .filter(|m| **m != origin)
            .cloned()
            .collect();
        if others.is_empty() {
            return;
        }
        let to_trunk = others.iter().any(|uid| {
            let name = self.channels.get(uid).map_or("", |c| &c.name);
            self.settings
                .trunk_channel
                .as_ref()
                .is_some_and(|re| re.is_match(name))
        });
        let call = self.calls.get_mut(key).expect("checked above");
        for uid in others {
            if Self::is_leg(call, &uid) {
                continue;
            }
            call.add_leg(Leg {
                uniqueid: uid,
                extension: None,
                member_name: None,
                alive: true,
            });
        }
        self.make_outbound(key, to_trunk, None, out);
        let up_and_bridged = live.iter().any(|c| {
            c.get("Uniqueid") == Some(&*origin)
                && ChannelState::of(c, "") == ChannelState::Up
                && c.get("BridgeId").is_some_and(|b| !b.is_empty())
        });
        if up_and_bridged {
            self.report_answer(key, AnsweredBy::Picker { extension: None }, out);
        }
    }

    /// A channel found only in a snapshot, up: in an inbound context it makes its call
    /// inbound, as its `Newchannel` in state Ring would have. Only the call's first channel
    /// can be its caller: Asterisk gives a channel created on another's behalf (a Dial
    /// leg, a Local half) the requester's Linkedid, so a listed channel whose Uniqueid is
    /// not its Linkedid is a leg (e.g. the trunk leg of an outbound call).
    pub(super) fn adopt(&mut self, snapshot: &AmiMessage, uid: &str, key: &str) {
        let first = snapshot.get("Linkedid").is_none_or(|l| l == uid);
        if first && ChannelState::of(snapshot, "") == ChannelState::Up {
            self.detect_origin(snapshot, uid, key);
            self.detect_dialing_phone(snapshot, uid, key);
        }
    }

    /// A phone's channel (its endpoint names an extension or an agent) found up, as its
    /// call's first channel, at a dialable number that is no extension, in a context that
    /// is not inbound: it came in through an outbound context before we looked, and the
    /// dialplan has moved it on to where its `Dial` runs. Asterisk keeps a channel's
    /// dialplan location while an application runs there, so the listed `Exten` is the
    /// number dialed (FreePBX 17 dials out from `trunk-dial-with-exten`, at the number).
    /// It becomes the call's phone dialing that number, as its entry in an outbound
    /// context would have made it.
    fn detect_dialing_phone(&mut self, snapshot: &AmiMessage, uid: &str, key: &str) {
        let context = snapshot.get("Context").unwrap_or("");
        let exten = snapshot.get("Exten").unwrap_or("");
        let dialable = !exten.is_empty()
            && exten
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+'));
        let phone = self
            .extension_of(snapshot.get("Channel").unwrap_or(""))
            .is_some();
        if !dialable
            || !phone
            || self.settings.inbound_contexts.contains(context)
            || self.settings.plan.is_extension(exten)
        {
            return;
        }
        if let Some(call) = self.calls.get_mut(key)
            && call.direction.is_none()
            && call.out_origin.is_none()
        {
            call.out_origin = Some(Box::new((uid.into(), exten.into())));
        }
    }

    /// For an inbound call whose caller is up and bridged: the extension of the phone in
    /// the same bridge, if any (`Some(None)` when the other party is no known phone).
    pub(super) fn talking_to(&self, key: &str, live: &[AmiMessage]) -> Option<Option<ShortStr>> {
        let call = self.calls.get(key)?;
        let origin = call.origin.as_deref()?;
        let snap = |uid: &str| live.iter().find(|c| c.get("Uniqueid") == Some(uid));
        let o = snap(origin)?;
        let bridge = o.get("BridgeId").filter(|b| !b.is_empty())?;
        if ChannelState::of(o, "") != ChannelState::Up {
            return None;
        }
        let other = live
            .iter()
            .filter(|c| c.get("BridgeId") == Some(bridge) && c.get("Uniqueid") != Some(origin))
            .find_map(|c| c.get("Channel").and_then(|n| self.extension_of(n)));
        Some(other)
    }

    /// A channel whose `Hangup` we did not see (it vanished meanwhile, or went silent):
    /// handled as if Asterisk had sent one without a cause.
    pub(super) fn hang_up_unseen(&mut self, uid: &str, out: &mut Vec<CtiRequest>) {
        let Some(ch) = self.channels.get(uid) else {
            return;
        };
        let hangup = AmiMessage::from_pairs([
            ("Event", "Hangup"),
            ("Channel", &*ch.name),
            ("Uniqueid", uid),
            ("Linkedid", ch.linkedid()),
        ]);
        self.on_hangup(&hangup, out);
    }

    /// Ends the calls that saw no event for longer than `max_age` seconds (by the time of
    /// [`Tracker::set_now`]), as if their channels had hung up.
    pub fn sweep(&mut self, max_age: u64, out: &mut Vec<CtiRequest>) {
        let stale: Vec<Vec<ShortStr>> = self
            .calls
            .values()
            .filter(|c| self.now.saturating_sub(c.last_event_at) > max_age)
            .map(|c| c.members.clone())
            .collect();
        for uid in stale.into_iter().flatten() {
            self.hang_up_unseen(&uid, out);
        }
    }
}
