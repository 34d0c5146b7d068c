//! Acting on Zammad's answer to a `newCall` (docs/dialplan.md): what the call does next
//! (continue, reject as busy, dial with Zammad's caller ID), the guard that lets only a
//! plausible number from Zammad reach Asterisk, and the exact FastAGI commands and AMI
//! actions that carry the decision out.
//!
//! Pure: the FastAGI session and the daemon's AMI path send what this module builds.

use crate::agi::protocol::{AgiCommand, AgiError};
use crate::ami::AmiMessage;
use crate::config::RejectMode;
use crate::zammad::cti::{CallId, Direction, ZammadDecision};

/// Longest caller ID accepted from Zammad.
pub const MAX_NUMBER_LEN: usize = 32;

/// What the call does after Zammad answered (or did not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAction {
    Continue,
    /// Reject the caller as busy.
    Reject,
    /// Present `caller_id` as the outbound caller ID.
    Dial {
        caller_id: String,
    },
}

/// Why a decision from Zammad was not acted on; the call goes on as `continue`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("zammad's caller_id {0:?} is not a plausible number (+, digits, *, #, at most 32)")]
    ImplausibleCallerId(String),
    #[error(
        "zammad answered {action} for an {direction} call; only inbound calls are rejected and only outbound calls dialed"
    )]
    WrongDirection {
        action: &'static str,
        direction: &'static str,
    },
}

/// A leading `+`, then 1 to 32 characters in all of digits, `*` and `#`, at least one digit.
pub fn is_plausible_number(s: &str) -> bool {
    let rest = s.strip_prefix('+').unwrap_or(s);
    !s.is_empty()
        && s.len() <= MAX_NUMBER_LEN
        && rest.bytes().any(|b| b.is_ascii_digit())
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

impl CallAction {
    /// The action for Zammad's decision on a call of `direction`: a reject applies to
    /// inbound calls, a dial to outbound ones, and only with a plausible caller ID.
    pub fn decide(direction: Direction, decision: &ZammadDecision) -> Result<CallAction, Ignored> {
        match (decision, direction) {
            (ZammadDecision::Continue, _) => Ok(CallAction::Continue),
            (ZammadDecision::Reject { .. }, Direction::In) => Ok(CallAction::Reject),
            (ZammadDecision::Dial { caller_id, .. }, Direction::Out) => {
                if is_plausible_number(caller_id) {
                    Ok(CallAction::Dial {
                        caller_id: caller_id.clone(),
                    })
                } else {
                    Err(Ignored::ImplausibleCallerId(
                        caller_id.chars().take(40).collect(),
                    ))
                }
            }
            (ZammadDecision::Reject { .. }, Direction::Out) => Err(Ignored::WrongDirection {
                action: "reject",
                direction: "outbound",
            }),
            (ZammadDecision::Dial { .. }, Direction::In) => Err(Ignored::WrongDirection {
                action: "dial",
                direction: "inbound",
            }),
        }
    }

    /// `ZAMMAD_ACTION`'s value.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallAction::Continue => "continue",
            CallAction::Reject => "reject",
            CallAction::Dial { .. } => "dial",
        }
    }
}

/// `ZAMMAD_CALLID`, the first of the FastAGI commands that tell the dialplan
/// ([`action_commands`] follow): known once the claim is taken, so a session sets it while
/// Zammad decides rather than after.
pub fn call_id_command(call_id: &CallId) -> Result<AgiCommand, AgiError> {
    AgiCommand::set_variable("ZAMMAD_CALLID", &call_id.0)
}

/// What follows Zammad's answer (or its absence): for a dial, `CALLERID(num)`,
/// `ZAMMAD_CALLERID` and `ZAMMAD_ACTION` in one `MSet` (one round trip for the three);
/// otherwise `ZAMMAD_ACTION`, and the hangup of a reject. `MSet` sets each pair as `Set`
/// does, in order, a function like `CALLERID(num)` through the function
/// (`pbx_builtin_setvar_multiple` calls `pbx_builtin_setvar_helper` for each); it splits on
/// `,` and `=`, which a dial's caller ID, a plausible number, never holds.
pub fn action_commands(
    action: &CallAction,
    reject: RejectMode,
) -> Result<Vec<AgiCommand>, AgiError> {
    let mut commands = Vec::with_capacity(2);
    match action {
        CallAction::Dial { caller_id } => {
            debug_assert!(is_plausible_number(caller_id));
            commands.push(AgiCommand::exec(
                "MSet",
                &format!(
                    "CALLERID(num)={caller_id},ZAMMAD_CALLERID={caller_id},ZAMMAD_ACTION={}",
                    action.as_str()
                ),
            )?);
        }
        _ => commands.push(AgiCommand::set_variable("ZAMMAD_ACTION", action.as_str())?),
    }
    if *action == CallAction::Reject && reject == RejectMode::Hangup {
        commands.push(AgiCommand::exec("Hangup", "17")?);
    }
    Ok(commands)
}

/// The AMI action that carries out `action` on `channel` (the inbound caller's channel
/// for a reject, the calling phone's for a dial); none for `continue`.
pub fn ami_action(channel: &str, action: &CallAction) -> Option<AmiMessage> {
    match action {
        CallAction::Continue => None,
        CallAction::Reject => Some(AmiMessage::from_pairs([
            ("Action", "Hangup"),
            ("Channel", channel),
            ("Cause", "17"),
        ])),
        CallAction::Dial { caller_id } => Some(AmiMessage::from_pairs([
            ("Action", "Setvar"),
            ("Channel", channel),
            ("Variable", "CALLERID(num)"),
            ("Value", caller_id.as_str()),
        ])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dial(caller_id: &str) -> ZammadDecision {
        ZammadDecision::Dial {
            caller_id: caller_id.into(),
            number: "4930111".into(),
        }
    }

    #[test]
    fn plausible_numbers() {
        for ok in [
            "493023125877",
            "+493023125877",
            "*31#0301234",
            "1",
            &"9".repeat(32),
        ] {
            assert!(is_plausible_number(ok), "{ok:?}");
        }
        for bad in [
            "",
            "+",
            "*#",
            "49 30 1234",
            "4930\r\nAction: Originate",
            "4930\nHANGUP",
            "49\"30",
            "49+30",
            "abc",
            &"9".repeat(33),
            "４９３０",
        ] {
            assert!(!is_plausible_number(bad), "{bad:?}");
        }
    }

    #[test]
    fn decisions_by_direction() {
        let reject = ZammadDecision::Reject {
            reason: "busy".into(),
        };
        assert_eq!(
            CallAction::decide(Direction::In, &reject),
            Ok(CallAction::Reject)
        );
        assert!(CallAction::decide(Direction::Out, &reject).is_err());
        assert_eq!(
            CallAction::decide(Direction::Out, &dial("+4930123")),
            Ok(CallAction::Dial {
                caller_id: "+4930123".into()
            })
        );
        assert!(CallAction::decide(Direction::In, &dial("4930123")).is_err());
        assert_eq!(
            CallAction::decide(
                Direction::Out,
                &dial("1\r\nAction: Originate\r\nChannel: x")
            ),
            Err(Ignored::ImplausibleCallerId(
                "1\r\nAction: Originate\r\nChannel: x".into()
            ))
        );
        assert_eq!(
            CallAction::decide(Direction::In, &ZammadDecision::Continue),
            Ok(CallAction::Continue)
        );
    }

    #[test]
    fn agi_commands_byte_for_byte() {
        let id = CallId("1795596443.48".into());
        // A session's commands: the callId, then what follows Zammad's answer.
        let lines = |action: &CallAction, mode| {
            std::iter::once(call_id_command(&id).unwrap())
                .chain(action_commands(action, mode).unwrap())
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines(&CallAction::Reject, RejectMode::Hangup),
            [
                r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
                r#"SET VARIABLE "ZAMMAD_ACTION" "reject""#,
                r#"EXEC "Hangup" "17""#,
            ]
        );
        assert_eq!(
            lines(&CallAction::Reject, RejectMode::Variable),
            [
                r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
                r#"SET VARIABLE "ZAMMAD_ACTION" "reject""#,
            ]
        );
        assert_eq!(
            lines(
                &CallAction::Dial {
                    caller_id: "493023125877".into()
                },
                RejectMode::Hangup
            ),
            [
                r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
                r#"EXEC "MSet" "CALLERID(num)=493023125877,ZAMMAD_CALLERID=493023125877,ZAMMAD_ACTION=dial""#,
            ]
        );
        assert_eq!(
            lines(&CallAction::Continue, RejectMode::Hangup),
            [
                r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
                r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#,
            ]
        );
    }

    #[test]
    fn ami_actions_byte_for_byte() {
        assert_eq!(
            ami_action("PJSIP/trunk-0000001", &CallAction::Continue),
            None
        );
        let hangup = ami_action("PJSIP/trunk-0000001", &CallAction::Reject).unwrap();
        assert_eq!(
            hangup.iter().collect::<Vec<_>>(),
            [
                ("Action", "Hangup"),
                ("Channel", "PJSIP/trunk-0000001"),
                ("Cause", "17")
            ]
        );
        let setvar = ami_action(
            "PJSIP/201-0000002",
            &CallAction::Dial {
                caller_id: "+493023125877".into(),
            },
        )
        .unwrap();
        assert_eq!(
            setvar.iter().collect::<Vec<_>>(),
            [
                ("Action", "Setvar"),
                ("Channel", "PJSIP/201-0000002"),
                ("Variable", "CALLERID(num)"),
                ("Value", "+493023125877")
            ]
        );
    }
}
