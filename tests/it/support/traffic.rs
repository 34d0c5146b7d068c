//! A PBX in miniature for the fault tests: it plays hundreds of interleaved calls through
//! the scripted AMI peer as a PJSIP Asterisk would report them (docs/asterisk.md, "Typical
//! event sequences"), keeps the list of live channels that `CoreShowChannels` answers with
//! at every moment, and remembers what the daemon could have known of each call, so that
//! what Zammad got can be judged against it.
//!
//! Asterisk does not buffer events for a client that is not connected: an event that
//! happens while no daemon is logged in is gone (`send_raw` refuses it), though the call
//! goes on and its channels show up in, or vanish from, the live list.
//!
//! What the daemon can know of a call, and so what Zammad must get:
//! - **certain**: while the call was reportable (inbound: its trunk channel rings or is up;
//!   outbound: the phone has dialed out), either one of its events that alone makes it
//!   reportable reached a daemon, or a daemon was handed a `CoreShowChannels` list with it
//!   (after logging in, or any later one). "Reached" means: on a connection whose daemon
//!   was not SIGKILLed within the settle time ([`SETTLE`] unless the plan says otherwise)
//!   of it (a killed daemon may not have read or stored the last events). A dropped
//!   connection loses nothing that was written before the drop. Such a call must get
//!   exactly one accepted `newCall` and one accepted `hangup`.
//! - **never**: no event of it reached any connection and it was in no list handed out.
//!   Zammad must not hear of it.
//! - **maybe**: the rest. Zammad may hear of it or not, but not half of it.
//!
//! Its answer must reach Zammad when the answering step reached a daemon (as above) that
//! knew the dialed leg by then (it saw the dial, or was listed the ringing leg), or when
//! an inbound call was listed talking (its caller up in a bridge with the phone); a call
//! nobody answered must get no answer.
//!
//! A SIGKILL can leave an `answer` or `hangup` "in doubt" (docs/persistence.md, "Events
//! in doubt"): its sending had started and the daemon died before it stored the outcome.
//! After the restart the daemon either sends it again or not, by the table there
//! (`resent_in_doubt` here); either side has a cost when the guess is wrong. So, and only
//! where the kills and Zammad's requests show such a doubt, [`Player::judge`] excuses the
//! cost of the side the table takes: a call left open (its hangup not sent again) or an
//! answered call without its answer (shown as missed, if inbound), when its daemon was
//! killed while an attempt of that event was in flight or answered within the settle
//! time, or within the settle time of when the event could first be sent, or at the end
//! of a retry pause after a refused attempt (the next attempt may be marked and not yet
//! out; the pause is docs/zammad.md's 250 ms doubling up to 30 s, stretched by jitter); a
//! second hangup, when the table sends a hangup again and the first was in doubt so. And
//! whatever the table: an `answer` handled after the call's `hangup`, or two requests of
//! one call in flight at once, when one of them was sent by a daemon killed before the
//! other was sent (nobody can recall a request in flight). A live attempt Zammad cut off
//! (reset, or 504) leaves the same doubt, handled or not, and the daemon takes the same
//! side (docs/zammad.md, "Errors and retries"): a second hangup when the first was handled
//! and then cut off, or a call left open when its last hangup was cut off unhandled, is
//! excused on that side only. A second accepted `answer` is allowed: it is sent on purpose
//! when Zammad may have the first. Each excuse is printed with what makes it.

use crate::support::bridge::Run;
use asterisk_zammad_bridge::ami::{AmiCodec, AmiMessage};
use asterisk_zammad_bridge::standins::ami::FakeAmi;
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, LogEntry, RecordedRequest};
use bytes::BytesMut;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

/// How long before a SIGKILL an event (or a channel list) must have been written to the
/// daemon's connection to count as seen: time to read, track and store it.
pub const SETTLE: Duration = Duration::from_millis(500);

/// How long to wait, after a daemon logs in, for its `CoreShowChannels` (traffic pauses
/// meanwhile, so the list it gets is exactly the live channels).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

const AGENTS: [&str; 4] = ["201", "202", "203", "204"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    InboundAnswered,
    /// The caller hangs up while the phone rings.
    InboundCancelled,
    InboundBusy,
    /// Nobody picks up: the dial times out, the caller hears a message and is hung up on.
    InboundUnanswered,
    OutboundAnswered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The first channel: the trunk channel rings (inbound), or a phone goes off-hook
    /// dialing an external number (outbound).
    Arrive,
    /// The other leg is dialed and rings.
    Dial,
    Answer,
    /// One side hangs up, then the other.
    Talked,
    /// The caller hangs up while the leg still rings.
    GiveUp,
    /// The phone is busy; the caller hears the busy tone.
    DialBusy,
    BusyEnd,
    /// The dial times out (NOANSWER); the caller hears a message.
    NoAnswer,
    /// The dialplan hangs up on the caller after the message.
    MessageEnd,
}

impl Kind {
    fn inbound(self) -> bool {
        self != Kind::OutboundAnswered
    }

    fn steps(self) -> &'static [Step] {
        match self {
            Kind::InboundAnswered | Kind::OutboundAnswered => {
                &[Step::Arrive, Step::Dial, Step::Answer, Step::Talked]
            }
            Kind::InboundCancelled => &[Step::Arrive, Step::Dial, Step::GiveUp],
            Kind::InboundBusy => &[Step::Arrive, Step::DialBusy, Step::BusyEnd],
            Kind::InboundUnanswered => {
                &[Step::Arrive, Step::Dial, Step::NoAnswer, Step::MessageEnd]
            }
        }
    }

    pub fn expected_cause(self) -> &'static str {
        match self {
            Kind::InboundAnswered | Kind::OutboundAnswered => "normalClearing",
            Kind::InboundCancelled => "cancel",
            Kind::InboundBusy => "busy",
            Kind::InboundUnanswered => "noAnswer",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::InboundAnswered => "inbound answered",
            Kind::InboundCancelled => "inbound caller gave up",
            Kind::InboundBusy => "inbound busy",
            Kind::InboundUnanswered => "inbound unanswered",
            Kind::OutboundAnswered => "outbound answered",
        }
    }

    /// Whether this step's events alone make the call reportable to a daemon that knew
    /// nothing of it: inbound, the trunk channel's block in state Ring while it lives on;
    /// outbound, the phone's DialBegin to the trunk.
    fn reportable_by(self, step: Step) -> bool {
        match step {
            Step::Arrive | Step::Dial | Step::Answer | Step::DialBusy => {
                self.inbound() || step == Step::Dial
            }
            Step::Talked | Step::GiveUp | Step::BusyEnd | Step::NoAnswer | Step::MessageEnd => {
                false
            }
        }
    }
}

/// How the calls are spread.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    pub calls: usize,
    /// Calls start uniformly within this span of the timeline.
    pub span: Duration,
    /// No call starts within `[from, to)` (Asterisk is down then).
    pub blackout: Option<(Duration, Duration)>,
    /// How long a phone rings before it is answered or the caller gives up (ms).
    pub ring_ms: (u64, u64),
    /// How long an answered call lasts (ms).
    pub talk_ms: (u64, u64),
    pub seed: u64,
    /// Whether the traffic stands still after each login until the daemon has its list
    /// of live channels (then the list shows exactly the channels at the login). Without
    /// it, calls go on meanwhile and their events reach the daemon between its login and
    /// its list, as with a real Asterisk.
    pub pause_at_login: bool,
    /// How long before a SIGKILL an event or list must have reached the daemon to count
    /// as seen, and how soon after an answer from Zammad it must have been killed for
    /// that answer to be maybe unknown to it.
    pub settle: Duration,
    /// Fewer calls played than this fails the judgement.
    pub min_calls: usize,
}

impl PlanSpec {
    /// `calls` calls over `span`, rings of 100-800 ms, talks of 100-1500 ms.
    pub fn new(calls: usize, span: Duration, seed: u64) -> PlanSpec {
        PlanSpec {
            calls,
            span,
            blackout: None,
            ring_ms: (100, 800),
            talk_ms: (100, 1500),
            seed: std::env::var("AZB_FAULTS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(seed),
            pause_at_login: true,
            settle: SETTLE,
            min_calls: 200,
        }
    }
}

/// What the daemon could see of a call at one moment: `pos` orders it against the call's
/// steps (step `s` is `2s + 1`; a list handed out after `s` steps is `2s`).
#[derive(Debug, Clone, Copy)]
struct Sight {
    pos: usize,
    login: usize,
    at: Instant,
    /// It alone makes the call reportable.
    reportable: bool,
}

/// One call of the plan and what became of it.
#[derive(Debug)]
pub struct Call {
    pub kind: Kind,
    agent: &'static str,
    /// Inbound: the caller; outbound: the number dialed.
    number: String,
    did: String,
    origin_hangs_up_first: bool,
    /// The callId: the Linkedid (the first channel's Uniqueid), once it started.
    pub id: Option<String>,
    origin: Option<String>,
    other: Option<String>,
    played: usize,
    /// When each step was played (by a [`Player`]).
    played_at: Vec<Instant>,
    /// Asterisk restarted under it: its channels vanished without events.
    pub vanished: bool,
    answered: bool,
    sights: Vec<Sight>,
}

impl Call {
    fn live(&self) -> bool {
        self.id.is_some() && !self.vanished && self.played < self.kind.steps().len()
    }
}

/// One channel as Asterisk has it.
#[derive(Debug, Clone)]
struct Chan {
    name: String,
    uniqueid: String,
    linkedid: String,
    state: u8,
    caller: String,
    caller_name: String,
    connected: String,
    context: &'static str,
    exten: String,
    app: &'static str,
    app_data: String,
    bridge: Option<String>,
    born: Duration,
}

fn state_desc(state: u8) -> &'static str {
    match state {
        0 => "Down",
        4 => "Ring",
        5 => "Ringing",
        6 => "Up",
        _ => "Unknown",
    }
}

impl Chan {
    fn block(&self, msg: &mut AmiMessage, prefix: &str) {
        let state = self.state.to_string();
        let pairs: [(&str, &str); 14] = [
            ("Channel", &self.name),
            ("ChannelState", &state),
            ("ChannelStateDesc", state_desc(self.state)),
            ("CallerIDNum", &self.caller),
            ("CallerIDName", &self.caller_name),
            ("ConnectedLineNum", &self.connected),
            ("ConnectedLineName", "<unknown>"),
            ("Language", "en"),
            ("AccountCode", ""),
            ("Context", self.context),
            ("Exten", &self.exten),
            ("Priority", "1"),
            ("Uniqueid", &self.uniqueid),
            ("Linkedid", &self.linkedid),
        ];
        for (key, value) in pairs {
            msg.push(&format!("{prefix}{key}"), value);
        }
    }

    /// This channel as a `CoreShowChannel` item (without `Event` and `ActionID`).
    fn listed(&self, now: Duration) -> AmiMessage {
        let mut msg = AmiMessage::new();
        self.block(&mut msg, "");
        msg.push("Application", self.app);
        msg.push("ApplicationData", &self.app_data);
        let secs = now.saturating_sub(self.born).as_secs();
        msg.push(
            "Duration",
            &format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
        );
        msg.push("BridgeId", self.bridge.as_deref().unwrap_or(""));
        msg
    }
}

fn event(name: &str, chan: &Chan) -> AmiMessage {
    let mut msg = AmiMessage::from_pairs([("Event", name), ("Privilege", "call,all")]);
    chan.block(&mut msg, "");
    msg
}

fn dial_event(name: &str, caller: &Chan, dest: &Chan, extra: &[(&str, &str)]) -> AmiMessage {
    let mut msg = event(name, caller);
    dest.block(&mut msg, "Dest");
    for (key, value) in extra {
        msg.push(key, value);
    }
    msg
}

fn bridge_event(name: &str, chan: Option<&Chan>, bridge: &str, members: usize) -> AmiMessage {
    let members = members.to_string();
    let mut msg = AmiMessage::from_pairs([
        ("Event", name),
        ("Privilege", "call,all"),
        ("BridgeUniqueid", bridge),
        ("BridgeType", "basic"),
        ("BridgeTechnology", "simple_bridge"),
        ("BridgeCreator", "<unknown>"),
        ("BridgeName", "<unknown>"),
        ("BridgeNumChannels", &members),
        ("BridgeVideoSourceMode", "none"),
    ]);
    if let Some(chan) = chan {
        chan.block(&mut msg, "");
    }
    msg
}

fn hangup_event(chan: &Chan, cause: u16) -> AmiMessage {
    let mut msg = event("Hangup", chan);
    msg.push("Cause", &cause.to_string());
    msg.push(
        "Cause-txt",
        match cause {
            16 => "Normal Clearing",
            17 => "User busy",
            19 => "User alerting, no answer",
            _ => "Unknown",
        },
    );
    msg
}

fn hangup_request(chan: &Chan) -> AmiMessage {
    let mut msg = event("HangupRequest", chan);
    msg.push("Cause", "16");
    msg
}

/// The calls and the channels of the PBX, without any I/O: steps in, AMI events out.
pub struct Traffic {
    pub calls: Vec<Call>,
    /// (when, call, step), in time order.
    timeline: Vec<(Duration, usize, usize)>,
    epoch: u64,
    seq: u64,
    chans: BTreeMap<String, Chan>,
    now: Duration,
}

impl Traffic {
    pub fn new(spec: &PlanSpec) -> Traffic {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let blackout = spec.blackout.map_or(Duration::ZERO, |(a, b)| b - a);
        let usable = spec.span.saturating_sub(blackout).as_millis() as u64;
        let mut starts: Vec<Duration> = (0..spec.calls)
            .map(|_| {
                let t = Duration::from_millis(rng.u64(0..usable.max(1)));
                match spec.blackout {
                    Some((from, _)) if t >= from => t + blackout,
                    _ => t,
                }
            })
            .collect();
        starts.sort();
        let mut calls = Vec::with_capacity(spec.calls);
        let mut timeline = Vec::new();
        for (index, start) in starts.into_iter().enumerate() {
            let kind = match rng.u32(0..100) {
                0..35 => Kind::InboundAnswered,
                35..52 => Kind::InboundCancelled,
                52..65 => Kind::InboundBusy,
                65..75 => Kind::InboundUnanswered,
                _ => Kind::OutboundAnswered,
            };
            let mut at = start;
            for (step_index, step) in kind.steps().iter().enumerate() {
                at += Duration::from_millis(match step {
                    Step::Arrive => 0,
                    // An outbound call may wait for the FastAGI decision before it dials.
                    Step::Dial if !kind.inbound() => rng.u64(20..1500),
                    Step::Dial | Step::DialBusy => rng.u64(20..200),
                    Step::Answer | Step::GiveUp | Step::NoAnswer => {
                        rng.u64(spec.ring_ms.0..spec.ring_ms.1)
                    }
                    Step::Talked => rng.u64(spec.talk_ms.0..spec.talk_ms.1),
                    Step::BusyEnd | Step::MessageEnd => rng.u64(100..800),
                });
                timeline.push((at, index, step_index));
            }
            let number = if kind.inbound() {
                format!("+1555{:07}", index)
            } else {
                format!("+1646{:07}", index)
            };
            calls.push(Call {
                kind,
                agent: AGENTS[rng.usize(0..AGENTS.len())],
                number,
                did: format!("212555{:04}", index % 10_000),
                origin_hangs_up_first: rng.bool(),
                id: None,
                origin: None,
                other: None,
                played: 0,
                played_at: Vec::new(),
                vanished: false,
                answered: false,
                sights: Vec::new(),
            });
        }
        timeline.sort_by_key(|&(at, call, step)| (at, call, step));
        Traffic {
            calls,
            timeline,
            epoch: 1_900_000_100,
            seq: 0,
            chans: BTreeMap::new(),
            now: Duration::ZERO,
        }
    }

    pub fn end(&self) -> Duration {
        self.timeline.last().map_or(Duration::ZERO, |t| t.0)
    }

    fn new_chan(&mut self, name: impl FnOnce(u64) -> String, linkedid: Option<&str>) -> Chan {
        let seq = self.seq;
        self.seq += 1;
        let uniqueid = format!("{}.{}", self.epoch, seq);
        Chan {
            name: name(seq),
            linkedid: linkedid.unwrap_or(&uniqueid).to_string(),
            uniqueid,
            state: 0,
            caller: "<unknown>".into(),
            caller_name: "<unknown>".into(),
            connected: "<unknown>".into(),
            context: "from-internal",
            exten: "s".into(),
            app: "AppDial",
            app_data: "(Outgoing Line)".into(),
            bridge: None,
            born: self.now,
        }
    }

    fn chan(&self, uniqueid: &Option<String>) -> Chan {
        self.chans[uniqueid.as_deref().expect("the channel exists")].clone()
    }

    fn set(&mut self, chan: &Chan) {
        self.chans.insert(chan.uniqueid.clone(), chan.clone());
    }

    fn remove(&mut self, chan: &Chan) {
        self.chans.remove(&chan.uniqueid);
    }

    /// Plays step `step` of call `index` at timeline time `now`; the events it raises, in
    /// order (none if Asterisk restarted under the call).
    fn step(&mut self, index: usize, step: usize, now: Duration) -> Vec<AmiMessage> {
        self.now = now;
        let call = &self.calls[index];
        if call.vanished {
            return Vec::new();
        }
        assert_eq!(call.played, step, "steps play in order");
        let kind = call.kind;
        let agent = call.agent;
        let number = call.number.clone();
        let did = call.did.clone();
        let mut events = Vec::new();
        match kind.steps()[step] {
            Step::Arrive => {
                let mut chan = if kind.inbound() {
                    let mut t = self.new_chan(|s| format!("PJSIP/trunk-{s:08x}"), None);
                    t.state = 4;
                    t.caller = number.clone();
                    t.caller_name = String::new();
                    t.context = "from-trunk";
                    t.exten = did;
                    t
                } else {
                    let mut p = self.new_chan(|s| format!("PJSIP/{agent}-{s:08x}"), None);
                    p.state = 4;
                    p.caller = agent.into();
                    p.caller_name = agent.into();
                    p.context = "from-internal";
                    p.exten = number.clone();
                    p
                };
                chan.app = "NoOp";
                chan.app_data = String::new();
                events.push(event("Newchannel", &chan));
                self.set(&chan);
                let call = &mut self.calls[index];
                call.id = Some(chan.linkedid.clone());
                call.origin = Some(chan.uniqueid.clone());
            }
            Step::Dial | Step::DialBusy => {
                let mut origin = self.chan(&self.calls[index].origin);
                let mut leg = if kind.inbound() {
                    let mut a =
                        self.new_chan(|s| format!("PJSIP/{agent}-{s:08x}"), Some(&origin.linkedid));
                    a.caller = agent.into();
                    a.caller_name = agent.into();
                    a.connected = number.clone();
                    origin.app_data = format!("PJSIP/{agent},30");
                    a
                } else {
                    let mut o =
                        self.new_chan(|s| format!("PJSIP/trunk-{s:08x}"), Some(&origin.linkedid));
                    o.caller = number.clone();
                    o.caller_name = String::new();
                    o.connected = agent.into();
                    o.context = "from-trunk";
                    origin.app_data = format!("PJSIP/{number}@trunk,60");
                    o
                };
                origin.app = "Dial";
                let dial_string = if kind.inbound() {
                    agent.to_string()
                } else {
                    format!("{number}@trunk")
                };
                events.push(event("Newchannel", &leg));
                events.push(dial_event(
                    "DialBegin",
                    &origin,
                    &leg,
                    &[("DialString", &dial_string)],
                ));
                if kind.steps()[step] == Step::DialBusy {
                    events.push(dial_event(
                        "DialEnd",
                        &origin,
                        &leg,
                        &[("DialStatus", "BUSY")],
                    ));
                    events.push(hangup_event(&leg, 17));
                    origin.app = "Busy";
                    origin.app_data = String::new();
                    self.set(&origin);
                } else {
                    if !kind.inbound() {
                        events.push(dial_event(
                            "DialState",
                            &origin,
                            &leg,
                            &[("DialStatus", "PROGRESS")],
                        ));
                    }
                    leg.state = 5;
                    events.push(event("Newstate", &leg));
                    events.push(dial_event(
                        "DialState",
                        &origin,
                        &leg,
                        &[("DialStatus", "RINGING")],
                    ));
                    self.set(&origin);
                    self.set(&leg);
                    self.calls[index].other = Some(leg.uniqueid.clone());
                }
            }
            Step::Answer => {
                let mut origin = self.chan(&self.calls[index].origin);
                let mut leg = self.chan(&self.calls[index].other);
                leg.state = 6;
                events.push(event("Newstate", &leg));
                events.push(dial_event(
                    "DialEnd",
                    &origin,
                    &leg,
                    &[("DialStatus", "ANSWER")],
                ));
                origin.state = 6;
                events.push(event("Newstate", &origin));
                let bridge = format!(
                    "b0d9e7a4-{:04x}-4c1e-9a3f-{:012x}",
                    self.epoch % 0x1_0000,
                    index
                );
                events.push(bridge_event("BridgeCreate", None, &bridge, 0));
                origin.bridge = Some(bridge.clone());
                events.push(bridge_event("BridgeEnter", Some(&origin), &bridge, 1));
                leg.bridge = Some(bridge.clone());
                events.push(bridge_event("BridgeEnter", Some(&leg), &bridge, 2));
                self.set(&origin);
                self.set(&leg);
                self.calls[index].answered = true;
            }
            Step::Talked => {
                let origin = self.chan(&self.calls[index].origin);
                let leg = self.chan(&self.calls[index].other);
                let bridge = origin.bridge.clone().unwrap_or_default();
                let (first, second) = if self.calls[index].origin_hangs_up_first {
                    (origin, leg)
                } else {
                    (leg, origin)
                };
                events.push(hangup_request(&first));
                events.push(bridge_event("BridgeLeave", Some(&first), &bridge, 1));
                events.push(hangup_event(&first, 16));
                events.push(bridge_event("BridgeLeave", Some(&second), &bridge, 0));
                events.push(hangup_event(&second, 16));
                events.push(bridge_event("BridgeDestroy", None, &bridge, 0));
                self.remove(&first);
                self.remove(&second);
            }
            Step::GiveUp => {
                let origin = self.chan(&self.calls[index].origin);
                let leg = self.chan(&self.calls[index].other);
                events.push(hangup_request(&origin));
                events.push(dial_event(
                    "DialEnd",
                    &origin,
                    &leg,
                    &[("DialStatus", "CANCEL")],
                ));
                events.push(hangup_event(&leg, 16));
                events.push(hangup_event(&origin, 16));
                self.remove(&origin);
                self.remove(&leg);
            }
            Step::BusyEnd => {
                let origin = self.chan(&self.calls[index].origin);
                events.push(hangup_event(&origin, 17));
                self.remove(&origin);
            }
            Step::NoAnswer => {
                let mut origin = self.chan(&self.calls[index].origin);
                let leg = self.chan(&self.calls[index].other);
                events.push(dial_event(
                    "DialEnd",
                    &origin,
                    &leg,
                    &[("DialStatus", "NOANSWER")],
                ));
                events.push(hangup_event(&leg, 19));
                self.remove(&leg);
                origin.app = "Playback";
                origin.app_data = "vm-nobodyavail".into();
                self.set(&origin);
            }
            Step::MessageEnd => {
                let origin = self.chan(&self.calls[index].origin);
                events.push(hangup_event(&origin, 16));
                self.remove(&origin);
            }
        }
        self.calls[index].played += 1;
        events
    }

    /// The live channels as `CoreShowChannels` lists them.
    fn listed(&self) -> Vec<AmiMessage> {
        self.chans.values().map(|c| c.listed(self.now)).collect()
    }

    /// Asterisk restarts: every channel is gone without an event; uniqueids start over
    /// under a new epoch. Returns how many calls were cut off.
    fn restart(&mut self) -> usize {
        let mut cut = 0;
        for call in self.calls.iter_mut().filter(|c| c.live()) {
            call.vanished = true;
            cut += 1;
        }
        self.chans.clear();
        self.epoch += 1000;
        self.seq = 0;
        cut
    }

    /// Every event of every call in timeline order, with no fault: what a daemon that
    /// sees everything sees.
    pub fn all_events(&mut self) -> Vec<AmiMessage> {
        let timeline = self.timeline.clone();
        timeline
            .into_iter()
            .flat_map(|(at, call, step)| self.step(call, step, at))
            .collect()
    }
}

/// Plays a [`Traffic`] in real time through the scripted AMI peer, while the test injects
/// faults between `play_until` calls.
///
/// It must run on a current-thread runtime (`#[tokio::test]`'s default), with the
/// stand-ins: then nothing of theirs runs while a step is played, and a channel list a
/// daemon was handed shows the channels as they were when the player last looked.
pub struct Player<'a> {
    ami: &'a FakeAmi,
    pub traffic: Traffic,
    next: usize,
    origin: Option<Instant>,
    /// Time the timeline stood still (waiting for a daemon's `CoreShowChannels`).
    paused: Duration,
    pause_at_login: bool,
    settle: Duration,
    min_calls: usize,
    logins_seen: usize,
    /// Login number (`FakeAmi::logins`) -> when its daemon was SIGKILLed.
    kills: HashMap<usize, Instant>,
    /// The first login of the daemon process running now (earlier ones were killed).
    process_first_login: usize,
    /// Per login after the first traffic: whether the daemon asked for the live channels.
    pub logins: Vec<(usize, bool)>,
    /// Channel lists handed out so far, and when each was noticed (with the login it came
    /// on).
    lists_seen: usize,
    lists: Vec<(usize, Instant)>,
    pub events_sent: usize,
    pub events_lost: usize,
    pub vanished: usize,
}

impl<'a> Player<'a> {
    pub fn new(ami: &'a FakeAmi, spec: &PlanSpec) -> Player<'a> {
        Player {
            ami,
            traffic: Traffic::new(spec),
            next: 0,
            origin: None,
            paused: Duration::ZERO,
            pause_at_login: spec.pause_at_login,
            settle: spec.settle,
            min_calls: spec.min_calls,
            logins_seen: 0,
            kills: HashMap::new(),
            process_first_login: 1,
            logins: Vec::new(),
            lists_seen: 0,
            lists: Vec::new(),
            events_sent: 0,
            events_lost: 0,
            vanished: 0,
        }
    }

    /// Calls started so far.
    pub fn started(&self) -> usize {
        self.traffic.calls.iter().filter(|c| c.id.is_some()).count()
    }

    /// Waits (up to `timeout`) until a daemon is logged in, and lets it have its list of
    /// live channels. False if none logged in.
    pub async fn wait_connected(&mut self, timeout: Duration) -> bool {
        let logged_in = tokio::time::timeout(timeout, self.ami.wait_logged_in())
            .await
            .is_ok();
        self.check_login().await;
        logged_in
    }

    /// The daemon was just SIGKILLed: what reached it on any of its connections within
    /// the settle time may be lost.
    pub fn killed(&mut self) {
        let now = Instant::now();
        let current = self.ami.logins();
        for login in self.process_first_login..=current {
            self.kills.entry(login).or_insert(now);
        }
        self.process_first_login = current + 1;
    }

    /// The AMI connection drops (the daemon stays up and reconnects).
    pub async fn drop_ami(&mut self) -> bool {
        self.check_login().await;
        self.ami.drop_connection()
    }

    /// Asterisk restarts: the connection drops and every channel is gone when it comes
    /// back. Returns how many calls were cut off.
    pub async fn asterisk_restart(&mut self) -> usize {
        self.check_login().await;
        self.ami.drop_connection();
        let cut = self.traffic.restart();
        self.vanished += cut;
        self.ami.set_channels(Vec::new());
        cut
    }

    pub fn end(&self) -> Duration {
        self.traffic.end()
    }

    fn deadline(&mut self, at: Duration) -> Instant {
        let origin = *self.origin.get_or_insert_with(Instant::now);
        origin + self.paused + at
    }

    /// Plays every step up to timeline time `until`, in real time.
    pub async fn play_until(&mut self, until: Duration) {
        while let Some(&(at, call, step)) = self.traffic.timeline.get(self.next) {
            if at > until {
                break;
            }
            tokio::time::sleep_until(self.deadline(at)).await;
            self.check_login().await;
            // From here to the end of the step nothing awaits: the daemon cannot log in
            // or be handed a list between the check and the delivery.
            self.observe_lists();
            self.next += 1;
            let events = self.traffic.step(call, step, at);
            if !events.is_empty() {
                self.traffic.calls[call].played_at.push(Instant::now());
            }
            self.deliver(call, step, events);
        }
        tokio::time::sleep_until(self.deadline(until)).await;
        self.check_login().await;
        self.observe_lists();
    }

    pub async fn play_to_end(&mut self) {
        let end = self.end();
        self.play_until(end).await;
    }

    fn deliver(&mut self, call: usize, step: usize, events: Vec<AmiMessage>) {
        if events.is_empty() {
            return;
        }
        let mut buf = BytesMut::new();
        let mut codec = AmiCodec::new();
        for e in &events {
            codec.encode(e, &mut buf).expect("encode an event");
        }
        if self.ami.send_raw(buf.freeze()) {
            self.events_sent += events.len();
            let kind = self.traffic.calls[call].kind;
            let sight = Sight {
                pos: 2 * step + 1,
                login: self.ami.logins(),
                at: Instant::now(),
                reportable: kind.reportable_by(kind.steps()[step]),
            };
            self.traffic.calls[call].sights.push(sight);
        } else {
            self.events_lost += events.len();
        }
        self.ami.set_channels(self.traffic.listed());
    }

    /// If a daemon logged in since the last look: unless the plan says otherwise, stop
    /// the clock until it has asked for the live channels (or [`SNAPSHOT_WAIT`] passed).
    async fn check_login(&mut self) {
        loop {
            let logins = self.ami.logins();
            if logins <= self.logins_seen {
                return;
            }
            self.logins_seen = logins;
            if !self.pause_at_login {
                self.logins.push((logins, false));
                continue;
            }
            let waiting = Instant::now();
            let listed = loop {
                if self.listed_since_last_login() {
                    break true;
                }
                if waiting.elapsed() >= SNAPSHOT_WAIT {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            self.observe_lists();
            self.logins.push((logins, listed));
            if self.origin.is_some() {
                self.paused += waiting.elapsed();
            }
        }
    }

    /// Notes the channel lists handed out since the last look, and which calls each
    /// showed: the channels as they are now, since nothing was played meanwhile.
    fn observe_lists(&mut self) {
        let lists = self.ami.lists();
        if lists <= self.lists_seen {
            return;
        }
        let login = self.ami.logins();
        let at = Instant::now();
        for _ in self.lists_seen..lists {
            self.lists.push((login, at));
        }
        self.lists_seen = lists;
        if let Some(entry) = self.logins.iter_mut().find(|l| l.0 == login) {
            entry.1 = true;
        }
        for call in self.traffic.calls.iter_mut().filter(|c| c.live()) {
            let reportable = call.kind.inbound() || call.played >= 2;
            call.sights.push(Sight {
                pos: 2 * call.played,
                login,
                at,
                reportable,
            });
        }
    }

    /// A `CoreShowChannels` came after the last `Login`.
    fn listed_since_last_login(&self) -> bool {
        let actions = self.ami.actions();
        let is = |a: &AmiMessage, name: &str| {
            a.get("Action")
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        };
        match actions.iter().rposition(|a| is(a, "Login")) {
            Some(i) => actions[i + 1..].iter().any(|a| is(a, "CoreShowChannels")),
            None => false,
        }
    }

    /// Whether a sight reached a daemon that kept it.
    fn kept(&self, sight: &Sight) -> bool {
        match self.kills.get(&sight.login) {
            Some(killed) => *killed >= sight.at + self.settle,
            None => true,
        }
    }

    /// What the daemons were shown of the call `id`, for failure messages: its kind, and
    /// each step (`step N`) or channel list (`listed after N steps`) that reached a
    /// connection, with the login it reached and whether that daemon kept it.
    pub fn describe(&self, id: &str) -> String {
        let Some(call) = self
            .traffic
            .calls
            .iter()
            .find(|c| c.id.as_deref() == Some(id))
        else {
            return "not a call of the plan".into();
        };
        let sights: Vec<String> = call
            .sights
            .iter()
            .map(|s| {
                let what = if s.pos % 2 == 1 {
                    format!("step {} {:?}", s.pos / 2, call.kind.steps()[s.pos / 2])
                } else {
                    format!("listed after {} steps", s.pos / 2)
                };
                let kept = if self.kept(s) { "" } else { ", maybe not kept" };
                format!("{what} (login {}{kept})", s.login)
            })
            .collect();
        format!(
            "{}{}; shown: {}",
            call.kind.label(),
            if call.vanished {
                ", cut off by the Asterisk restart"
            } else {
                ""
            },
            if sights.is_empty() {
                "nothing".to_string()
            } else {
                sights.join(", ")
            }
        )
    }

    /// Compares what Zammad got with what the daemon could know. `runs` are the daemon's
    /// processes, for the doubts a SIGKILL leaves (see the module doc).
    pub fn judge(&self, name: &str, zammad: &FakeZammad, runs: &[Run]) -> Verdict {
        judge(self, name, zammad, runs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Knowable {
    Certain,
    Maybe,
    Never,
}

/// What one run came to, call by call. A callId in a list breaks the contract unless the
/// list says "in doubt", where it comes with the reason (the kill that excuses it).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub calls: usize,
    pub kinds: BTreeMap<Kind, usize>,
    pub certain: usize,
    pub maybe: usize,
    pub never: usize,
    /// Calls a daemon certainly saw that Zammad never heard of.
    pub lost: Vec<String>,
    /// Calls Zammad heard of that no daemon could know.
    pub phantom: Vec<String>,
    /// Calls with a `newCall` and no `hangup` in Zammad.
    pub left_open: Vec<String>,
    pub left_open_in_doubt: Vec<(String, String)>,
    /// Calls with a second `hangup` applied.
    pub duplicated_hangups: Vec<String>,
    pub duplicated_hangups_in_doubt: Vec<(String, String)>,
    /// Breaches of Zammad's order rules (the stand-in's violations, other than the
    /// duplicates counted above), one line each.
    pub out_of_order: Vec<String>,
    /// The calls of `out_of_order`, for their histories in a failure.
    pub out_of_order_calls: Vec<String>,
    pub out_of_order_in_doubt: Vec<String>,
    /// Inbound calls answered at the PBX that Zammad shows as missed, although a daemon
    /// saw the answer.
    pub answered_as_missed: Vec<String>,
    /// The same, where no daemon could see the answer.
    pub answered_as_missed_unknowable: usize,
    /// Answered inbound calls shown as missed because their answer was in doubt at a
    /// kill and so not sent again.
    pub answered_as_missed_in_doubt: Vec<(String, String)>,
    /// Answered outbound calls without their answer, in doubt at a kill likewise.
    pub answers_missing_in_doubt: Vec<(String, String)>,
    /// Outbound calls answered, seen answered by a daemon, without an answer in Zammad.
    pub answers_missing: Vec<String>,
    /// Calls nobody answered that got an answer.
    pub answers_unexpected: Vec<String>,
    /// Calls with a second answer applied (allowed: sent on purpose when in doubt).
    pub second_answers: usize,
    /// `newCall`s refused with "already exists" (harmless: an earlier attempt got there).
    pub duplicate_new_calls: usize,
    /// Requests answered by status (0: connection reset), and of those how many Zammad
    /// handled before a fault replaced the answer.
    pub statuses: BTreeMap<u16, usize>,
    pub handled_then_failed: usize,
    pub in_flight: usize,
    pub fully_seen: usize,
    pub causes_right: usize,
    pub wrong_causes: Vec<String>,
    /// What the run put the daemon through: outbound calls whose dial only a channel
    /// list showed (its `DialBegin` lost in an AMI gap), calls with events that reached a
    /// daemon between its login and its channel list, and answers and hangups whose
    /// daemon was killed while they were in flight (or just answered).
    pub outbound_dial_only_listed: usize,
    pub seen_before_list: usize,
    pub in_doubt_at_kill: BTreeMap<String, usize>,
}

impl Tally {
    /// Left open, duplicated hangups and out of order, with the ones in doubt.
    fn counts(&self) -> String {
        format!(
            "LOST {}, DUPLICATED HANGUPS {} (+{} in doubt), OUT OF ORDER {} (+{} in doubt), LEFT OPEN {} (+{} in doubt), ANSWERED SHOWN AS MISSED {} (+{} in doubt, +{} the daemon could not know); outbound answers missing in doubt {}",
            self.lost.len(),
            self.duplicated_hangups.len(),
            self.duplicated_hangups_in_doubt.len(),
            self.out_of_order.len(),
            self.out_of_order_in_doubt.len(),
            self.left_open.len(),
            self.left_open_in_doubt.len(),
            self.answered_as_missed.len(),
            self.answered_as_missed_in_doubt.len(),
            self.answered_as_missed_unknowable,
            self.answers_missing_in_doubt.len(),
        )
    }
}

/// The counts of one scenario and whether they are what the contract asks.
pub struct Verdict {
    pub report: String,
    pub failures: Vec<String>,
    /// CallIds to look up in the daemon's log when it failed.
    pub examples: Vec<String>,
    pub calls: usize,
    pub tally: Tally,
    /// What Zammad got of the example calls and of a few excused ones, request by request.
    pub histories: BTreeMap<String, String>,
}

/// The outbox's pause after the `attempt`-th failed attempt of an event, before jitter
/// (docs/zammad.md, "Errors and retries": 250 ms, doubling up to 30 s).
fn retry_pause(attempt: usize) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(7);
    (Duration::from_millis(250) * 2u32.pow(doublings)).min(Duration::from_secs(30))
}

/// What the daemon processes were doing, as Zammad and the player saw it.
struct Runs<'r> {
    runs: &'r [Run],
    settle: Duration,
}

impl Runs<'_> {
    /// The process that sent a request Zammad received at `t`: the last one started
    /// before (a killed process's bytes still in flight arrive before the next start).
    fn of(&self, t: Instant) -> usize {
        self.runs.iter().rposition(|r| r.started <= t).unwrap_or(0)
    }

    fn during(&self, run: usize, t: Instant) -> bool {
        t >= self.runs[run].started && self.runs.get(run + 1).is_none_or(|next| t < next.started)
    }

    fn killed(&self) -> impl Iterator<Item = (usize, Instant)> + '_ {
        self.runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.killed.map(|k| (i, k)))
    }

    /// Whether a request sent by a killed process was in flight when it was killed, or
    /// answered so shortly before that the process may not have stored the outcome.
    fn open_at_kill(&self, r: &RecordedRequest) -> Option<Duration> {
        let killed = self.runs[self.of(r.received_at)].killed?;
        match r.answered_at {
            None => Some(Duration::ZERO),
            Some(answered) if answered >= killed => Some(Duration::ZERO),
            Some(answered) if answered + self.settle >= killed => Some(killed - answered),
            Some(_) => None,
        }
    }
}

/// Whether the daemon sends an event again after a restart when its sending had started
/// (docs/persistence.md, "Events in doubt": the cheaper side of each doubt). `missed`: an
/// inbound call nobody answered, as Zammad has it. Everything is sent again but the
/// `hangup` of a missed call.
fn resent_in_doubt(event: &str, missed: bool) -> bool {
    !(event == "hangup" && missed)
}

/// Why `event` ("answer" or "hangup") of `call` may have been in doubt at a kill (its
/// sending started and its outcome not stored), if it may have: see the module doc.
fn in_doubt(
    player: &Player<'_>,
    call: &Call,
    requests: &[&RecordedRequest],
    runs: &Runs<'_>,
    event: &str,
) -> Option<String> {
    let settle = runs.settle;
    // The step that makes the event: the answer, or the call's last step.
    let step = match event {
        "answer" => 2,
        _ => call.kind.steps().len() - 1,
    };
    let made = *call.played_at.get(step)?;
    for (run, killed) in runs.killed() {
        if made > killed {
            continue;
        }
        let mine: Vec<&RecordedRequest> = requests
            .iter()
            .copied()
            .filter(|r| runs.during(run, r.received_at))
            .collect();
        let attempts: Vec<&RecordedRequest> = mine
            .iter()
            .copied()
            .filter(|r| r.event() == Some(event))
            .collect();
        if let Some(gap) = attempts.iter().filter_map(|h| runs.open_at_kill(h)).min() {
            return Some(format!(
                "daemon #{} killed {} ms after zammad answered its {event} (0: in flight)",
                run + 1,
                gap.as_millis()
            ));
        }
        let Some(last) = attempts.last() else {
            // Before its first attempt: the sending mark may be written, the request not
            // yet out. It could be sent from the latest of: the daemon's start, a step or
            // channel list that reached it, the answer to the call's previous request.
            let started = runs.runs[run].started;
            let seen = call.sights.iter().map(|s| s.at);
            let listed = player.lists.iter().map(|l| l.1);
            let answered = mine.iter().filter_map(|r| r.answered_at);
            let ready = [started, made]
                .into_iter()
                .chain(seen)
                .chain(listed)
                .chain(answered)
                .filter(|t| *t <= killed && (*t == made || runs.during(run, *t)))
                .max()
                .unwrap_or(started);
            if killed <= ready + settle {
                return Some(format!(
                    "daemon #{} killed {} ms after it could first send the {event}",
                    run + 1,
                    (killed - ready).as_millis()
                ));
            }
            continue;
        };
        // Between attempts: once the pause after a refused attempt is over, the next one
        // is marked before it goes out.
        if let (None, Some(answered)) = (last.handled, last.answered_at)
            && answered <= killed
        {
            let pause = retry_pause(attempts.len());
            if killed >= answered + pause / 2 && killed <= answered + pause * 2 + settle {
                return Some(format!(
                    "daemon #{} killed {} ms into a retry pause of about {} ms",
                    run + 1,
                    (killed - answered).as_millis(),
                    pause.as_millis()
                ));
            }
        }
    }
    None
}

fn judge(player: &Player<'_>, name: &str, zammad: &FakeZammad, runs: &[Run]) -> Verdict {
    let runs = Runs {
        runs,
        settle: player.settle,
    };
    let requests = zammad.requests();
    let logs: HashMap<String, LogEntry> = zammad
        .calls()
        .into_iter()
        .map(|e| (e.call_id.clone(), e))
        .collect();
    let mut by_call: HashMap<String, Vec<&RecordedRequest>> = HashMap::new();
    let mut tally = Tally::default();
    for r in &requests {
        match r.status {
            None => tally.in_flight += 1,
            Some(status) => {
                *tally.statuses.entry(status).or_default() += 1;
                if r.handled.is_some() && r.handled != Some(status) {
                    tally.handled_then_failed += 1;
                }
            }
        }
        if let Some(id) = r.call_id() {
            by_call.entry(id).or_default().push(r);
        }
    }
    let none: Vec<&RecordedRequest> = Vec::new();

    let mut known = std::collections::HashSet::new();
    for call in &player.traffic.calls {
        let Some(id) = &call.id else { continue };
        tally.calls += 1;
        known.insert(id.clone());
        *tally.kinds.entry(call.kind).or_default() += 1;
        let kept: Vec<&Sight> = call.sights.iter().filter(|s| player.kept(s)).collect();
        let class = if kept.iter().any(|s| s.reportable) {
            Knowable::Certain
        } else if call.sights.is_empty() {
            Knowable::Never
        } else {
            Knowable::Maybe
        };
        match class {
            Knowable::Certain => tally.certain += 1,
            Knowable::Maybe => tally.maybe += 1,
            Knowable::Never => tally.never += 1,
        }
        let entry = logs.get(id);
        let requests = by_call.get(id).unwrap_or(&none);
        match (class, entry) {
            (Knowable::Certain, None) => tally.lost.push(id.clone()),
            (Knowable::Never, Some(_)) => tally.phantom.push(id.clone()),
            _ => {}
        }
        let Some(entry) = entry else { continue };
        // Zammad's view when the first hangup came: an answer after it is ignored.
        let missed = entry.direction == "in" && !entry.answered;
        let doubt = |event: &str| {
            (!resent_in_doubt(event, missed))
                .then(|| in_doubt(player, call, requests, &runs, event))
                .flatten()
        };
        // A live attempt the daemon could not judge: Zammad cut the connection or
        // answered 504, having handled the request or not.
        let cut_off = |r: &RecordedRequest| matches!(r.status, Some(0 | 504));
        if !entry.hungup {
            let last = requests.iter().rev().find(|r| r.event() == Some("hangup"));
            let live_doubt = (!resent_in_doubt("hangup", missed))
                .then_some(last)
                .flatten()
                .filter(|r| cut_off(r))
                .map(|r| {
                    format!(
                        "its last hangup was cut off ({}) unhandled: the daemon could not know",
                        r.status.unwrap_or_default()
                    )
                });
            match doubt("hangup").or(live_doubt) {
                Some(why) => tally.left_open_in_doubt.push((id.clone(), why)),
                None => tally.left_open.push(id.clone()),
            }
        }
        if entry.hangups > 1 {
            let accepted: Vec<&RecordedRequest> = requests
                .iter()
                .copied()
                .filter(|r| r.event() == Some("hangup") && matches!(r.handled, Some(200..=299)))
                .collect();
            let last_run = accepted.iter().map(|r| runs.of(r.received_at)).max();
            let doubt = accepted
                .iter()
                .filter(|h| Some(runs.of(h.received_at)) < last_run)
                .filter_map(|h| runs.open_at_kill(h))
                .min();
            // Or the first was handled and then cut off, so its daemon sent it again.
            let first_cut_off = accepted
                .iter()
                .take(accepted.len().saturating_sub(1))
                .find(|r| cut_off(r))
                .map(|r| r.status.unwrap_or_default());
            match (doubt, first_cut_off) {
                (Some(gap), _) if resent_in_doubt("hangup", missed) => {
                    tally.duplicated_hangups_in_doubt.push((
                        id.clone(),
                        format!(
                            "its daemon was killed {} ms after zammad answered the first",
                            gap.as_millis()
                        ),
                    ))
                }
                (_, Some(status)) if resent_in_doubt("hangup", missed) => {
                    tally.duplicated_hangups_in_doubt.push((
                        id.clone(),
                        format!("zammad handled the first, then cut it off ({status})"),
                    ))
                }
                _ => tally.duplicated_hangups.push(id.clone()),
            }
        }
        if entry.answers > 1 {
            tally.second_answers += 1;
        }
        if !call.answered && entry.answers > 0 {
            tally.answers_unexpected.push(id.clone());
        }
        if call.answered && entry.answers == 0 {
            // The answer (step 2) reached a daemon that certainly knew the dialed leg by
            // then: it saw the Dial step (step 1), or was listed the ringing leg after
            // it; or an inbound call was listed talking (after step 2).
            let answer_seen = kept.iter().any(|s| s.pos == 2 * 2 + 1);
            let leg_known = kept.iter().any(|s| s.pos == 3 || s.pos == 4);
            let listed_talking = call.kind.inbound() && kept.iter().any(|s| s.pos == 2 * 3);
            let knowable = (answer_seen && leg_known) || listed_talking;
            if !knowable {
                if call.kind.inbound() {
                    tally.answered_as_missed_unknowable += 1;
                }
            } else if let Some(why) = doubt("answer") {
                if call.kind.inbound() {
                    tally.answered_as_missed_in_doubt.push((id.clone(), why));
                } else {
                    tally.answers_missing_in_doubt.push((id.clone(), why));
                }
            } else if call.kind.inbound() {
                tally.answered_as_missed.push(id.clone());
            } else {
                tally.answers_missing.push(id.clone());
            }
        }
        let steps = call.kind.steps().len();
        let all_seen =
            !call.vanished && (0..steps).all(|s| kept.iter().any(|k| k.pos == 2 * s + 1));
        if all_seen && entry.hungup {
            tally.fully_seen += 1;
            if entry.comment.as_deref() == Some(call.kind.expected_cause()) {
                tally.causes_right += 1;
            } else {
                tally.wrong_causes.push(format!(
                    "{id} ({}: {:?})",
                    call.kind.label(),
                    entry.comment
                ));
            }
        }
    }
    for call in &player.traffic.calls {
        let kept = |s: &&Sight| player.kept(s);
        if !call.kind.inbound()
            && call.sights.iter().filter(kept).any(|s| s.pos == 1)
            && !call.sights.iter().any(|s| s.pos == 3)
            && call.sights.iter().filter(kept).any(|s| s.pos == 4)
        {
            tally.outbound_dial_only_listed += 1;
        }
        let before_list = call.sights.iter().any(|s| {
            s.pos % 2 == 1
                && player
                    .lists
                    .iter()
                    .find(|l| l.0 == s.login)
                    .is_some_and(|l| l.1 > s.at)
        });
        if before_list {
            tally.seen_before_list += 1;
        }
    }
    for r in &requests {
        if let Some(event) = r.event()
            && event != "newCall"
            && runs.open_at_kill(r).is_some()
        {
            *tally.in_doubt_at_kill.entry(event.to_string()).or_default() += 1;
        }
    }
    for id in logs.keys().filter(|id| !known.contains(*id)) {
        tally.phantom.push(id.clone());
    }
    for v in zammad.violation_log() {
        let r = &requests[v.seq];
        let line = format!("callId {:?}: {}", v.call_id, v.what);
        let requests = by_call.get(&v.call_id).unwrap_or(&none);
        let excused = match v.what.as_str() {
            // Counted above.
            "duplicate newCall" => {
                tally.duplicate_new_calls += 1;
                continue;
            }
            "second answer" | "second hangup" => continue,
            // An answer sent by a daemon killed before the hangup was sent.
            "answer after hangup" => requests.iter().any(|h| {
                h.event() == Some("hangup")
                    && matches!(h.handled, Some(200..=299))
                    && runs.of(r.received_at) < runs.of(h.received_at)
            }),
            // One of them sent by a daemon killed before the other was sent.
            "two requests of one call in flight at the same time" => requests.iter().any(|o| {
                o.seq != r.seq
                    && o.received_at <= r.received_at
                    && o.answered_at.is_none_or(|a| a > r.received_at)
                    && runs.of(o.received_at) < runs.of(r.received_at)
            }),
            _ => false,
        };
        if excused {
            tally.out_of_order_in_doubt.push(line);
        } else {
            tally.out_of_order.push(line);
            tally.out_of_order_calls.push(v.call_id.clone());
        }
    }
    let history = |id: &str| {
        let origin = runs
            .runs
            .first()
            .map_or(requests[0].received_at, |r| r.started);
        let at = |t: Instant| t.saturating_duration_since(origin).as_secs_f64();
        let lines: Vec<String> = by_call
            .get(id)
            .unwrap_or(&none)
            .iter()
            .map(|r| {
                let status = match (r.status, r.handled) {
                    (None, _) => "in flight".to_string(),
                    (Some(0), Some(h)) => format!("{h} then reset"),
                    (Some(s), Some(h)) if s != h => format!("{h} then {s}"),
                    (Some(s), None) => format!("{s} unhandled"),
                    (Some(s), Some(_)) => s.to_string(),
                };
                format!(
                    "{} {status} (daemon #{}, {:.3}-{} s)",
                    r.event().unwrap_or("?"),
                    runs.of(r.received_at) + 1,
                    at(r.received_at),
                    r.answered_at.map_or("".into(), |a| format!("{:.3}", at(a))),
                )
            })
            .collect();
        let kills: Vec<String> = runs
            .killed()
            .map(|(i, k)| format!("#{} {:.3} s", i + 1, at(k)))
            .collect();
        format!(
            "zammad got: {}; kills: {}",
            lines.join(", "),
            kills.join(", ")
        )
    };
    let mut wanted: Vec<&String> = Vec::new();
    for ids in [
        &tally.lost,
        &tally.left_open,
        &tally.duplicated_hangups,
        &tally.phantom,
        &tally.answered_as_missed,
        &tally.answers_missing,
        &tally.answers_unexpected,
    ] {
        wanted.extend(ids.iter().take(2));
    }
    for excused in [
        &tally.left_open_in_doubt,
        &tally.answered_as_missed_in_doubt,
        &tally.answers_missing_in_doubt,
        &tally.duplicated_hangups_in_doubt,
    ] {
        wanted.extend(excused.iter().take(3).map(|(id, _)| id));
    }
    let histories = wanted
        .into_iter()
        .map(|id| (id.clone(), history(id)))
        .collect();
    let mut verdict = report(player, name, tally);
    verdict.histories = histories;
    verdict
}

fn report(player: &Player<'_>, name: &str, tally: Tally) -> Verdict {
    let mut report = String::new();
    let mix: Vec<String> = tally
        .kinds
        .iter()
        .map(|(k, n)| format!("{} {n}", k.label()))
        .collect();
    let _ = writeln!(
        report,
        "[{name}] calls played: {} ({})",
        tally.calls,
        mix.join(", ")
    );
    let _ = writeln!(
        report,
        "[{name}] AMI: {} events delivered, {} lost while no daemon was connected; {} calls cut off by an Asterisk restart; logins {}, channel lists {} (after a login {})",
        player.events_sent,
        player.events_lost,
        player.vanished,
        player.logins.len(),
        player.lists.len(),
        player.logins.iter().filter(|l| l.1).count(),
    );
    let _ = writeln!(
        report,
        "[{name}] the daemon could know: certainly {}, maybe {}, never {}",
        tally.certain, tally.maybe, tally.never,
    );
    let _ = writeln!(
        report,
        "[{name}] exercised: {} outbound calls whose dial only a channel list showed, {} calls with events between a login and its list, answers and hangups in flight at a SIGKILL {:?}",
        tally.outbound_dial_only_listed, tally.seen_before_list, tally.in_doubt_at_kill,
    );
    let _ = writeln!(
        report,
        "[{name}] zammad answered {:?} (0: reset; {} of them after handling the request); still in flight {}; harmless duplicate newCalls (\"already exists\") {}; calls with a second answer {}",
        tally.statuses,
        tally.handled_then_failed,
        tally.in_flight,
        tally.duplicate_new_calls,
        tally.second_answers,
    );
    let _ = writeln!(
        report,
        "[{name}] {}; phantom {}; answers missing (outbound) {}, unexpected {}; causes right {}/{} fully seen calls",
        tally.counts(),
        tally.phantom.len(),
        tally.answers_missing.len(),
        tally.answers_unexpected.len(),
        tally.causes_right,
        tally.fully_seen,
    );
    let some = |lines: Vec<String>| {
        let n = lines.len();
        let mut shown: Vec<String> = lines.into_iter().take(3).collect();
        if n > shown.len() {
            shown.push(format!("and {} more", n - shown.len()));
        }
        shown.join("; ")
    };
    if !tally.left_open_in_doubt.is_empty() {
        let lines = tally
            .left_open_in_doubt
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        let _ = writeln!(
            report,
            "[{name}] calls left open, their hangup in doubt (a SIGKILL, or cut off) and not sent again (excused): {}",
            some(lines)
        );
    }
    if !tally.answered_as_missed_in_doubt.is_empty() || !tally.answers_missing_in_doubt.is_empty() {
        let lines = tally
            .answered_as_missed_in_doubt
            .iter()
            .chain(&tally.answers_missing_in_doubt)
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        let _ = writeln!(
            report,
            "[{name}] answered calls without their answer, in doubt at a SIGKILL and not sent again (excused): {}",
            some(lines)
        );
    }
    if !tally.duplicated_hangups_in_doubt.is_empty() {
        let lines = tally
            .duplicated_hangups_in_doubt
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        let _ = writeln!(
            report,
            "[{name}] calls hung up twice, the first in doubt (a SIGKILL, or cut off; excused): {}",
            some(lines)
        );
    }
    if !tally.out_of_order_in_doubt.is_empty() {
        let _ = writeln!(
            report,
            "[{name}] out of order by a request of a killed daemon still in flight (excused): {}",
            some(tally.out_of_order_in_doubt.clone())
        );
    }
    let sample = |ids: &[String]| ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let mut failures = Vec::new();
    let mut examples = Vec::new();
    let mut fail = |what: String, ids: &[String]| {
        failures.push(format!("{what}: {}", sample(ids)));
        examples.extend(ids.iter().take(2).cloned());
    };
    if tally.calls < player.min_calls {
        fail(format!("only {} calls played", tally.calls), &[]);
    }
    let lists: [(&[String], &str); 7] = [
        (&tally.lost, "calls the daemon saw never reached zammad"),
        (&tally.left_open, "calls got a newCall but no hangup"),
        (
            &tally.duplicated_hangups,
            "calls got a second hangup (not in doubt at a kill)",
        ),
        (
            &tally.phantom,
            "calls zammad heard of that the daemon could not know",
        ),
        (
            &tally.answered_as_missed,
            "answered inbound calls shown as missed, though the daemon saw the answer",
        ),
        (
            &tally.answers_missing,
            "answered outbound calls without their answer, though the daemon saw it",
        ),
        (
            &tally.answers_unexpected,
            "calls nobody answered got an answer",
        ),
    ];
    for (ids, what) in lists {
        if !ids.is_empty() {
            fail(format!("{} {what}", ids.len()), ids);
        }
    }
    if !tally.out_of_order.is_empty() {
        let lines: Vec<String> = tally.out_of_order.iter().take(5).cloned().collect();
        fail(
            format!(
                "{} breaches of zammad's order rules ({})",
                tally.out_of_order.len(),
                lines.join("; ")
            ),
            &tally.out_of_order_calls,
        );
    }
    if !tally.wrong_causes.is_empty() {
        let _ = writeln!(
            report,
            "[{name}] (not asserted) fully seen calls with another cause than expected: {}",
            sample(&tally.wrong_causes)
        );
    }
    Verdict {
        report,
        failures,
        examples,
        calls: tally.calls,
        tally,
        histories: BTreeMap::new(),
    }
}

/// Whether Zammad is done with everything the daemon owes it: nothing in flight, every
/// call in the caller log hung up, every certain call hung up.
pub fn settled(player: &Player<'_>, zammad: &FakeZammad) -> bool {
    if zammad.activity().in_flight > 0 || !zammad.open_calls().is_empty() {
        return false;
    }
    let hung_up = zammad.hung_up();
    player.traffic.calls.iter().all(|call| {
        let Some(id) = &call.id else { return true };
        let certain = call.sights.iter().any(|s| s.reportable && player.kept(s));
        !certain || hung_up.contains(id)
    })
}
