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
//!   after logging in. "Reached" means: on a connection whose daemon was not SIGKILLed
//!   within [`SETTLE`] of it (a killed daemon may not have read or stored the last
//!   events). A dropped connection loses nothing that was written before the drop. Such a
//!   call must get exactly one accepted `newCall` and one accepted `hangup`.
//! - **never**: no event of it reached any connection and it was in no list handed out.
//!   Zammad must not hear of it.
//! - **maybe**: the rest. Zammad may hear of it or not, but not half of it.
//!
//! Its answer must reach Zammad when the answering step reached a daemon (as above) that
//! knew the dialed leg by then (it saw the dial, or was listed the ringing leg); a call
//! nobody answered must get no answer.

use asterisk_zammad_bridge::ami::{AmiCodec, AmiMessage};
use asterisk_zammad_bridge::standins::ami::FakeAmi;
use asterisk_zammad_bridge::standins::zammad::{BODY_ALREADY_EXISTS, RecordedRequest};
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
        }
    }

    pub fn expected_cause(self) -> &'static str {
        match self {
            Kind::InboundAnswered | Kind::OutboundAnswered => "normalClearing",
            Kind::InboundCancelled => "cancel",
            Kind::InboundBusy => "busy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::InboundAnswered => "inbound answered",
            Kind::InboundCancelled => "inbound caller gave up",
            Kind::InboundBusy => "inbound busy",
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
            Step::Talked | Step::GiveUp | Step::BusyEnd => false,
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
                0..40 => Kind::InboundAnswered,
                40..60 => Kind::InboundCancelled,
                60..75 => Kind::InboundBusy,
                _ => Kind::OutboundAnswered,
            };
            let mut at = start;
            for (step_index, step) in kind.steps().iter().enumerate() {
                at += Duration::from_millis(match step {
                    Step::Arrive => 0,
                    Step::Dial | Step::DialBusy => rng.u64(20..200),
                    Step::Answer | Step::GiveUp => rng.u64(spec.ring_ms.0..spec.ring_ms.1),
                    Step::Talked => rng.u64(spec.talk_ms.0..spec.talk_ms.1),
                    Step::BusyEnd => rng.u64(100..800),
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
pub struct Player<'a> {
    ami: &'a FakeAmi,
    pub traffic: Traffic,
    next: usize,
    origin: Option<Instant>,
    /// Time the timeline stood still (waiting for a daemon's `CoreShowChannels`).
    paused: Duration,
    logins_seen: usize,
    /// Login number (`FakeAmi::logins`) -> when its daemon was SIGKILLed.
    kills: HashMap<usize, Instant>,
    /// Per login after the first traffic: whether the daemon asked for the live channels.
    pub logins: Vec<(usize, bool)>,
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
            logins_seen: 0,
            kills: HashMap::new(),
            logins: Vec::new(),
            events_sent: 0,
            events_lost: 0,
            vanished: 0,
        }
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

    /// The daemon was just SIGKILLed.
    pub fn killed(&mut self) {
        self.kills
            .entry(self.ami.logins())
            .or_insert_with(Instant::now);
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
            // between the check and the delivery.
            self.next += 1;
            let events = self.traffic.step(call, step, at);
            self.deliver(call, step, events);
        }
        tokio::time::sleep_until(self.deadline(until)).await;
        self.check_login().await;
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

    /// If a daemon logged in since the last look: stop the clock until it has asked for
    /// the live channels (or [`SNAPSHOT_WAIT`] passed), and note which calls it was shown.
    async fn check_login(&mut self) {
        loop {
            let logins = self.ami.logins();
            if logins <= self.logins_seen {
                return;
            }
            self.logins_seen = logins;
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
            if listed {
                let at = Instant::now();
                for call in self.traffic.calls.iter_mut().filter(|c| c.live()) {
                    let reportable = call.kind.inbound() || call.played >= 2;
                    call.sights.push(Sight {
                        pos: 2 * call.played,
                        login: logins,
                        at,
                        reportable,
                    });
                }
            }
            self.logins.push((logins, listed));
            if self.origin.is_some() {
                self.paused += waiting.elapsed();
            }
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
            Some(killed) => *killed >= sight.at + SETTLE,
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

    /// Compares what Zammad got with what the daemon could know.
    pub fn judge(
        &self,
        name: &str,
        requests: &[RecordedRequest],
        violations: &[String],
    ) -> Verdict {
        judge(self, name, requests, violations)
    }
}

/// What Zammad accepted (2xx) for one callId.
#[derive(Debug, Default, Clone)]
struct Accepted {
    new_calls: usize,
    answers: usize,
    hangups: usize,
    cause: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Knowable {
    Certain,
    Maybe,
    Never,
}

/// The counts of one scenario and whether they are what the contract asks.
pub struct Verdict {
    pub report: String,
    pub failures: Vec<String>,
    /// CallIds to look up in the daemon's log when it failed.
    pub examples: Vec<String>,
    pub calls: usize,
}

fn judge(
    player: &Player<'_>,
    name: &str,
    requests: &[RecordedRequest],
    violations: &[String],
) -> Verdict {
    let mut accepted: BTreeMap<String, Accepted> = BTreeMap::new();
    let mut duplicate_new_calls = 0;
    let mut in_flight = 0;
    let mut refused: BTreeMap<u16, usize> = BTreeMap::new();
    for r in requests {
        let (Some(id), Some(event)) = (r.call_id(), r.event()) else {
            continue;
        };
        match r.status {
            None => in_flight += 1,
            Some(200..=299) => {
                let a = accepted.entry(id).or_default();
                match event {
                    "newCall" => a.new_calls += 1,
                    "answer" => a.answers += 1,
                    "hangup" => {
                        a.hangups += 1;
                        a.cause = r.params["cause"].as_str().map(str::to_string);
                    }
                    _ => {}
                }
            }
            Some(500)
                if event == "newCall"
                    && r.response_body.as_deref() == Some(BODY_ALREADY_EXISTS) =>
            {
                duplicate_new_calls += 1;
            }
            Some(status) => *refused.entry(status).or_default() += 1,
        }
    }

    let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut knowable: HashMap<Knowable, usize> = HashMap::new();
    let (mut never_reported, mut half, mut duplicated, mut phantom) =
        (vec![], vec![], vec![], vec![]);
    let (mut answers_missing, mut answers_unexpected) = (vec![], vec![]);
    let (mut fully_seen, mut causes_right, mut wrong_causes) = (0, 0, vec![]);
    let mut played = 0;
    let mut known = std::collections::HashSet::new();
    for call in &player.traffic.calls {
        let Some(id) = &call.id else { continue };
        played += 1;
        known.insert(id.clone());
        *kinds.entry(call.kind).or_default() += 1;
        let kept: Vec<&Sight> = call.sights.iter().filter(|s| player.kept(s)).collect();
        let certain_from = kept.iter().filter(|s| s.reportable).map(|s| s.pos).min();
        let class = if certain_from.is_some() {
            Knowable::Certain
        } else if call.sights.is_empty() {
            Knowable::Never
        } else {
            Knowable::Maybe
        };
        *knowable.entry(class).or_default() += 1;
        let got = accepted.get(id).cloned().unwrap_or_default();
        match class {
            Knowable::Certain if got.new_calls == 0 => never_reported.push(id.clone()),
            Knowable::Never if got.new_calls + got.answers + got.hangups > 0 => {
                phantom.push(id.clone())
            }
            _ => {}
        }
        if got.new_calls > 0 && got.hangups == 0 {
            half.push(id.clone());
        }
        if got.answers > 1 || got.hangups > 1 || got.new_calls > 1 {
            duplicated.push(id.clone());
        }
        if !call.answered && got.answers > 0 {
            answers_unexpected.push(id.clone());
        }
        if call.answered {
            // The answer (step 2) reached a daemon that certainly knew the dialed leg by
            // then: it saw the Dial step (step 1), or was listed the ringing leg after it.
            let answer_seen = kept.iter().any(|s| s.pos == 2 * 2 + 1);
            let leg_known = kept.iter().any(|s| s.pos == 3 || s.pos == 4);
            if answer_seen && leg_known && got.answers == 0 {
                answers_missing.push(id.clone());
            }
        }
        let steps = call.kind.steps().len();
        let all_seen =
            !call.vanished && (0..steps).all(|s| kept.iter().any(|k| k.pos == 2 * s + 1));
        if all_seen && got.hangups > 0 {
            fully_seen += 1;
            if got.cause.as_deref() == Some(call.kind.expected_cause()) {
                causes_right += 1;
            } else {
                wrong_causes.push(format!("{id} ({}: {:?})", call.kind.label(), got.cause));
            }
        }
    }
    for id in accepted.keys().filter(|id| !known.contains(*id)) {
        phantom.push(id.clone());
    }
    let out_of_order: Vec<&String> = violations
        .iter()
        .filter(|v| !v.ends_with(": duplicate newCall"))
        .collect();
    let total = |f: fn(&Accepted) -> usize| accepted.values().map(f).sum::<usize>();

    let mut report = String::new();
    let mix: Vec<String> = kinds
        .iter()
        .map(|(k, n)| format!("{} {n}", k.label()))
        .collect();
    let _ = writeln!(
        report,
        "[{name}] calls played: {played} ({})",
        mix.join(", ")
    );
    let _ = writeln!(
        report,
        "[{name}] AMI: {} events delivered, {} lost while no daemon was connected; {} calls cut off by an Asterisk restart; logins {}, of which asked for CoreShowChannels {}",
        player.events_sent,
        player.events_lost,
        player.vanished,
        player.logins.len(),
        player.logins.iter().filter(|l| l.1).count(),
    );
    let _ = writeln!(
        report,
        "[{name}] the daemon could know: certainly {}, maybe {}, never {}",
        knowable.get(&Knowable::Certain).unwrap_or(&0),
        knowable.get(&Knowable::Maybe).unwrap_or(&0),
        knowable.get(&Knowable::Never).unwrap_or(&0),
    );
    let _ = writeln!(
        report,
        "[{name}] zammad accepted: newCall {}, answer {}, hangup {} (for {} callIds); harmless duplicate newCalls (\"already exists\") {duplicate_new_calls}; refused attempts {refused:?}; still in flight {in_flight}",
        total(|a| a.new_calls),
        total(|a| a.answers),
        total(|a| a.hangups),
        accepted.len(),
    );
    let lost = half.len() + never_reported.len();
    let _ = writeln!(
        report,
        "[{name}] LOST {lost} (newCall but no hangup {}, seen but never reported {}); DUPLICATED {}; OUT OF ORDER {}; phantom {}; answers missing {}, unexpected {}; causes right {causes_right}/{fully_seen} fully seen calls",
        half.len(),
        never_reported.len(),
        duplicated.len(),
        out_of_order.len(),
        phantom.len(),
        answers_missing.len(),
        answers_unexpected.len(),
    );
    let sample = |ids: &[String]| ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let mut failures = Vec::new();
    let mut examples = Vec::new();
    let mut fail = |what: String, ids: &[String]| {
        failures.push(format!("{what}: {}", sample(ids)));
        examples.extend(ids.iter().take(2).cloned());
    };
    if played < 200 {
        fail(format!("only {played} calls played"), &[]);
    }
    if !half.is_empty() {
        fail(
            format!("{} calls got a newCall but no hangup", half.len()),
            &half,
        );
    }
    if !never_reported.is_empty() {
        fail(
            format!(
                "{} calls the daemon saw never reached zammad",
                never_reported.len()
            ),
            &never_reported,
        );
    }
    if !duplicated.is_empty() {
        fail(
            format!(
                "{} calls got a second accepted answer or hangup",
                duplicated.len()
            ),
            &duplicated,
        );
    }
    if !out_of_order.is_empty() {
        let lines: Vec<String> = out_of_order.iter().take(5).map(|v| v.to_string()).collect();
        fail(
            format!(
                "{} breaches of zammad's invariants ({})",
                out_of_order.len(),
                lines.join("; ")
            ),
            &[],
        );
    }
    if !phantom.is_empty() {
        fail(
            format!(
                "{} calls zammad heard of that the daemon could not know",
                phantom.len()
            ),
            &phantom,
        );
    }
    if !answers_missing.is_empty() {
        fail(
            format!(
                "{} answers the daemon saw never reached zammad",
                answers_missing.len()
            ),
            &answers_missing,
        );
    }
    if !answers_unexpected.is_empty() {
        fail(
            format!(
                "{} calls nobody answered got an answer",
                answers_unexpected.len()
            ),
            &answers_unexpected,
        );
    }
    if !wrong_causes.is_empty() {
        let _ = writeln!(
            report,
            "[{name}] (not asserted) fully seen calls with another cause than expected: {}",
            wrong_causes
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Verdict {
        report,
        failures,
        examples,
        calls: played,
    }
}

/// Whether Zammad is done with everything the daemon owes it: every certain call and every
/// call with an accepted newCall has its hangup, and nothing is in flight.
pub fn settled(player: &Player<'_>, requests: &[RecordedRequest]) -> bool {
    let mut new_calls: HashMap<String, usize> = HashMap::new();
    let mut hangups: HashMap<String, usize> = HashMap::new();
    for r in requests {
        let (Some(id), Some(event)) = (r.call_id(), r.event()) else {
            continue;
        };
        match r.status {
            None => return false,
            Some(200..=299) if event == "newCall" => *new_calls.entry(id).or_default() += 1,
            Some(200..=299) if event == "hangup" => *hangups.entry(id).or_default() += 1,
            _ => {}
        }
    }
    if new_calls.keys().any(|id| !hangups.contains_key(id)) {
        return false;
    }
    player.traffic.calls.iter().all(|call| {
        let Some(id) = &call.id else { return true };
        let certain = call.sights.iter().any(|s| s.reportable && player.kept(s));
        !certain || hangups.contains_key(id)
    })
}
