//! What Zammad is told: the Generic CTI request bodies and Zammad's replies, as values.
//!
//! Owns the JSON shape (field names, order with `event` first, strings only) of `newCall`,
//! `answer` and `hangup`, the cause vocabulary Zammad knows, and parsing of Zammad's
//! replies (`{}`, reject, dial with `caller_id` or `callerId`). No I/O: `zammad` sends these.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Zammad's callId: `call_id_prefix` + the Linkedid of the call's first channel. Kept in
/// place up to 24 bytes (a Linkedid with a short prefix): every open call holds one, and
/// every request carries a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub compact_str::CompactString);

impl CallId {
    /// The callId of the call whose first channel's Linkedid is `linkedid`.
    pub fn of(prefix: &str, linkedid: &str) -> CallId {
        let mut id = compact_str::CompactString::with_capacity(prefix.len() + linkedid.len());
        id.push_str(prefix);
        id.push_str(linkedid);
        CallId(id)
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "in")]
    In,
    #[serde(rename = "out")]
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CtiEventKind {
    #[serde(rename = "newCall")]
    NewCall,
    #[serde(rename = "answer")]
    Answer,
    #[serde(rename = "hangup")]
    Hangup,
}

impl CtiEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CtiEventKind::NewCall => "newCall",
            CtiEventKind::Answer => "answer",
            CtiEventKind::Hangup => "hangup",
        }
    }
}

/// The hangup causes Zammad knows (docs/zammad.md). Anything else would show raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    NormalClearing,
    Busy,
    Cancel,
    NoAnswer,
    Congestion,
    NotFound,
    Forwarded,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NormalClearing => "normalClearing",
            Cause::Busy => "busy",
            Cause::Cancel => "cancel",
            Cause::NoAnswer => "noAnswer",
            Cause::Congestion => "congestion",
            Cause::NotFound => "notFound",
            Cause::Forwarded => "forwarded",
        }
    }
}

/// `user`: one name, or several for ring groups and queues (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Users {
    One(String),
    Many(Vec<String>),
}

impl Users {
    /// `None` for no names, a string for one, an array for several.
    pub fn from_names(mut names: Vec<String>) -> Option<Users> {
        match names.len() {
            0 => None,
            1 => names.pop().map(Users::One),
            _ => Some(Users::Many(names)),
        }
    }
}

/// One CTI request body. Field order is the JSON order: `event` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtiRequest {
    pub event: CtiEventKind,
    pub direction: Direction,
    #[serde(rename = "callId")]
    pub call_id: CallId,
    pub from: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<Users>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queue: Option<String>,
    #[serde(
        rename = "answeringNumber",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub answering_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cause: Option<Cause>,
}

impl CtiRequest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a CtiRequest always serialises")
    }

    /// Whether a second copy of this event costs less than its loss, when Zammad may or
    /// may not have the first: an attempt timed out, was cut off or answered 504, or the
    /// daemon died while sending it (docs/zammad.md, "Errors and retries";
    /// docs/persistence.md, "Events in doubt"). True
    /// for a `newCall` (a second one is answered "already exists"), an `answer` (a second
    /// one only moves the talk time's start; a lost one shows a handled call as missed),
    /// and the `hangup` of an answered, forwarded or outbound call (a second one only
    /// moves its end; a lost one leaves it open in Zammad for good). False for the
    /// `hangup` of an inbound call nobody answered: Zammad's missed rule fires only on
    /// the first hangup, so a second one turns the missed call into a handled one, while
    /// a lost one leaves it shown as not done. The tracker gives a hangup the cause
    /// `normalClearing` exactly when its call was answered.
    pub fn safe_to_repeat(&self) -> bool {
        match self.event {
            CtiEventKind::NewCall | CtiEventKind::Answer => true,
            CtiEventKind::Hangup => {
                self.direction == Direction::Out
                    || matches!(self.cause, Some(Cause::NormalClearing | Cause::Forwarded))
            }
        }
    }
}

/// What Zammad answered to a `newCall` (ignored for the other events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZammadDecision {
    /// `{}` or no `action`: proceed.
    Continue,
    /// `{"action":"reject","reason":"busy"}`.
    Reject { reason: String },
    /// `{"action":"dial","caller_id":X,"number":Y}` (`callerId` accepted too).
    Dial { caller_id: String, number: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("reply is not JSON: {snippet:?}")]
    NotJson { snippet: String },
    #[error("reply has an unknown action {0:?}")]
    UnknownAction(String),
    #[error("dial reply without a caller_id")]
    DialWithoutCallerId,
}

impl ZammadDecision {
    /// Parses a 2xx body. An empty body counts as `{}`.
    pub fn parse(body: &str) -> Result<ZammadDecision, ReplyError> {
        #[derive(Deserialize)]
        struct Raw {
            action: Option<String>,
            reason: Option<String>,
            caller_id: Option<serde_json::Value>,
            #[serde(rename = "callerId")]
            caller_id_camel: Option<serde_json::Value>,
            number: Option<serde_json::Value>,
        }
        if body.trim().is_empty() {
            return Ok(ZammadDecision::Continue);
        }
        let raw: Raw = serde_json::from_str(body).map_err(|_| ReplyError::NotJson {
            snippet: snippet(body),
        })?;
        let text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        match raw.action.as_deref() {
            None | Some("") => Ok(ZammadDecision::Continue),
            Some("reject") => Ok(ZammadDecision::Reject {
                reason: raw.reason.unwrap_or_else(|| "busy".into()),
            }),
            Some("dial") => {
                let caller_id = text(raw.caller_id)
                    .or_else(|| text(raw.caller_id_camel))
                    .ok_or(ReplyError::DialWithoutCallerId)?;
                Ok(ZammadDecision::Dial {
                    caller_id,
                    number: text(raw.number).unwrap_or_default(),
                })
            }
            Some(other) => Err(ReplyError::UnknownAction(other.to_string())),
        }
    }
}

/// The first characters of a body, for error messages (an HTML page is long).
pub fn snippet(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_has_event_first_and_only_strings() {
        let r = CtiRequest {
            event: CtiEventKind::NewCall,
            direction: Direction::In,
            call_id: CallId("1795596369.0".into()),
            from: "15555550100".into(),
            to: "201".into(),
            user: Users::from_names(vec!["Alice".into(), "Carol".into()]),
            queue: Some("support".into()),
            answering_number: None,
            cause: None,
        };
        assert_eq!(
            r.to_json(),
            r#"{"event":"newCall","direction":"in","callId":"1795596369.0","from":"15555550100","to":"201","user":["Alice","Carol"],"queue":"support"}"#
        );
        let h = CtiRequest {
            event: CtiEventKind::Hangup,
            user: None,
            queue: None,
            cause: Some(Cause::NoAnswer),
            ..r
        };
        assert!(h.to_json().ends_with(r#""cause":"noAnswer"}"#));
    }

    #[test]
    fn replies_parse_like_zammad_sends_them() {
        let check = |body: &str, want: Result<ZammadDecision, ReplyError>| {
            assert_eq!(ZammadDecision::parse(body), want, "body {body:?}");
        };
        check("{}", Ok(ZammadDecision::Continue));
        check("", Ok(ZammadDecision::Continue));
        check(
            r#"{"action":"reject","reason":"busy"}"#,
            Ok(ZammadDecision::Reject {
                reason: "busy".into(),
            }),
        );
        check(
            r#"{"action":"dial","caller_id":"493023125877","number":"4930111"}"#,
            Ok(ZammadDecision::Dial {
                caller_id: "493023125877".into(),
                number: "4930111".into(),
            }),
        );
        check(
            r#"{"action":"dial","callerId":"496990009111","number":"1"}"#,
            Ok(ZammadDecision::Dial {
                caller_id: "496990009111".into(),
                number: "1".into(),
            }),
        );
        check(
            r#"{"action":"dial","number":"1"}"#,
            Err(ReplyError::DialWithoutCallerId),
        );
        assert!(matches!(
            ZammadDecision::parse("<html><body>500: We're sorry</body></html>"),
            Err(ReplyError::NotJson { .. })
        ));
    }
}
