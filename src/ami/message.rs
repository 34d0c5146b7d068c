//! `AmiMessage`: one AMI frame as an ordered multimap of headers.
//!
//! Owns the in-memory shape of a message and header lookup (case-insensitive, first
//! occurrence wins, repeated keys kept in order). Parsing bytes into it is `codec`'s job.
//! The whole frame lives in one `String` with a small index of ranges, so decoding an event
//! costs two allocations however many headers it has, and one copy: the codec hands over
//! the frame as it came ([`AmiMessage::over`]) and its headers are ranges of it.

use std::fmt;
use std::ops::Range;

/// What a frame is, decided by its first header line (`Event:` or `Response:`), never by
/// "has a Response key" (`OriginateResponse` events carry `Response:` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmiKind {
    Event,
    Response,
    /// A client-side action (`Action:` first) or anything else.
    Other,
}

/// Equal when the headers are, in order, however the text behind them is laid out.
#[derive(Clone, Default)]
pub struct AmiMessage {
    text: String,
    fields: Vec<(Range<u32>, Range<u32>)>,
}

impl AmiMessage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(bytes: usize, headers: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            fields: Vec::with_capacity(headers),
        }
    }

    /// Builds a message from pairs, in order (used for actions and in tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut m = Self::new();
        for (k, v) in pairs {
            m.push(k, v);
        }
        m
    }

    /// Appends one header. Values are stored as given (already unescaped).
    pub fn push(&mut self, key: &str, value: &str) {
        let k0 = self.text.len() as u32;
        self.text.push_str(key);
        let k1 = self.text.len() as u32;
        self.text.push_str(value);
        let v1 = self.text.len() as u32;
        self.fields.push((k0..k1, k1..v1));
    }

    /// A message over `text` (a frame as read), without headers yet: they are added as
    /// ranges of it ([`AmiMessage::push_range`]), or with values appended to it
    /// ([`AmiMessage::push_range_with`]).
    pub(crate) fn over(text: String, headers: usize) -> Self {
        Self {
            text,
            fields: Vec::with_capacity(headers),
        }
    }

    /// The text the headers are ranges of.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Appends one header whose key and value are ranges of the text.
    pub(crate) fn push_range(&mut self, key: Range<usize>, value: Range<usize>) {
        self.fields.push((narrow(key), narrow(value)));
    }

    /// Appends one header whose key is a range of the text and whose value `write`
    /// appends to it (lets the codec unescape straight into the frame's buffer).
    pub(crate) fn push_range_with(&mut self, key: Range<usize>, write: impl FnOnce(&mut String)) {
        let v0 = self.text.len();
        write(&mut self.text);
        let v1 = self.text.len();
        self.fields.push((narrow(key), narrow(v0..v1)));
    }

    fn slice(&self, r: &Range<u32>) -> &str {
        &self.text[r.start as usize..r.end as usize]
    }

    /// Headers in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields
            .iter()
            .map(|(k, v)| (self.slice(k), self.slice(v)))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The first value of `key`, compared case-insensitively.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// Every value of `key`, in order (`ChanVariable`, `Output`, `Variable` repeat).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    pub fn kind(&self) -> AmiKind {
        match self.iter().next() {
            Some((k, _)) if k.eq_ignore_ascii_case("Event") => AmiKind::Event,
            Some((k, _)) if k.eq_ignore_ascii_case("Response") => AmiKind::Response,
            _ => AmiKind::Other,
        }
    }

    /// The event name, if this is an event.
    pub fn event(&self) -> Option<&str> {
        match self.kind() {
            AmiKind::Event => self.iter().next().map(|(_, v)| v),
            _ => None,
        }
    }

    /// `Response:` value (`Success`, `Error`, `Goodbye`, `Follows`) if this is a response.
    pub fn response(&self) -> Option<&str> {
        match self.kind() {
            AmiKind::Response => self.iter().next().map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }
}

/// Offsets within a frame: frames are limited to far less than 4 GiB (the codec's limit).
fn narrow(r: Range<usize>) -> Range<u32> {
    r.start as u32..r.end as u32
}

impl PartialEq for AmiMessage {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for AmiMessage {}

impl fmt::Debug for AmiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_first_wins_and_keeps_repeats() {
        let m = AmiMessage::from_pairs([
            ("Event", "Newchannel"),
            ("Uniqueid", "1.1"),
            ("ChanVariable", "a=1"),
            ("chanvariable", "b=2"),
            ("UNIQUEID", "other"),
        ]);
        assert_eq!(m.kind(), AmiKind::Event);
        assert_eq!(m.event(), Some("Newchannel"));
        assert_eq!(m.get("uniqueid"), Some("1.1"));
        assert_eq!(
            m.get_all("ChanVariable").collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
        assert_eq!(m.get("missing"), None);
    }

    #[test]
    fn kind_comes_from_the_first_line_only() {
        let ev = AmiMessage::from_pairs([("Event", "OriginateResponse"), ("Response", "Success")]);
        assert_eq!(ev.kind(), AmiKind::Event);
        assert_eq!(ev.response(), None);
        let resp = AmiMessage::from_pairs([("Response", "Success"), ("ActionID", "7")]);
        assert_eq!(resp.kind(), AmiKind::Response);
        assert_eq!(resp.action_id(), Some("7"));
    }
}
