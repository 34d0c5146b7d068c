//! The model the rules read: a channel (one Uniqueid), a leg dialed on a call's behalf,
//! a call (the channels sharing its Linkedid), and the small helpers to read AMI channel
//! blocks. Plain data: the rules that change it live beside it in `calls`.

use super::FastSet;
use crate::ami::AmiMessage;
use crate::calls::cause::CallOutcome;
use crate::zammad::cti::{CallId, Direction};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The tracker's short texts: Uniqueids and call keys above all, also channel names,
/// numbers and extensions. Up to 24 bytes (every Uniqueid Asterisk makes, most names) are
/// kept in place, so a map lookup compares a key in its own slot rather than following a
/// pointer to it (a cache miss per lookup, several lookups per event), and copying one
/// allocates nothing; longer ones live on the heap. Serialized as a plain string.
pub(crate) type ShortStr = compact_str::CompactString;

/// One channel (Uniqueid) as far as call tracking needs it.
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) name: ShortStr,
    /// Key of the call this channel belongs to ([`Channel::relink`] changes it).
    call: ShortStr,
    /// The Linkedid last seen on this channel, when it is not the call's key (a channel
    /// moved into another call, or born under a Linkedid its call took over): most
    /// channels' Linkedid is their call's key, and then it costs 8 bytes here, not 24
    /// ([`Channel::linkedid`]).
    other_linkedid: Option<Box<ShortStr>>,
    pub(super) state: ChannelState,
    pub(super) caller_num: Option<ShortStr>,
    /// The channel's caller-ID name (`CallerIDName`; never `<unknown>` or empty): on a
    /// phone's own channel, the name of whoever uses it.
    pub(super) caller_name: Option<ShortStr>,
    /// The caller's presentation says the number is not to be shown (`CID-CallingPres`
    /// restricted or unavailable).
    pub(super) withheld: bool,
    /// Another channel's `Dial` requested this channel (the Dest of a `DialBegin` with a
    /// caller): an outgoing leg, never a call's incoming origin.
    pub(super) dialed: bool,
    /// FreePBX's `AMPUSER` on this channel (`VarSet`): the calling extension as FreePBX's
    /// `macro-user-callerid` decided it; cleared when it found no internal user. Boxed:
    /// only the channels `macro-user-callerid` ran on have one (a phone's own, on FreePBX),
    /// and 8 bytes here instead of 24 keep a channel in a 160-byte allocation.
    ampuser: Option<Box<ShortStr>>,
    /// The channel reached state Ring (entered the dialplan as an incoming channel).
    pub(super) entered: bool,
    /// The channel this one's own dial (or queue) connected it to: the Dest of its
    /// `DialEnd ANSWER`, or of its `AgentConnect`.
    pub(super) connected_to: Option<ShortStr>,
    /// The tracker's event count when the channel was first seen (0: restored).
    pub(super) seen_at: u64,
    /// The channel was first seen in its own `Newchannel`: everything it did since
    /// came through events. A channel first seen in any later event (or a list) was
    /// born while we were not looking.
    pub(super) born_seen: bool,
}

impl Channel {
    pub(super) fn new(
        name: ShortStr,
        call: ShortStr,
        linkedid: ShortStr,
        state: ChannelState,
        caller_num: Option<ShortStr>,
        seen_at: u64,
        born_seen: bool,
    ) -> Self {
        Self {
            name,
            other_linkedid: (linkedid != call).then(|| Box::new(linkedid)),
            call,
            state,
            caller_num,
            caller_name: None,
            withheld: false,
            dialed: false,
            ampuser: None,
            entered: state == ChannelState::Ring && seen_at == 0,
            connected_to: None,
            seen_at,
            born_seen,
        }
    }

    /// Key of the call this channel belongs to.
    pub(super) fn call(&self) -> &ShortStr {
        &self.call
    }

    /// The Linkedid last seen on this channel.
    pub(super) fn linkedid(&self) -> &str {
        self.other_linkedid.as_deref().unwrap_or(&self.call)
    }

    /// The channel shows `linkedid` now and belongs to the call `call`: returns the key of
    /// the call it left, if it changed.
    pub(super) fn relink(&mut self, linkedid: &str, call: ShortStr) -> Option<ShortStr> {
        self.other_linkedid = (linkedid != &*call).then(|| Box::new(linkedid.into()));
        (call != self.call).then(|| std::mem::replace(&mut self.call, call))
    }

    /// FreePBX's `AMPUSER` on this channel.
    pub(super) fn ampuser(&self) -> Option<&str> {
        self.ampuser.as_deref().map(ShortStr::as_str)
    }

    /// Sets (or, with `None`, clears) FreePBX's `AMPUSER` on this channel.
    pub(super) fn set_ampuser(&mut self, ampuser: Option<&str>) {
        self.ampuser = ampuser.map(|a| Box::new(a.into()));
    }

    /// The caller-ID name of the phone at extension `ext`, when this channel presents
    /// itself as that phone (its caller-ID number is `ext`): `"Alice" <201>` on the channel
    /// of 201 gives `Alice`. A channel showing another number (an outside caller's ID
    /// copied onto a phone's leg, a rewritten outbound caller ID) gives no name.
    pub(super) fn name_at(&self, ext: &str) -> Option<&str> {
        (self.caller_num.as_deref() == Some(ext))
            .then_some(self.caller_name.as_deref())
            .flatten()
    }

    /// The other half of a Local channel pair (`Local/x@ctx-0000001a;1` ⇄ `…;2`): Asterisk
    /// names both halves alike, with `;1` on the side the requester dialed and `;2` on the
    /// side that runs the dialplan (core/local channel driver, `local_alloc`).
    pub(super) fn local_sibling_name(&self) -> Option<String> {
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

/// A channel's state, as Asterisk's `enum ast_channel_state` (`include/asterisk/channelstate.h`)
/// numbers it in AMI's `ChannelState`. Incoming channels are created in `Ring`; outgoing
/// ones (requested by a Dial or an Originate) in `Down`, then `Ringing`, then `Up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelState {
    Down,
    Ring,
    Ringing,
    Up,
    /// Reserved, off hook, dialing, busy, pre-ring: nothing the rules read.
    Other(u8),
}

impl ChannelState {
    pub(super) fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Down,
            4 => Self::Ring,
            5 => Self::Ringing,
            6 => Self::Up,
            other => Self::Other(other),
        }
    }

    /// The state of a channel block (`ChannelState` with `prefix`); `Down` when absent.
    pub(super) fn of(msg: &AmiMessage, prefix: Prefix) -> Self {
        Self::from_code(
            header(msg, prefix, "ChannelState")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        )
    }

    pub(super) fn code(self) -> u8 {
        match self {
            Self::Down => 0,
            Self::Ring => 4,
            Self::Ringing => 5,
            Self::Up => 6,
            Self::Other(code) => code,
        }
    }
}

/// One leg dialed (or called by a queue) on behalf of a call.
#[derive(Debug, Clone, PartialEq, Hash, Serialize, Deserialize)]
pub(super) struct Leg {
    pub(super) uniqueid: ShortStr,
    /// The agent's extension, if the leg goes to an internal phone.
    pub(super) extension: Option<ShortStr>,
    /// A display name from the queue (`MemberName`), used when `[agents]` has none. Boxed
    /// (queue calls only): a leg of 72 bytes takes 80 of the heap, one of 80 takes 96.
    pub(super) member_name: Option<Box<str>>,
    pub(super) alive: bool,
}

#[derive(Debug, Default)]
pub(super) struct Call {
    pub(super) call_id: Option<CallId>,
    pub(super) direction: Option<Direction>,
    /// Inbound: the external party's channel. Outbound: the dialing phone's channel.
    pub(super) origin: Option<ShortStr>,
    /// The first channel that entered the dialplan in an outbound context, and the number
    /// it dialed there: the call becomes outbound when that number is dialed out.
    /// Boxed: set only while an outbound call is deciding, it would cost every call 48
    /// bytes in place.
    pub(super) out_origin: Option<Box<(ShortStr, ShortStr)>>,
    pub(super) from: ShortStr,
    pub(super) to: ShortStr,
    /// Inbound: the caller's number as the origin channel last showed it (kept when the
    /// channel is gone), and whether its presentation withholds it.
    pub(super) caller: Option<ShortStr>,
    pub(super) caller_withheld: bool,
    /// The queue the call waited in. A boxed `str` (16 bytes, not a `String`'s 24) and
    /// the boxed claimed users below keep the call at 264 bytes: a 272-byte allocation,
    /// where 280 bytes took 288.
    pub(super) queue: Option<Box<str>>,
    pub(super) in_queue: bool,
    /// Outbound: the calling agent's extension.
    pub(super) agent: Option<ShortStr>,
    /// Inbound: who rings, as the dialplan told the FastAGI `newcall` (`user=`); only
    /// claimed calls have them, so they are boxed (a pointer here).
    #[expect(
        clippy::box_collection,
        reason = "a pointer in every call (8 bytes) for a list only claimed calls have"
    )]
    pub(super) claimed_users: Option<Box<Vec<String>>>,
    pub(super) legs: Box<[Leg]>,
    /// Both ends are internal: never reported.
    pub(super) internal: bool,
    pub(super) reported: bool,
    pub(super) answered: bool,
    pub(super) ended: bool,
    pub(super) outcome: CallOutcome,
    /// Uniqueids of this call's channels still alive.
    pub(super) members: Vec<ShortStr>,
    /// How many times one of its channels took a new Linkedid while in this call: with
    /// `members` (a channel's name never changes), what tells that the channels a
    /// restart needs changed, without reading each one.
    pub(super) relinks: u32,
    /// The time ([`Tracker::set_now`]) of the call's last event.
    pub(super) last_event_at: u64,
    /// A hash of the record the state dir holds for the call ([`Tracker::take_changes`]),
    /// so that an event that changes nothing a restart needs writes nothing; `None` while
    /// it holds none. Not zero, so that the option takes no room of its own.
    pub(super) stored: Option<std::num::NonZeroU64>,
}

impl Call {
    /// Adds a leg. The list is exactly as long as its legs (most calls have one or two; a
    /// list grown the usual way would hold room for four, 320 bytes), and a boxed slice
    /// rather than a `Vec` (no capacity: 8 bytes less in every call). Legs come a few per
    /// call, so copying them on each is nothing.
    pub(super) fn add_leg(&mut self, leg: Leg) {
        let mut legs = std::mem::take(&mut self.legs).into_vec();
        legs.reserve_exact(1);
        legs.push(leg);
        self.legs = legs.into_boxed_slice();
    }

    /// The minute of the call's last event: what its journal record keeps of that time
    /// (the sweep needs no more after a restart, and the record changes once a minute at
    /// most for it).
    pub(super) fn last_event_minute(&self) -> u64 {
        self.last_event_at / 60
    }

    /// Keeps the caller number and presentation as the origin channel `uid` shows them
    /// (`num`, `withheld`), so that they outlive the channel; another channel's are not
    /// the caller's. A number once known is never replaced by none.
    pub(super) fn show_caller(&mut self, uid: &str, num: Option<&ShortStr>, withheld: bool) {
        if self.origin.as_deref() != Some(uid) {
            return;
        }
        if let Some(num) = num.filter(|n| self.caller.as_ref() != Some(*n)) {
            self.caller = Some(num.clone());
        }
        self.caller_withheld = withheld;
    }
}

/// The last [`RecentlyEnded::CAPACITY`] keys of something that ended (calls, channels).
#[derive(Debug, Default)]
pub(super) struct RecentlyEnded {
    pub(super) order: VecDeque<ShortStr>,
    pub(super) keys: FastSet<ShortStr>,
}

impl RecentlyEnded {
    pub(super) const CAPACITY: usize = 4096;

    pub(super) fn insert(&mut self, key: ShortStr) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
        }
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// The header prefix of a channel block inside an event (`Dest`, `Target`, ...).
pub(super) type Prefix = &'static str;

/// What the tracker reads of one channel block (`prefix` + `Channel`, `Uniqueid`, ...),
/// taken in one pass over the event's headers rather than a scan per header: every event
/// refreshes at least one channel. As [`header`]: names compared ignoring ASCII case, the
/// first occurrence wins.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ChannelBlock<'a> {
    pub(super) channel: Option<&'a str>,
    pub(super) uniqueid: Option<&'a str>,
    pub(super) linkedid: Option<&'a str>,
    pub(super) state: Option<&'a str>,
    pub(super) caller_num: Option<&'a str>,
    pub(super) caller_name: Option<&'a str>,
    pub(super) calling_pres: Option<&'a str>,
}

impl<'a> ChannelBlock<'a> {
    pub(super) fn read(msg: &'a AmiMessage, prefix: Prefix) -> Self {
        let mut block = Self::default();
        let p = prefix.len();
        for (key, value) in msg.iter() {
            if key.len() <= p || !key.is_char_boundary(p) || !key[..p].eq_ignore_ascii_case(prefix)
            {
                continue;
            }
            let name = &key[p..];
            let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
            let slot = match name.len() {
                7 if is("Channel") => &mut block.channel,
                8 if is("Uniqueid") => &mut block.uniqueid,
                8 if is("Linkedid") => &mut block.linkedid,
                11 if is("CallerIDNum") => &mut block.caller_num,
                12 if is("ChannelState") => &mut block.state,
                12 if is("CallerIDName") => &mut block.caller_name,
                15 if is("CID-CallingPres") => &mut block.calling_pres,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        block
    }

    /// The block's state (`ChannelState`); `Down` when absent, as [`ChannelState::of`].
    pub(super) fn state(&self) -> ChannelState {
        ChannelState::from_code(self.state.and_then(|s| s.parse().ok()).unwrap_or(0))
    }
}

pub(super) fn header<'a>(msg: &'a AmiMessage, prefix: Prefix, key: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return msg.get(key);
    }
    // `prefix` + `key`, compared in place (as `AmiMessage::get` does, ignoring ASCII case).
    let (p, n) = (prefix.len(), prefix.len() + key.len());
    msg.iter()
        .find(|(k, _)| {
            k.len() == n
                && k.is_char_boundary(p)
                && k[..p].eq_ignore_ascii_case(prefix)
                && k[p..].eq_ignore_ascii_case(key)
        })
        .map(|(_, v)| v)
}

pub(super) enum AnsweredBy {
    Leg(ShortStr),
    Picker { extension: Option<ShortStr> },
    Voicemail,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel stays within 152 bytes and a call within 256, the most that fits the
    /// allocation each has now: jemalloc (the binary's allocator) rounds a block up to its
    /// size classes (160, 192, 224, 256, 320 bytes in this range), glibc's malloc (the
    /// tests') takes `size + 8` rounded up to 16. A channel of 153 bytes would take 176
    /// bytes of heap under glibc instead of 160, a call of 257 bytes 320 under jemalloc
    /// instead of 256.
    #[test]
    fn channels_and_calls_fit_their_allocations() {
        let (channel, call) = (std::mem::size_of::<Channel>(), std::mem::size_of::<Call>());
        assert!(channel <= 152, "a channel takes {channel} bytes");
        assert!(call <= 256, "a call takes {call} bytes");
    }

    #[test]
    fn a_channel_keeps_its_linkedid_across_moves() {
        let mut ch = Channel::new(
            "PJSIP/1-1".into(),
            "1.1".into(),
            "1.1".into(),
            ChannelState::Ring,
            None,
            1,
            true,
        );
        assert_eq!(ch.linkedid(), "1.1");
        assert_eq!(ch.relink("2.1", "2.1".into()).as_deref(), Some("1.1"));
        assert_eq!((ch.linkedid(), &**ch.call()), ("2.1", "2.1"));
        // A Linkedid that another call took over: the call's key and the Linkedid differ.
        assert_eq!(ch.relink("3.1", "2.1".into()), None);
        assert_eq!((ch.linkedid(), &**ch.call()), ("3.1", "2.1"));
        let restored = Channel::new(
            "PJSIP/1-1".into(),
            "2.1".into(),
            "3.1".into(),
            ChannelState::Up,
            None,
            0,
            false,
        );
        assert_eq!((restored.linkedid(), &**restored.call()), ("3.1", "2.1"));
    }

    /// The one-pass reader finds what a scan per header finds: the block's own headers
    /// only (not another block's with a longer prefix, not a longer name ending alike),
    /// ignoring case, the first occurrence winning.
    #[test]
    fn a_channel_block_is_read_as_a_scan_per_header_reads_it() {
        let msg = AmiMessage::from_pairs([
            ("Event", "DialBegin"),
            ("Channel", "PJSIP/trunk-00000001"),
            ("ChannelState", "4"),
            ("CallerIDNum", "+15555550100"),
            ("CallerIDName", "Caller"),
            ("ConnectedLineNum", "201"),
            ("Uniqueid", "1.1"),
            ("Linkedid", "1.1"),
            ("DestChannel", "PJSIP/201-00000002"),
            ("DestChannelState", "0"),
            ("DestCallerIDNum", "201"),
            ("destuniqueid", "1.2"),
            ("DestLinkedid", "1.1"),
            ("DestUniqueid", "1.3"),
            ("DestCID-CallingPres", "32 (Number Unavailable)"),
        ]);
        for prefix in ["", "Dest", "Target"] {
            let block = ChannelBlock::read(&msg, prefix);
            let scanned = ChannelBlock {
                channel: header(&msg, prefix, "Channel"),
                uniqueid: header(&msg, prefix, "Uniqueid"),
                linkedid: header(&msg, prefix, "Linkedid"),
                state: header(&msg, prefix, "ChannelState"),
                caller_num: header(&msg, prefix, "CallerIDNum"),
                caller_name: header(&msg, prefix, "CallerIDName"),
                calling_pres: header(&msg, prefix, "CID-CallingPres"),
            };
            assert_eq!(block, scanned, "prefix {prefix:?}");
        }
        let dest = ChannelBlock::read(&msg, "Dest");
        assert_eq!(dest.uniqueid, Some("1.2"), "first wins, case ignored");
        assert_eq!(dest.caller_name, None);
        assert_eq!(dest.calling_pres, Some("32 (Number Unavailable)"));
        assert_eq!(dest.state(), ChannelState::Down);
        let own = ChannelBlock::read(&msg, "");
        assert_eq!(own.uniqueid, Some("1.1"));
        assert_eq!(own.state(), ChannelState::Ring);
        assert_eq!(own.calling_pres, None);
        assert_eq!(ChannelBlock::read(&msg, "Target"), ChannelBlock::default());
    }
}
