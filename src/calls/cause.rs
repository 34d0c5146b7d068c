//! Hangup cause policy: Zammad's `cause` from what the call went through, what Dial
//! reported and the Q.850 cause of the channel that ended it (docs/asterisk.md, "Dial
//! status and hangup causes").

use crate::zammad::cti::{Cause, Direction};
use serde::{Deserialize, Serialize};

/// A Dial leg's outcome (`DialStatus` of `DialEnd`), ranked by how much it tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DialOutcome {
    /// CANCEL: the caller hung up, or the leg lost a race (answered elsewhere).
    Cancel,
    NoAnswer,
    ChanUnavail,
    Congestion,
    Busy,
    Answer,
}

impl DialOutcome {
    /// Parses `DialStatus`; `None` for statuses that say nothing about the callee
    /// (CONTINUE, GOTO, ABORT, ...).
    pub fn parse(status: &str) -> Option<DialOutcome> {
        Some(match status {
            "ANSWER" => DialOutcome::Answer,
            "BUSY" => DialOutcome::Busy,
            "NOANSWER" => DialOutcome::NoAnswer,
            "CANCEL" => DialOutcome::Cancel,
            "CONGESTION" => DialOutcome::Congestion,
            "CHANUNAVAIL" => DialOutcome::ChanUnavail,
            _ => return None,
        })
    }
}

/// What the tracker knows about a call when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallOutcome {
    /// A person (or voicemail) picked up.
    pub answered: bool,
    /// The call left, unanswered, to another party (Dial `Forward`).
    pub forwarded: bool,
    /// The external caller hung up while the call was ringing or queued.
    pub caller_gave_up: bool,
    /// The call waited in a queue and left it unserved while the caller was still there.
    pub queue_unserved: bool,
    /// The most informative Dial outcome of the call's legs other than ANSWER.
    pub best_dial: Option<DialOutcome>,
    /// Q.850 cause of the channel whose hangup ended the call.
    pub q850: Option<u16>,
}

/// Zammad's cause for a call that ended with `outcome`.
pub fn zammad_cause(direction: Direction, outcome: &CallOutcome) -> Cause {
    if outcome.answered {
        return Cause::NormalClearing;
    }
    if outcome.forwarded {
        return Cause::Forwarded;
    }
    // An explicit busy (Busy(), Hangup(17), AMI Hangup with Cause 17: a rejected call)
    // wins over the cancelled dial legs it leaves behind.
    if outcome.q850 == Some(17) {
        return Cause::Busy;
    }
    if outcome.caller_gave_up {
        return Cause::Cancel;
    }
    match outcome.best_dial {
        Some(DialOutcome::Busy) => return Cause::Busy,
        Some(DialOutcome::Congestion) => return Cause::Congestion,
        Some(DialOutcome::ChanUnavail) => return Cause::NotFound,
        Some(DialOutcome::NoAnswer) => return Cause::NoAnswer,
        Some(DialOutcome::Cancel) if direction == Direction::Out => return Cause::Cancel,
        Some(DialOutcome::Cancel | DialOutcome::Answer) | None => {}
    }
    if outcome.queue_unserved {
        return Cause::NoAnswer;
    }
    match outcome.q850.and_then(q850_cause) {
        Some(cause) => cause,
        None => match direction {
            Direction::In => Cause::Cancel,
            Direction::Out => Cause::NoAnswer,
        },
    }
}

/// Q.850 causes that say why a call was not reached; `None` for the rest (0, 16, ...).
pub fn q850_cause(code: u16) -> Option<Cause> {
    Some(match code {
        17 => Cause::Busy,
        18 | 19 | 21 | 31 => Cause::NoAnswer,
        34 | 38 | 41 | 42 | 44 | 58 | 102 | 127 => Cause::Congestion,
        1 | 2 | 3 | 20 | 22 | 27 | 28 => Cause::NotFound,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(direction: Direction, outcome: CallOutcome, want: Cause) {
        assert_eq!(zammad_cause(direction, &outcome), want, "{outcome:?}");
    }

    fn o() -> CallOutcome {
        CallOutcome::default()
    }

    #[test]
    fn causes_from_answer_dial_status_and_q850() {
        use Direction::{In, Out};
        let dial = |d| CallOutcome {
            best_dial: Some(d),
            ..o()
        };
        check(
            In,
            CallOutcome {
                answered: true,
                q850: Some(17),
                ..o()
            },
            Cause::NormalClearing,
        );
        check(
            In,
            CallOutcome {
                forwarded: true,
                ..o()
            },
            Cause::Forwarded,
        );
        check(
            In,
            CallOutcome {
                caller_gave_up: true,
                q850: Some(19),
                ..o()
            },
            Cause::Cancel,
        );
        check(
            In,
            CallOutcome {
                caller_gave_up: true,
                q850: Some(17),
                ..o()
            },
            Cause::Busy,
        );
        check(In, dial(DialOutcome::Busy), Cause::Busy);
        check(In, dial(DialOutcome::NoAnswer), Cause::NoAnswer);
        check(In, dial(DialOutcome::Congestion), Cause::Congestion);
        check(In, dial(DialOutcome::ChanUnavail), Cause::NotFound);
        check(In, dial(DialOutcome::Cancel), Cause::Cancel);
        check(Out, dial(DialOutcome::Cancel), Cause::Cancel);
        check(
            In,
            CallOutcome {
                queue_unserved: true,
                q850: Some(16),
                ..o()
            },
            Cause::NoAnswer,
        );
        check(
            In,
            CallOutcome {
                q850: Some(21),
                ..o()
            },
            Cause::NoAnswer,
        );
        check(
            In,
            CallOutcome {
                q850: Some(34),
                ..o()
            },
            Cause::Congestion,
        );
        check(
            In,
            CallOutcome {
                q850: Some(1),
                ..o()
            },
            Cause::NotFound,
        );
        check(
            In,
            CallOutcome {
                q850: Some(16),
                ..o()
            },
            Cause::Cancel,
        );
        check(
            Out,
            CallOutcome {
                q850: Some(16),
                ..o()
            },
            Cause::NoAnswer,
        );
        check(
            Out,
            CallOutcome {
                q850: Some(0),
                ..o()
            },
            Cause::NoAnswer,
        );
    }

    #[test]
    fn dial_outcomes_rank_busy_over_noanswer_over_cancel() {
        assert!(DialOutcome::Busy > DialOutcome::Congestion);
        assert!(DialOutcome::Congestion > DialOutcome::ChanUnavail);
        assert!(DialOutcome::ChanUnavail > DialOutcome::NoAnswer);
        assert!(DialOutcome::NoAnswer > DialOutcome::Cancel);
        assert_eq!(DialOutcome::parse("GOTO"), None);
        assert_eq!(DialOutcome::parse("BUSY"), Some(DialOutcome::Busy));
    }
}
