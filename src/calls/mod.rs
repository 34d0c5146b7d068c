//! The call model: a pure state machine, AMI events in, CTI requests out.
//!
//! Owns what is happening on the PBX as Asterisk itself describes it: channels by
//! Uniqueid, calls keyed by the Linkedid of their first channel (the callId), who dialed
//! whom (`DialBegin`/`DialEnd` with their `DialStatus`), who was connected to whom (the
//! caller's own answered dial, a queue's `AgentConnect`, a `Pickup`), and caller-ID
//! presentation. It decides when Zammad hears `newCall`, `answer` and `hangup`, and what
//! they say. It does no I/O and reads no clock: the daemon and `replay` feed it the same
//! events and get the same requests.
//!
//! The rules, each a statement about that model (docs/calls.md tells them for users):
//! - **Origin.** A channel enters the dialplan once, when it first reaches state Ring:
//!   Asterisk creates incoming channels so, and outgoing ones (what a `Dial` or `Originate`
//!   requests) go Down → Ringing → Up. The first channel of a call that enters in an
//!   `inbound_contexts` context is the call's *origin*, the external party, and makes the
//!   call **inbound** ([`direction`]).
//! - **Outbound.** A channel that entered in an `outbound_contexts` context, or an
//!   originated channel that dials from one (click-to-call), dials a number that is not an
//!   internal extension, or a leg whose name matches `trunk_channel`. The calling agent is
//!   the endpoint in the channel's name or its caller ID, whichever names an agent.
//! - **Answer.** The external party is connected to someone: the origin's own `DialEnd
//!   ANSWER` (followed through Local channel pairs to the leg that answered), its queue's
//!   `AgentConnect`, a `Pickup` of one of its legs, or voicemail on the origin. An inner
//!   leg that answers and is dropped before the caller's dial ends is no answer
//!   ([`connections`]).
//! - **Hangup.** Inbound when the origin's channel is gone; outbound when neither the
//!   origin nor any dialed leg is left; any reported call when its last channel is gone,
//!   by hangup or by moving to another call ([`channels`]). The cause comes from the
//!   caller's side (`policy::cause`).
//! - **Transfers and pickups.** A channel whose Linkedid changes (bridges adopt the
//!   oldest Linkedid) moves to the call that owns the new one; callIds never change.
//! - **From.** The origin's caller number, kept after its channel is gone; `anonymous`
//!   when its presentation withholds it, or when there is none. A known number is never
//!   replaced by none.
//!
//! Besides AMI events it takes: FastAGI claims ([`Tracker::claim`], in [`claims`]: the
//! dialplan announces a call, whose `newCall` goes out at once and only once), the calls
//! the state dir kept ([`Tracker::restore`], with [`Tracker::take_changes`] feeding it),
//! Asterisk's channel list after a (re)connect ([`Tracker::reconcile`]: vanished channels
//! hang up, unknown ones are adopted), the time ([`Tracker::set_now`]) for
//! [`Tracker::sweep`] (all in [`recovery`]), and new settings on SIGHUP
//! ([`Tracker::set_settings`]). What Zammad is told is built in [`report`].

pub mod cause;
mod channels;
mod claims;
mod connections;
pub mod decision;
mod direction;
mod model;
pub mod number;
mod recovery;
mod report;

pub use claims::{CallClaim, ClaimOutcome, DecisionTarget};
pub use recovery::CallRecord;

use crate::ami::AmiMessage;
use crate::calls::number::NumberPlan;
use crate::config::{AgentEntry, CallsConfig, Config};
use crate::zammad::cti::CtiRequest;
pub(crate) use model::ShortStr;
use model::{Call, Channel, RecentlyEnded};
use regex::Regex;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The tracker's maps, keyed by Asterisk's Uniqueids and Linkedids: looked up several
/// times per event, so hashed with foldhash (seeded per process) rather than SipHash,
/// whose resistance to chosen keys buys nothing against ids the PBX makes.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

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
    /// Builds the settings from a loaded config, whose patterns are compiled already.
    pub fn from_config(config: &Config) -> Self {
        let calls: &CallsConfig = &config.calls;
        Self {
            plan: NumberPlan::new(&config.numbers, calls.extension_pattern.regex().clone()),
            inbound_contexts: calls.inbound_contexts.iter().cloned().collect(),
            outbound_contexts: calls.outbound_contexts.iter().cloned().collect(),
            trunk_channel: calls.trunk_channel.clone().map(Regex::from),
            agents: config.agents.clone(),
            call_id_prefix: config.zammad.call_id_prefix.clone(),
        }
    }
}

/// The call state machine. Feed it every AMI event with [`Tracker::handle`].
#[derive(Debug)]
pub struct Tracker {
    settings: TrackerSettings,
    /// Channels and calls are boxed: a map keeps room for up to twice its entries, and
    /// that room costs a pointer per slot rather than a whole channel (184 bytes) or call.
    channels: FastMap<ShortStr, Box<Channel>>,
    calls: FastMap<ShortStr, Box<Call>>,
    /// Linkedids adopted by a call other than their own (after merges), to that call's key.
    aliases: FastMap<ShortStr, ShortStr>,
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
    dirty: FastSet<ShortStr>,
    /// Calls gone from `calls` while the state dir held their record ([`Call::stored`]):
    /// the next [`Tracker::take_changes`] tells to forget it.
    gone_stored: FastSet<ShortStr>,
    /// Whether [`Tracker::take_changes`] is used (the daemon); `replay` leaves it off.
    persisting: bool,
    /// Calls emptied by a re-link during the current event ([`Tracker::end_emptied`]).
    emptied: Vec<ShortStr>,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Self {
            settings,
            channels: FastMap::default(),
            calls: FastMap::default(),
            aliases: FastMap::default(),
            ended: RecentlyEnded::default(),
            hung_up: RecentlyEnded::default(),
            events: 0,
            now: 0,
            dirty: FastSet::default(),
            gone_stored: FastSet::default(),
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

    /// Removes the call of `key` from the calls followed (it ended, or was emptied): if the
    /// state dir holds its record, the next [`Tracker::take_changes`] tells to forget it.
    pub(super) fn remove_call(&mut self, key: &str) {
        if let Some((key, call)) = self.calls.remove_entry(key)
            && call.stored.is_some()
            && self.persisting
        {
            self.gone_stored.insert(key.clone());
            self.note_change(&key, false);
        }
    }

    /// The call of `key` saw an event: note the time, and that its record changed.
    pub(super) fn mark(&mut self, key: &str) {
        let exists = match self.calls.get_mut(key) {
            Some(call) => {
                call.last_event_at = self.now;
                true
            }
            None => false,
        };
        self.note_change(key, exists);
    }

    /// The record of the call of `key` (which `exists`, or ended) may have changed.
    pub(super) fn note_change(&mut self, key: &str, exists: bool) {
        if self.persisting
            && (exists || self.gone_stored.contains(key))
            && !self.dirty.contains(key)
        {
            self.dirty.insert(key.into());
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
            "VarSet" => self.on_var_set(msg),
            "BridgeEnter" | "BridgeLeave" | "SoftHangupRequest" | "Hold" | "Unhold"
            | "MusicOnHoldStart" | "MusicOnHoldStop" => {
                self.touch_quiet(msg);
            }
            _ => {}
        }
        if !self.emptied.is_empty() {
            self.end_emptied(out);
        }
    }
}
