//! The call tracker: a pure state machine, AMI events in, CTI requests out.
//!
//! Owns the model of what is happening on the PBX: channels by Uniqueid, calls keyed by the
//! Linkedid of their first channel (the callId), which channel is the external party, which
//! legs ring, who answered, and why the call ended. It decides when Zammad hears `newCall`,
//! `answer` and `hangup`, and what they say. It does no I/O and reads no clock: the daemon
//! and `replay` feed it the same events and get the same requests.
//!
//! Rules (DESIGN.md §4, reference/asterisk.md §3-4):
//! - A call is **inbound** once a channel in an `inbound_contexts` context is in state Ring
//!   (that channel is the call's *origin*, the external party). Its `newCall` waits until
//!   the call is routed (a leg rings, answers or ends, or the origin hangs up), so that the
//!   caller ID (which may come later in `NewCallerid`) and the ringing agents are known.
//! - A call is **outbound** once a channel that entered the dialplan in an
//!   `outbound_contexts` context (in state Ring) dials while its dialed number is not an
//!   internal extension, or dials a leg whose name matches `trunk_channel`.
//! - `answer` once, on the first pickup of a leg (Dial ANSWER, AgentConnect, Pickup).
//! - `hangup` once: inbound when the origin channel is gone; outbound when neither the
//!   origin nor any dialed leg is left.
//! - A channel whose Linkedid changes (bridges adopt the oldest Linkedid on transfers and
//!   pickups) moves to the call that owns the new Linkedid; callIds never change.
//!
//! Besides AMI events it takes: FastAGI claims ([`Tracker::claim`]: the dialplan announces
//! a call, whose `newCall` goes out at once and only once), the calls the state dir kept
//! ([`Tracker::restore`], with [`Tracker::take_changes`] feeding it), Asterisk's channel
//! list after a (re)connect ([`Tracker::reconcile`]: vanished channels hang up, unknown ones
//! are adopted), the time ([`Tracker::set_now`]) for [`Tracker::sweep`], and new settings on
//! SIGHUP ([`Tracker::set_settings`]).

use crate::ami::AmiMessage;
use crate::config::{AgentEntry, CallsConfig, Config};
use crate::cti::{CallId, CtiEventKind, CtiRequest, Direction, Users};
use crate::policy::cause::{CallOutcome, DialOutcome, zammad_cause};
use crate::policy::number::{NumberPlan, is_withheld, presentation_withholds};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Everything the tracker needs from the config, compiled once.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    pub plan: NumberPlan,
    pub inbound_contexts: HashSet<String>,
    pub outbound_contexts: HashSet<String>,
    pub trunk_channel: Option<Regex>,
    pub agents: BTreeMap<String, AgentEntry>,
    pub call_id_prefix: String,
}

impl TrackerSettings {
    /// Builds the settings from a loaded config. The regexes were validated at load.
    pub fn from_config(config: &Config) -> Result<Self, regex::Error> {
        let calls: &CallsConfig = &config.calls;
        Ok(Self {
            plan: NumberPlan::new(&config.numbers, Regex::new(&calls.extension_pattern)?),
            inbound_contexts: calls.inbound_contexts.iter().cloned().collect(),
            outbound_contexts: calls.outbound_contexts.iter().cloned().collect(),
            trunk_channel: calls.trunk_regex(),
            agents: config.agents.clone(),
            call_id_prefix: config.zammad.call_id_prefix.clone(),
        })
    }
}

/// One channel (Uniqueid) as far as call tracking needs it.
#[derive(Debug)]
struct Channel {
    name: Box<str>,
    /// Key of the call this channel belongs to.
    call: Box<str>,
    /// The Linkedid last seen on this channel.
    linkedid: Box<str>,
    state: u8,
    caller_num: Option<Box<str>>,
    /// The caller's presentation says the number is not to be shown (`CID-CallingPres`
    /// restricted or unavailable).
    withheld: bool,
    /// Another channel's `Dial` requested this channel (the Dest of a `DialBegin` with a
    /// caller): an outgoing leg, never a call's incoming origin.
    dialed: bool,
    /// The channel reached state Ring (entered the dialplan as an incoming channel).
    entered: bool,
    /// The channel this one's own dial (or queue) connected it to: the Dest of its
    /// `DialEnd ANSWER`, or of its `AgentConnect`.
    connected_to: Option<Box<str>>,
    /// The tracker's event count when the channel was first seen (0: restored).
    seen_at: u64,
}

impl Channel {
    fn new(
        name: Box<str>,
        call: Box<str>,
        linkedid: Box<str>,
        state: u8,
        caller_num: Option<Box<str>>,
        seen_at: u64,
    ) -> Self {
        Self {
            name,
            call,
            linkedid,
            state,
            caller_num,
            withheld: false,
            dialed: false,
            entered: state == 4 && seen_at == 0,
            connected_to: None,
            seen_at,
        }
    }

    /// The other half of a Local channel pair (`Local/x@ctx-0000001a;1` ⇄ `…;2`): Asterisk
    /// names both halves alike, with `;1` on the side the requester dialed and `;2` on the
    /// side that runs the dialplan (core/local channel driver, `local_alloc`).
    fn local_sibling_name(&self) -> Option<String> {
        let base = self.name.strip_prefix("Local/")?;
        let (base, half) = base.rsplit_once(';')?;
        let other = match half {
            "1" => '2',
            "2" => '1',
            _ => return None,
        };
        Some(format!("Local/{base};{other}"))
    }
}

/// One leg dialed (or called by a queue) on behalf of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Leg {
    uniqueid: Box<str>,
    /// The agent's extension, if the leg goes to an internal phone.
    extension: Option<Box<str>>,
    /// A display name from the queue (`MemberName`), used when `[agents]` has none.
    member_name: Option<Box<str>>,
    alive: bool,
}

#[derive(Debug, Default)]
struct Call {
    call_id: Option<CallId>,
    direction: Option<Direction>,
    /// Inbound: the external party's channel. Outbound: the dialing phone's channel.
    origin: Option<Box<str>>,
    /// The first channel that entered the dialplan in an outbound context, and the number
    /// it dialed there: the call becomes outbound when that number is dialed out.
    out_origin: Option<(Box<str>, Box<str>)>,
    from: String,
    to: String,
    /// Inbound: the caller's number as the origin channel last showed it (kept when the
    /// channel is gone), and whether its presentation withholds it.
    caller: Option<Box<str>>,
    caller_withheld: bool,
    queue: Option<String>,
    in_queue: bool,
    /// Outbound: the calling agent's extension.
    agent: Option<Box<str>>,
    /// Inbound: who rings, as the dialplan told the FastAGI `newcall` (`user=`).
    claimed_users: Vec<String>,
    legs: Vec<Leg>,
    /// Both ends are internal: never reported.
    internal: bool,
    reported: bool,
    answered: bool,
    ended: bool,
    outcome: CallOutcome,
    /// Uniqueids of this call's channels still alive.
    members: Vec<Box<str>>,
    /// The time ([`Tracker::set_now`]) of the call's last event.
    last_event_at: u64,
}

/// A reported call as the state dir keeps it: what the tracker needs to go on with it
/// after a restart (its callId, what Zammad was told, its live channels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    call_id: CallId,
    direction: Direction,
    origin: Option<Box<str>>,
    from: String,
    to: String,
    queue: Option<String>,
    in_queue: bool,
    agent: Option<Box<str>>,
    legs: Vec<Leg>,
    answered: bool,
    outcome: CallOutcome,
    channels: Vec<ChannelRecord>,
    last_event_at: u64,
}

impl CallRecord {
    /// A hash of the record's content.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let json = serde_json::to_string(self).expect("a CallRecord serialises");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        json.hash(&mut h);
        h.finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChannelRecord {
    uniqueid: Box<str>,
    name: Box<str>,
    linkedid: Box<str>,
    state: u8,
    caller_num: Option<Box<str>>,
}

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

/// The call state machine. Feed it every AMI event with [`Tracker::handle`].
#[derive(Debug)]
pub struct Tracker {
    settings: TrackerSettings,
    channels: HashMap<Box<str>, Channel>,
    calls: HashMap<Box<str>, Call>,
    /// Linkedids adopted by a call other than their own (after merges), to that call's key.
    aliases: HashMap<Box<str>, Box<str>>,
    /// Keys of the last calls that ended (oldest first), so that a FastAGI claim arriving
    /// after its call's last AMI event does not bring the call back.
    ended: RecentlyEnded,
    /// Uniqueids of the last channels that hung up, so that a channel list taken before
    /// their hangup does not bring them back.
    hung_up: RecentlyEnded,
    /// Events handled so far.
    events: u64,
    /// The time the daemon last told ([`Tracker::set_now`]), in seconds.
    now: u64,
    /// Calls changed since the last [`Tracker::take_changes`].
    dirty: HashSet<Box<str>>,
    /// Calls whose record the state dir holds, with a hash of that record, so that an event
    /// that changes nothing a restart needs writes nothing.
    stored: HashMap<Box<str>, u64>,
    /// Whether [`Tracker::take_changes`] is used (the daemon); `replay` leaves it off.
    persisting: bool,
    /// Calls emptied by a re-link during the current event ([`Tracker::end_emptied`]).
    emptied: Vec<Box<str>>,
}

/// The last [`RecentlyEnded::CAPACITY`] keys of something that ended (calls, channels).
#[derive(Debug, Default)]
struct RecentlyEnded {
    order: VecDeque<Box<str>>,
    keys: HashSet<Box<str>>,
}

impl RecentlyEnded {
    const CAPACITY: usize = 4096;

    fn insert(&mut self, key: Box<str>) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// The header prefix of a channel block inside an event (`Dest`, `Target`, ...).
type Prefix = &'static str;

fn header<'a>(msg: &'a AmiMessage, prefix: Prefix, key: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        msg.get(key)
    } else {
        let mut full = String::with_capacity(prefix.len() + key.len());
        full.push_str(prefix);
        full.push_str(key);
        msg.get(&full)
    }
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Self {
            settings,
            channels: HashMap::new(),
            calls: HashMap::new(),
            aliases: HashMap::new(),
            ended: RecentlyEnded::default(),
            hung_up: RecentlyEnded::default(),
            events: 0,
            now: 0,
            dirty: HashSet::new(),
            stored: HashMap::new(),
            persisting: false,
            emptied: Vec::new(),
        }
    }

    /// Calls the tracker follows (reported or not) that still have live channels.
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn active_channels(&self) -> usize {
        self.channels.len()
    }

    /// The dialplan's FastAGI `newcall` claims the call of `claim.linkedid`: its `newCall`
    /// is built now (even before the AMI events of the channel arrive) and the tracker
    /// will not send another one.
    pub fn claim(&mut self, claim: &CallClaim) -> ClaimOutcome {
        self.events += 1;
        let uid: &str = &claim.uniqueid;
        if !self.channels.contains_key(uid) && self.ended.contains(&claim.linkedid) {
            // The call ended on AMI while its FastAGI session was still talking.
            let call_id = CallId(format!(
                "{}{}",
                self.settings.call_id_prefix, claim.linkedid
            ));
            return ClaimOutcome::NotReported(call_id);
        }
        let caller = claim.caller_num.as_deref().filter(|c| !is_withheld(c));
        let key = match self.channels.get_mut(uid) {
            Some(ch) => {
                if let Some(c) = caller {
                    ch.caller_num = Some(c.into());
                }
                ch.withheld = claim.caller_withheld;
                ch.call.clone()
            }
            None => {
                let key = self.call_key_for(&claim.linkedid);
                let call = self.calls.get_mut(&*key).expect("just made");
                call.members.push(uid.into());
                self.channels.insert(
                    uid.into(),
                    Channel::new(
                        claim.channel.as_str().into(),
                        key.clone(),
                        claim.linkedid.as_str().into(),
                        4,
                        caller.map(Into::into),
                        self.events,
                    ),
                );
                if let Some(ch) = self.channels.get_mut(uid) {
                    ch.withheld = claim.caller_withheld;
                }
                key
            }
        };
        self.mark(&key);
        let call_id = CallId(format!("{}{}", self.settings.call_id_prefix, key));
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
        let agent: Option<Box<str>> = match claim.from.as_deref() {
            Some(from) => Some(from.into()),
            None => self.calling_agent(&claim.channel, caller),
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
        call.to = to;
        call.from = from;
        if direction == Direction::Out {
            call.agent = agent;
        }
        if claim.queue.is_some() {
            call.queue = claim.queue.clone();
        }
        call.claimed_users = claim.users.clone();
        let mut out = Vec::with_capacity(1);
        self.report_new_call(&key, &mut out);
        match out.pop() {
            Some(request) => ClaimOutcome::New(request),
            None => ClaimOutcome::NotReported(call_id),
        }
    }

    /// New settings (a SIGHUP reload of `[agents]`, `[calls]`, `[numbers]`): calls under
    /// way keep what Zammad was told; what is decided from now on uses the new ones.
    pub fn set_settings(&mut self, settings: TrackerSettings) {
        self.settings = settings;
    }

    /// Tells the tracker the time (seconds on any fixed scale), for [`Tracker::sweep`].
    /// The tracker reads no clock itself; without this the time stays 0.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// AMI events handled so far; pass it to [`Tracker::reconcile`] as `since` when asking
    /// Asterisk for its channels.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// Turns on change tracking for [`Tracker::take_changes`].
    pub fn persist_changes(&mut self) {
        self.persisting = true;
    }

    /// The call of `key` saw an event: note the time, and that its record changed.
    fn mark(&mut self, key: &str) {
        let exists = match self.calls.get_mut(key) {
            Some(call) => {
                call.last_event_at = self.now;
                true
            }
            None => false,
        };
        if self.persisting && (exists || self.stored.contains_key(key)) && !self.dirty.contains(key)
        {
            self.dirty.insert(key.into());
        }
    }

    /// The reported calls changed since the last call: `Some(record)` to keep, `None` to
    /// forget (the call ended, or is no longer one Zammad hears of).
    pub fn take_changes(&mut self) -> Vec<(String, Option<CallRecord>)> {
        let mut changes = Vec::with_capacity(self.dirty.len());
        for key in std::mem::take(&mut self.dirty) {
            match self.calls.get(&*key).filter(|c| c.reported && !c.ended) {
                Some(call) => {
                    let record = self.record_of(call);
                    let hash = record.fingerprint();
                    if self.stored.insert(key.clone(), hash) != Some(hash) {
                        changes.push((key.to_string(), Some(record)));
                    }
                }
                None => {
                    if self.stored.remove(&*key).is_some() {
                        changes.push((key.to_string(), None));
                    }
                }
            }
        }
        changes
    }

    fn record_of(&self, call: &Call) -> CallRecord {
        CallRecord {
            call_id: call.call_id.clone().expect("reported calls have an id"),
            direction: call.direction.expect("reported calls have a direction"),
            origin: call.origin.clone(),
            from: call.from.clone(),
            to: call.to.clone(),
            queue: call.queue.clone(),
            in_queue: call.in_queue,
            agent: call.agent.clone(),
            legs: call.legs.clone(),
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
                        linkedid: ch.linkedid.clone(),
                        state: ch.state,
                        caller_num: ch.caller_num.clone(),
                    })
                })
                .collect(),
            // To the minute: the sweep needs no more after a restart, and a record then
            // changes only when something a restart needs changes.
            last_event_at: call.last_event_at - call.last_event_at % 60,
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
            let key: Box<str> = key.into();
            let mut call = Call {
                call_id: Some(r.call_id),
                direction: Some(r.direction),
                origin: r.origin,
                from: r.from,
                to: r.to,
                queue: r.queue,
                in_queue: r.in_queue,
                agent: r.agent,
                legs: r.legs,
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
                    Channel::new(
                        ch.name,
                        key.clone(),
                        ch.linkedid,
                        ch.state,
                        ch.caller_num,
                        0,
                    ),
                );
            }
            let nothing_left = call.members.is_empty();
            self.stored.insert(key.clone(), 0);
            self.calls.insert(key.clone(), call);
            if nothing_left {
                self.mark(&key);
                self.report_hangup(&key, out);
                self.calls.remove(&key);
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
        let mut gone: Vec<Box<str>> = self
            .channels
            .iter()
            .filter(|(uid, ch)| ch.seen_at <= since && !present.contains(&***uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        gone.sort();
        for uid in gone {
            self.hang_up_unseen(&uid, out);
        }
        let mut adopted: Vec<Box<str>> = Vec::new();
        for snapshot in live {
            let Some(uid) = snapshot.get("Uniqueid") else {
                continue;
            };
            let known = self.channels.contains_key(uid);
            let linkedid = snapshot.get("Linkedid").unwrap_or(uid);
            if !known && (self.hung_up.contains(uid) || self.ended.contains(linkedid)) {
                // Listed before its hangup reached us: gone already.
                continue;
            }
            self.touch(snapshot, "");
            if !known && let Some(key) = self.call_of(uid) {
                self.adopt(snapshot, uid, &key);
                adopted.push(key);
            }
        }
        adopted.sort();
        adopted.dedup();
        for key in &adopted {
            self.adopt_outbound(key, live, out);
        }
        let keys: Vec<Box<str>> = self.calls.keys().cloned().collect();
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
    }

    /// A call found only in a snapshot whose phone (in an outbound context) has another
    /// channel with it: the dial out happened unseen. Its other channels become its legs;
    /// if the phone is already up in a bridge, the far end answered.
    fn adopt_outbound(&mut self, key: &str, live: &[AmiMessage], out: &mut Vec<CtiRequest>) {
        let Some(call) = self.calls.get(key) else {
            return;
        };
        let Some((origin, _)) = call.out_origin.clone() else {
            return;
        };
        if call.direction.is_some() || call.reported {
            return;
        }
        let others: Vec<Box<str>> = call
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
            call.legs.push(Leg {
                uniqueid: uid,
                extension: None,
                member_name: None,
                alive: true,
            });
        }
        self.make_outbound(key, to_trunk, None, out);
        let up_and_bridged = live.iter().any(|c| {
            c.get("Uniqueid") == Some(&*origin)
                && c.get("ChannelState") == Some("6")
                && c.get("BridgeId").is_some_and(|b| !b.is_empty())
        });
        if up_and_bridged {
            self.report_answer(key, AnsweredBy::Picker { extension: None }, out);
        }
    }

    /// A channel found only in a snapshot: an inbound caller up or ringing in an inbound
    /// context makes its call inbound, as `Newchannel` would have.
    fn adopt(&mut self, snapshot: &AmiMessage, uid: &str, key: &str) {
        let state = snapshot.get("ChannelState").unwrap_or("");
        if state == "6" {
            self.detect_origin(snapshot, uid, key);
        }
    }

    /// For an inbound call whose caller is up and bridged: the extension of the phone in
    /// the same bridge, if any (`Some(None)` when the other party is no known phone).
    fn talking_to(&self, key: &str, live: &[AmiMessage]) -> Option<Option<Box<str>>> {
        let call = self.calls.get(key)?;
        let origin = call.origin.as_deref()?;
        let snap = |uid: &str| live.iter().find(|c| c.get("Uniqueid") == Some(uid));
        let o = snap(origin)?;
        let bridge = o.get("BridgeId").filter(|b| !b.is_empty())?;
        if o.get("ChannelState") != Some("6") {
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
    fn hang_up_unseen(&mut self, uid: &str, out: &mut Vec<CtiRequest>) {
        let Some(ch) = self.channels.get(uid) else {
            return;
        };
        let hangup = AmiMessage::from_pairs([
            ("Event", "Hangup"),
            ("Channel", &*ch.name),
            ("Uniqueid", uid),
            ("Linkedid", &*ch.linkedid),
        ]);
        self.on_hangup(&hangup, out);
    }

    /// Ends the calls that saw no event for longer than `max_age` seconds (by the time of
    /// [`Tracker::set_now`]), as if their channels had hung up.
    pub fn sweep(&mut self, max_age: u64, out: &mut Vec<CtiRequest>) {
        let stale: Vec<Vec<Box<str>>> = self
            .calls
            .values()
            .filter(|c| self.now.saturating_sub(c.last_event_at) > max_age)
            .map(|c| c.members.clone())
            .collect();
        for uid in stale.into_iter().flatten() {
            self.hang_up_unseen(&uid, out);
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

    /// Who places an outbound call from the channel `name` showing caller number `caller`.
    /// Two witnesses: the endpoint in the channel's name (`PJSIP/201-0000002a` → `201`)
    /// and the caller ID, which the dialplan may have rewritten to the trunk's outbound
    /// number before the Dial (FreePBX does) or set to the extension of a phone whose
    /// endpoint is named otherwise (an account id). An agent of `[agents]` wins, then the
    /// caller ID when it is an extension, then the endpoint, then the caller ID as is.
    fn calling_agent(&self, name: &str, caller: Option<&str>) -> Option<Box<str>> {
        let endpoint = self.extension_of(name);
        let known = |n: &str| self.settings.agents.contains_key(n);
        if let Some(c) = caller.filter(|c| known(c)) {
            return Some(c.into());
        }
        if let Some(e) = endpoint.as_deref().filter(|e| known(e)) {
            return Some(e.into());
        }
        if let Some(c) = caller.filter(|c| self.settings.plan.is_extension(c)) {
            return Some(c.into());
        }
        endpoint.or_else(|| caller.map(Into::into))
    }

    /// `from` of an outbound call placed by `agent` (an extension or a number): the
    /// agent's configured `number`, else the number itself, normalised.
    fn outbound_from(&self, agent: &str) -> String {
        match self.settings.agents.get(agent).and_then(AgentEntry::number) {
            Some(n) => n.to_string(),
            None => self.settings.plan.normalise(agent),
        }
    }

    /// Applies one AMI event; appends the CTI requests it causes to `out`, in order.
    pub fn handle(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        let Some(event) = msg.event() else { return };
        self.events += 1;
        match event {
            "Newchannel" | "Newstate" | "NewCallerid" | "Newexten" | "NewConnectedLine" => {
                self.on_channel_update(msg, event, out)
            }
            "DialBegin" => self.on_dial_begin(msg, out),
            "DialState" => self.on_dial_state(msg, out),
            "DialEnd" => self.on_dial_end(msg, out),
            "AgentCalled" => self.on_agent_called(msg),
            "AgentConnect" => self.on_agent_connect(msg, out),
            "QueueCallerJoin" => self.on_queue(msg, true),
            "QueueCallerLeave" => self.on_queue(msg, false),
            "Pickup" => self.on_pickup(msg, out),
            "HangupRequest" => self.on_hangup_request(msg),
            "Hangup" => self.on_hangup(msg, out),
            "BridgeEnter" | "BridgeLeave" | "SoftHangupRequest" | "VarSet" | "Hold" | "Unhold"
            | "MusicOnHoldStart" | "MusicOnHoldStop" => {
                self.touch(msg, "");
            }
            _ => {}
        }
        if !self.emptied.is_empty() {
            self.end_emptied(out);
        }
    }

    /// Creates or refreshes the channel of the block with `prefix`; returns its Uniqueid.
    /// Re-homes the channel when its Linkedid changed.
    fn touch(&mut self, msg: &AmiMessage, prefix: Prefix) -> Option<Box<str>> {
        let uniqueid = header(msg, prefix, "Uniqueid")?;
        let linkedid = header(msg, prefix, "Linkedid").unwrap_or(uniqueid);
        let state = header(msg, prefix, "ChannelState")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let caller = header(msg, prefix, "CallerIDNum").filter(|c| !is_withheld(c));
        let relinked = self
            .channels
            .get(uniqueid)
            .map(|ch| &*ch.linkedid != linkedid);
        let moved_from = match relinked {
            Some(relinked) => {
                let target = relinked.then(|| self.call_key_for(linkedid));
                let ch = self.channels.get_mut(uniqueid).expect("checked above");
                ch.state = state;
                if let Some(c) = caller.filter(|c| ch.caller_num.as_deref() != Some(*c)) {
                    ch.caller_num = Some(c.into());
                }
                match target {
                    Some(target) => {
                        ch.linkedid = linkedid.into();
                        (ch.call != target).then(|| std::mem::replace(&mut ch.call, target))
                    }
                    None => None,
                }
            }
            None => {
                let key = self.call_key_for(linkedid);
                let call = self.calls.get_mut(&*key).expect("just made");
                call.members.push(uniqueid.into());
                self.channels.insert(
                    uniqueid.into(),
                    Channel::new(
                        header(msg, prefix, "Channel").unwrap_or("").into(),
                        key,
                        linkedid.into(),
                        state,
                        caller.map(Into::into),
                        self.events,
                    ),
                );
                None
            }
        };
        let uid: Box<str> = uniqueid.into();
        if let Some(withheld) =
            header(msg, prefix, "CID-CallingPres").and_then(presentation_withholds)
            && let Some(ch) = self.channels.get_mut(&uid)
        {
            ch.withheld = withheld;
        }
        if let Some(old) = moved_from {
            self.mark(&old);
            self.rehome(&uid, &old);
        }
        if let Some(key) = self.call_of(&uid) {
            self.mark(&key);
            self.refresh_caller(&key, &uid);
        }
        let entering = prefix.is_empty()
            && state == 4
            && self.channels.get_mut(&uid).is_some_and(|ch| {
                // A channel enters the dialplan once, when it first reaches Ring. Later
                // snapshots in Ring can show another context: after a masquerade (a
                // blonde transfer moves the transferee into the transferer's place) the
                // hung-up husk carries the other channel's location.
                !std::mem::replace(&mut ch.entered, true)
            });
        if let Some(key) = self.call_of(&uid).filter(|_| entering) {
            self.detect_origin(msg, &uid, &key);
        }
        Some(uid)
    }

    /// Keeps the call's caller number and presentation as its origin channel shows them,
    /// so that they outlive the channel. A number once known is never replaced by none.
    fn refresh_caller(&mut self, key: &str, uid: &str) {
        let (Some(call), Some(ch)) = (self.calls.get_mut(key), self.channels.get(uid)) else {
            return;
        };
        if call.origin.as_deref() != Some(uid) {
            return;
        }
        if let Some(num) = &ch.caller_num {
            call.caller = Some(num.clone());
        }
        call.caller_withheld = ch.withheld;
    }

    /// The key of the call that owns `linkedid` (following merges), created on demand.
    fn call_key_for(&mut self, linkedid: &str) -> Box<str> {
        if let Some(key) = self.aliases.get(linkedid) {
            return key.clone();
        }
        if let Some((key, _)) = self.calls.get_key_value(linkedid) {
            return key.clone();
        }
        let key: Box<str> = linkedid.into();
        self.calls.insert(key.clone(), Call::default());
        key
    }

    /// Moves a channel from call `old` to its new call; an emptied old call is dropped
    /// (a merged consult call) and its Linkedid aliased to the new one.
    fn rehome(&mut self, uniqueid: &str, old: &str) {
        let Some(new) = self.channels.get(uniqueid).map(|c| c.call.clone()) else {
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
    fn end_emptied(&mut self, out: &mut Vec<CtiRequest>) {
        for key in std::mem::take(&mut self.emptied) {
            let Some(call) = self.calls.get(&*key) else {
                continue;
            };
            if !call.members.is_empty() {
                continue;
            }
            self.report_hangup(&key, out);
            self.calls.remove(&*key);
            self.ended.insert(key);
        }
    }

    fn call_of(&self, uniqueid: &str) -> Option<Box<str>> {
        self.channels.get(uniqueid).map(|c| c.call.clone())
    }

    fn on_channel_update(&mut self, msg: &AmiMessage, event: &str, out: &mut Vec<CtiRequest>) {
        let Some(uid) = self.touch(msg, "") else {
            return;
        };
        let Some(key) = self.call_of(&uid) else {
            return;
        };
        match event {
            "Newstate" if msg.get("ChannelState") == Some("5") => {
                self.on_leg_ringing(&key, &uid, out)
            }
            "Newexten" if msg.get("Application") == Some("VoiceMail") => {
                self.on_voicemail(&key, &uid, out)
            }
            _ => {}
        }
    }

    /// A channel in state Ring runs the dialplan as an incoming leg: in an inbound context
    /// it makes its call inbound (it is the external party); the first one in an outbound
    /// context is the phone whose dialed number may make the call outbound.
    fn detect_origin(&mut self, msg: &AmiMessage, uid: &str, key: &str) {
        let dialed = self.channels.get(uid).is_some_and(|c| c.dialed);
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if call.direction.is_some() {
            return;
        }
        let context = msg.get("Context").unwrap_or("");
        let exten = msg.get("Exten").unwrap_or("");
        if self.settings.inbound_contexts.contains(context) {
            if dialed {
                // A leg some Dial requested (an outgoing channel, e.g. to the trunk, whose
                // driver put it in the trunk's inbound context): not a caller.
                return;
            }
            call.direction = Some(Direction::In);
            call.origin = Some(uid.into());
            call.to = if exten.is_empty() || exten == "s" {
                String::new()
            } else {
                self.settings.plan.normalise(exten)
            };
            self.refresh_caller(key, uid);
        } else if call.out_origin.is_none()
            && !exten.is_empty()
            && exten != "s"
            && self.settings.outbound_contexts.contains(context)
        {
            call.out_origin = Some((uid.into(), exten.into()));
        }
    }

    fn is_leg(call: &Call, uid: &str) -> bool {
        call.legs.iter().any(|l| &*l.uniqueid == uid)
    }

    fn on_leg_ringing(&mut self, key: &str, uid: &str, out: &mut Vec<CtiRequest>) {
        let Some(call) = self.calls.get(key) else {
            return;
        };
        if call.direction == Some(Direction::In) && Self::is_leg(call, uid) {
            self.report_new_call(key, out);
        }
    }

    fn on_voicemail(&mut self, key: &str, uid: &str, out: &mut Vec<CtiRequest>) {
        let Some(call) = self.calls.get(key) else {
            return;
        };
        if call.direction != Some(Direction::In) || call.origin.as_deref() != Some(uid) {
            return;
        }
        self.report_new_call(key, out);
        self.report_answer(key, AnsweredBy::Voicemail, out);
    }

    /// The extension behind a channel or interface name: `PJSIP/201-00000a`,
    /// `SIP/201-0a`, `Local/201@phones-0000001;1`, `PJSIP/201` → `201`, if it is one of ours.
    fn extension_of(&self, name: &str) -> Option<Box<str>> {
        let rest = name.split_once('/')?.1;
        let end = rest.find(['@', '-', ';', '/']).unwrap_or(rest.len());
        let ext = &rest[..end];
        (self.settings.agents.contains_key(ext) || self.settings.plan.is_extension(ext))
            .then(|| ext.into())
    }

    /// The dialed channel of a Dial/queue event and the caller's call (both channel blocks
    /// refreshed). `None` without a caller block (Originate, call files): such a dial
    /// belongs to no call yet.
    fn dial_parties(&mut self, msg: &AmiMessage) -> Option<(Box<str>, Box<str>)> {
        let caller = self.touch(msg, "");
        let dest = self.touch(msg, "Dest");
        let key = self.call_of(caller.as_deref()?)?;
        Some((dest?, key))
    }

    fn on_dial_begin(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
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
            call.legs.push(Leg {
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

    /// A channel that dials from an outbound context without having come in there in state
    /// Ring: an originated channel (AMI `Originate`, a call file, a CRM's click-to-dial)
    /// that rang the agent's phone first and, answered, now runs the dialplan. Its dial
    /// makes the call the agent's outbound call, as a phone dialing out would. A channel
    /// that some Dial requested (a leg of another call's routing) is not one.
    fn detect_originated_origin(&mut self, msg: &AmiMessage, caller: &str, key: &str) {
        let dialed = self.channels.get(caller).is_none_or(|c| c.dialed);
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if dialed || call.direction.is_some() || call.out_origin.is_some() {
            return;
        }
        let context = msg.get("Context").unwrap_or("");
        let exten = msg.get("Exten").unwrap_or("");
        if !exten.is_empty() && exten != "s" && self.settings.outbound_contexts.contains(context) {
            call.out_origin = Some((caller.into(), exten.into()));
        }
    }

    /// Outbound: the phone that came in through an outbound context (the call's
    /// `out_origin`) dials out, to an external number or (`to_trunk`) a trunk leg whose
    /// number is `dest_number`.
    fn make_outbound(
        &mut self,
        key: &str,
        to_trunk: bool,
        dest_number: Option<&str>,
        out: &mut Vec<CtiRequest>,
    ) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let Some((origin, dialed)) = call.out_origin.clone() else {
            return;
        };
        let external = !self.settings.plan.is_extension(&dialed);
        if !(external || to_trunk) {
            return;
        }
        let number = if external {
            dialed.to_string()
        } else {
            dest_number.unwrap_or(&dialed).to_string()
        };
        call.direction = Some(Direction::Out);
        call.origin = Some(origin.clone());
        call.to = self.settings.plan.normalise(&number);
        let caller = self
            .channels
            .get(&*origin)
            .and_then(|c| c.caller_num.clone());
        let agent = self
            .channels
            .get(&*origin)
            .and_then(|c| self.calling_agent(&c.name, caller.as_deref()));
        // The number the far end sees: the agent's configured one, else the caller ID
        // the phone's channel presents (which the dialplan may have set to the trunk's
        // outbound number), else the agent's extension.
        let configured = agent
            .as_deref()
            .and_then(|a| self.settings.agents.get(a))
            .and_then(AgentEntry::number);
        let from = match (configured, caller.as_deref()) {
            (Some(number), _) => number.to_string(),
            (None, Some(caller)) => self.settings.plan.normalise(caller),
            (None, None) => self.outbound_from(agent.as_deref().unwrap_or("")),
        };
        let call = self.calls.get_mut(key).expect("checked above");
        call.from = from;
        call.agent = agent;
        self.report_new_call(key, out);
    }

    fn on_dial_state(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
        self.touch(msg, "");
        let Some(dest) = self.touch(msg, "Dest") else {
            return;
        };
        let ringing = matches!(msg.get("DialStatus"), Some("RINGING" | "PROGRESS"));
        if let Some(key) = self.call_of(&dest).filter(|_| ringing) {
            self.on_leg_ringing(&key, &dest, out);
        }
    }

    fn on_dial_end(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
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
            call.legs.push(Leg {
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

    fn on_agent_called(&mut self, msg: &AmiMessage) {
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
            call.queue = Some(q.to_string());
        }
        match call.legs.iter_mut().find(|l| l.uniqueid == dest) {
            Some(leg) => {
                leg.extension = leg.extension.take().or(extension);
                leg.member_name = member_name.map(Into::into);
            }
            None => call.legs.push(Leg {
                uniqueid: dest,
                extension,
                member_name: member_name.map(Into::into),
                alive: true,
            }),
        }
    }

    fn on_agent_connect(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
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
    fn connected_leg(&self, dest: &str) -> Box<str> {
        let mut leg: Box<str> = dest.into();
        // Local pairs nest only as deep as the dialplan goes; the bound keeps a malformed
        // stream from looping.
        for _ in 0..16 {
            let Some(sibling) = self
                .channels
                .get(&leg)
                .and_then(Channel::local_sibling_name)
            else {
                break;
            };
            let inner = self
                .channels
                .iter()
                .find(|(_, c)| *c.name == *sibling)
                .and_then(|(_, c)| c.connected_to.clone());
            match inner {
                Some(next) => leg = next,
                None => break,
            }
        }
        leg
    }

    fn on_queue(&mut self, msg: &AmiMessage, join: bool) {
        let Some(uid) = self.touch(msg, "") else {
            return;
        };
        let Some(key) = self.call_of(&uid) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&*key) else {
            return;
        };
        if join {
            if let Some(q) = msg.get("Queue") {
                call.queue = Some(q.to_string());
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
    fn on_pickup(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
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

    fn on_hangup_request(&mut self, msg: &AmiMessage) {
        let Some(uid) = self.touch(msg, "") else {
            return;
        };
        let Some(key) = self.call_of(&uid) else {
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

    fn on_hangup(&mut self, msg: &AmiMessage, out: &mut Vec<CtiRequest>) {
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
        let key = ch.call;
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
            self.calls.remove(&*key);
            self.aliases.retain(|_, v| **v != *key);
            self.ended.insert(key);
        }
    }

    /// Sends the call's `newCall` if it qualifies and was not sent yet.
    fn report_new_call(&mut self, key: &str, out: &mut Vec<CtiRequest>) {
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
                    call.from.clone()
                } else if withheld {
                    // The caller asked not to be shown: digits the network still passed
                    // on (a masked or partial number) are not the caller's to give away.
                    self.settings.plan.normalise("")
                } else {
                    self.settings.plan.normalise(caller)
                };
                let mut names = call.claimed_users.clone();
                for name in self.ringing_names(call) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                (from, Users::from_names(names))
            }
            Direction::Out => {
                let user = call
                    .agent
                    .as_deref()
                    .and_then(|ext| self.settings.agents.get(ext))
                    .map(|a| a.name().to_string());
                let names = if call.claimed_users.is_empty() {
                    user.into_iter().collect()
                } else {
                    call.claimed_users.clone()
                };
                (call.from.clone(), Users::from_names(names))
            }
        };
        let mut to = call.to.clone();
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
        let call_id = CallId(format!("{}{}", self.settings.call_id_prefix, key));
        let call = self.calls.get_mut(key).expect("checked above");
        if internal {
            call.internal = true;
            return;
        }
        call.reported = true;
        call.from = from;
        call.to = to;
        call.call_id = Some(call_id.clone());
        out.push(CtiRequest {
            event: CtiEventKind::NewCall,
            direction,
            call_id,
            from: call.from.clone(),
            to: call.to.clone(),
            user,
            queue: call.queue.clone(),
            answering_number: None,
            cause: None,
        });
    }

    /// Names of the agents the call rings (or rang), in the order they were dialed.
    fn ringing_names(&self, call: &Call) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        for leg in &call.legs {
            if let Some(name) =
                self.agent_name(leg.extension.as_deref(), leg.member_name.as_deref())
            {
                add(name);
            }
        }
        // Legs of a parallel Dial that exist but were not dialed yet (Down, not the origin).
        for uid in &call.members {
            let Some(ch) = self.channels.get(uid) else {
                continue;
            };
            if ch.state != 0 || call.origin.as_deref() == Some(&**uid) || Self::is_leg(call, uid) {
                continue;
            }
            let ext = self.extension_of(&ch.name);
            if let Some(name) = self.agent_name(ext.as_deref(), None) {
                add(name);
            }
        }
        names
    }

    fn agent_name<'a>(&'a self, ext: Option<&str>, member: Option<&'a str>) -> Option<&'a str> {
        ext.and_then(|e| self.settings.agents.get(e))
            .map(AgentEntry::name)
            .or(member)
    }

    fn report_answer(&mut self, key: &str, by: AnsweredBy, out: &mut Vec<CtiRequest>) {
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
                self.answering(ext, leg.and_then(|l| l.member_name.as_deref()))
            }
            (Direction::In, AnsweredBy::Picker { extension }) => {
                self.answering(extension.as_deref(), None)
            }
        };
        let call = self.calls.get_mut(key).expect("checked above");
        call.answered = true;
        call.outcome.answered = true;
        out.push(CtiRequest {
            event: CtiEventKind::Answer,
            direction,
            call_id: call.call_id.clone().expect("reported calls have an id"),
            from: call.from.clone(),
            to: call.to.clone(),
            user: user.map(Users::One),
            queue: None,
            answering_number,
            cause: None,
        });
    }

    /// `user` and `answeringNumber` for an answer by the agent at `ext`.
    fn answering(
        &self,
        ext: Option<&str>,
        member: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        let agent = ext.and_then(|e| self.settings.agents.get(e));
        let user = agent
            .map(|a| a.name().to_string())
            .or(member.map(str::to_string));
        let number = agent
            .and_then(AgentEntry::number)
            .map(str::to_string)
            .or(ext.map(str::to_string));
        (user, number)
    }

    fn report_hangup(&mut self, key: &str, out: &mut Vec<CtiRequest>) {
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
            from: call.from.clone(),
            to: call.to.clone(),
            user: None,
            queue: None,
            answering_number: None,
            cause: Some(zammad_cause(direction, &call.outcome)),
        });
    }
}

enum AnsweredBy {
    Leg(Box<str>),
    Picker { extension: Option<Box<str>> },
    Voicemail,
}
