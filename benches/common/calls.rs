//! Generated calls for the benchmarks: the lab's recorded inbound call answered by an agent
//! (`tests/fixtures/ami-transcripts/inbound-answered.txt`, 83 AMI events, 4 channels) with
//! its ids rewritten, so that every call is a call of its own.

use bytes::{BufMut, BytesMut};

const TEMPLATE: &str = include_str!("../../tests/fixtures/ami-transcripts/inbound-answered.txt");
/// The template's ids: its Uniqueids share this prefix; its two Local pairs these
/// sequence numbers; its bridge this id.
const UNIQUEID_PREFIX: &str = "1795596369.";
const LOCAL_SEQS: [&str; 2] = ["-00000000;", "-00000001;"];
const BRIDGE_ID: &str = "0f67ae6b-9570-4f8e-af19-508f2f33a991";

/// The template's events (no responses, no `FullyBooted`), split where the call starts to
/// end: the first part rings and answers, the second hangs up.
pub struct Template {
    pub start: String,
    pub end: String,
    pub events: usize,
}

impl Template {
    pub fn load() -> Template {
        let mut start = String::new();
        let mut end = String::new();
        let mut events = 0;
        for frame in TEMPLATE.split("\r\n\r\n") {
            let frame = frame.trim_start_matches("Asterisk Call Manager/11.0.0\r\n");
            if !frame.starts_with("Event: ") || frame.starts_with("Event: FullyBooted") {
                continue;
            }
            events += 1;
            let ending = [
                "Event: BridgeLeave",
                "Event: HangupRequest",
                "Event: SoftHangupRequest",
                "Event: Hangup",
            ]
            .iter()
            .any(|e| frame.starts_with(&format!("{e}\r\n")));
            let part = if ending || !end.is_empty() {
                &mut end
            } else {
                &mut start
            };
            part.push_str(frame);
            part.push_str("\r\n\r\n");
        }
        Template { start, end, events }
    }

    /// Every event of the call, in order, one frame each.
    pub fn frames(&self) -> Vec<String> {
        let mut all = frames(&self.start);
        all.extend(frames(&self.end));
        all
    }
}

/// The frames of `part` (of [`Template::start`] or [`Template::end`]), one event each.
pub fn frames(part: &str) -> Vec<String> {
    part.split_inclusive("\r\n\r\n")
        .map(str::to_string)
        .collect()
}

/// `part` of call `n`, with ids of its own.
pub fn call_part(part: &str, n: u64, out: &mut BytesMut) {
    let s = part
        .replace(UNIQUEID_PREFIX, &format!("{}.", 1_000_000_000 + n))
        .replace(LOCAL_SEQS[0], &format!("-{:08x};", 2 * n))
        .replace(LOCAL_SEQS[1], &format!("-{:08x};", 2 * n + 1))
        .replace(BRIDGE_ID, &format!("{n:08x}-0000-4000-8000-000000000000"));
    out.put_slice(s.as_bytes());
}
