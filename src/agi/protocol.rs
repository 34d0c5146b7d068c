//! The FastAGI wire protocol as values: the `agi_*` environment block Asterisk sends first,
//! the commands we send (quoted so a value is always one word) and Asterisk's replies
//! (`200 result=`, 510, 511, 520 in one or many lines, bare `HANGUP` lines).
//!
//! No I/O: `agi::server` feeds lines in and writes the commands out
//! (docs/asterisk.md, "FastAGI").

use std::fmt;

/// Longest line either side may send; Asterisk's own command buffer is 8192 bytes.
pub const MAX_LINE: usize = 8192;
/// Most `agi_*` lines accepted in one environment block (Asterisk sends about 25, plus
/// one per argument).
pub const MAX_ENV_LINES: usize = 256;
/// Most bytes of text kept from one multi-line `520-` reply (Asterisk's longest usage
/// text is about 2 KB); a longer one is refused rather than held without end.
pub const MAX_USAGE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgiError {
    #[error("not a FastAGI session: line {line} is {snippet:?}, expected agi_name: value")]
    NotAgi { line: usize, snippet: String },
    #[error("the agi_* environment block has more than {MAX_ENV_LINES} lines")]
    TooManyEnvLines,
    #[error("the reply {0:?} is not a FastAGI reply")]
    BadReply(String),
    #[error("refused to send a command with a line break or NUL in it")]
    LineBreakInCommand,
    #[error("a multi-line 520 reply longer than {MAX_USAGE} bytes")]
    UsageTooLong,
}

/// The `agi_*` block that starts a session, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgiEnv {
    vars: Vec<(String, String)>,
}

impl AgiEnv {
    /// Feeds one line of the block. `Ok(true)` at the blank line that ends it.
    pub fn push_line(&mut self, line: &str) -> Result<bool, AgiError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return Ok(true);
        }
        if self.vars.len() >= MAX_ENV_LINES {
            return Err(AgiError::TooManyEnvLines);
        }
        let parsed = line
            .split_once(':')
            .filter(|(k, _)| k.starts_with("agi_") && k.bytes().all(is_name_byte));
        let Some((key, value)) = parsed else {
            return Err(AgiError::NotAgi {
                line: self.vars.len() + 1,
                snippet: line.chars().take(60).collect(),
            });
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        self.vars.push((key.to_string(), value.to_string()));
        Ok(false)
    }

    /// The value of `agi_<name>`; `None` when absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k.strip_prefix("agi_") == Some(name))
            .map(|(_, v)| v.as_str())
    }

    /// Like [`AgiEnv::get`], but Asterisk's placeholders (`unknown`, empty) are `None`.
    pub fn known(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty() && *v != "unknown")
    }

    /// The script part of the URL: `newcall` of `agi://host/newcall?x=1`.
    pub fn script(&self) -> &str {
        let full = self.get("network_script").unwrap_or("");
        full.split_once('?').map_or(full, |(path, _)| path)
    }

    /// The query parameters of the URL, percent-decoded (`+` stays `+`: numbers use it).
    pub fn query(&self) -> Vec<(String, String)> {
        let full = self.get("network_script").unwrap_or("");
        let Some((_, query)) = full.split_once('?') else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `%41` → `A`; invalid escapes stay as written; bytes that are not UTF-8 are replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One command line, without its `\n`. Build with the constructors: values are quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgiCommand(String);

impl AgiCommand {
    /// `GET VARIABLE <name>` (functions such as `CHANNEL(linkedid)` work).
    pub fn get_variable(name: &str) -> Result<Self, AgiError> {
        Self::build(&["GET", "VARIABLE"], &[name])
    }

    /// `SET VARIABLE <name> "<value>"`.
    pub fn set_variable(name: &str, value: &str) -> Result<Self, AgiError> {
        Self::build(&["SET", "VARIABLE"], &[name, value])
    }

    /// `EXEC <app> "<data>"`.
    pub fn exec(app: &str, data: &str) -> Result<Self, AgiError> {
        Self::build(&["EXEC"], &[app, data])
    }

    /// `VERBOSE "<message>" <level>`.
    pub fn verbose(message: &str, level: u8) -> Result<Self, AgiError> {
        let mut cmd = Self::build(&["VERBOSE"], &[message])?;
        cmd.0.push(' ');
        cmd.0.push_str(&level.to_string());
        Ok(cmd)
    }

    /// Fixed words, then each argument quoted (`"` and `\` escaped), so that every argument
    /// stays one word whatever it holds. Line breaks and NUL are refused: they would end
    /// the command and start another.
    fn build(words: &[&str], args: &[&str]) -> Result<Self, AgiError> {
        let mut line = words.join(" ");
        for arg in args {
            if arg.contains(['\r', '\n', '\0']) {
                return Err(AgiError::LineBreakInCommand);
            }
            line.push_str(" \"");
            for c in arg.chars() {
                if c == '"' || c == '\\' {
                    line.push('\\');
                }
                line.push(c);
            }
            line.push('"');
        }
        Ok(AgiCommand(line))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgiCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Asterisk's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgiReply {
    /// `200 result=<n>[ (<data>)]...`
    Success { result: i64, data: Option<String> },
    /// `510 Invalid or unknown command`
    InvalidCommand,
    /// `511 Command Not Permitted on a dead channel or intercept routine`
    DeadChannel,
    /// `520 ...`, one line or the `520-` ... `520 End of proper usage.` block.
    Usage(String),
}

impl AgiReply {
    /// The value of a `GET VARIABLE` reply: `Some` only for `200 result=1 (<value>)`.
    pub fn value(&self) -> Option<&str> {
        match self {
            AgiReply::Success { result: 1, data } => data.as_deref(),
            _ => None,
        }
    }
}

/// What one reply line means to the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyLine {
    /// The channel hung up (Asterisk writes this between replies); not a reply.
    Hangup,
    /// A complete reply.
    Reply(AgiReply),
    /// A line of a multi-line `520-` block; more follow.
    More,
}

/// Turns reply lines into replies. Keeps the state of a multi-line 520 block.
#[derive(Debug, Default)]
pub struct ReplyReader {
    usage: Option<String>,
}

impl ReplyReader {
    pub fn push_line(&mut self, line: &str) -> Result<ReplyLine, AgiError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(usage) = &mut self.usage {
            if line.starts_with("520 ") || line == "520" {
                let text = std::mem::take(usage);
                self.usage = None;
                return Ok(ReplyLine::Reply(AgiReply::Usage(text)));
            }
            if usage.len() + 1 + line.len() > MAX_USAGE {
                self.usage = None;
                return Err(AgiError::UsageTooLong);
            }
            if !usage.is_empty() {
                usage.push('\n');
            }
            usage.push_str(line);
            return Ok(ReplyLine::More);
        }
        if line == "HANGUP" {
            return Ok(ReplyLine::Hangup);
        }
        if let Some(rest) = line.strip_prefix("520-") {
            self.usage = Some(rest.to_string());
            return Ok(ReplyLine::More);
        }
        let bad = || AgiError::BadReply(line.chars().take(60).collect());
        let (code, rest) = line.split_once(' ').unwrap_or((line, ""));
        match code {
            "200" => parse_success(rest).ok_or_else(bad).map(ReplyLine::Reply),
            "510" => Ok(ReplyLine::Reply(AgiReply::InvalidCommand)),
            "511" => Ok(ReplyLine::Reply(AgiReply::DeadChannel)),
            "520" => Ok(ReplyLine::Reply(AgiReply::Usage(rest.to_string()))),
            _ => Err(bad()),
        }
    }
}

/// `result=<n>[ (<data>)][ key=value...]`: the data runs from the first `(` to the last `)`.
fn parse_success(rest: &str) -> Option<AgiReply> {
    let after = rest.strip_prefix("result=")?;
    let end = after.find(' ').unwrap_or(after.len());
    let result = after[..end].parse().ok()?;
    let tail = &after[end..];
    let data = match (tail.find('('), tail.rfind(')')) {
        (Some(open), Some(close)) if close > open => Some(tail[open + 1..close].to_string()),
        _ => None,
    };
    Some(AgiReply::Success { result, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = include_str!("../../tests/fixtures/ami-transcripts/agi-agi-inbound.txt");

    fn env_of(text: &str) -> (AgiEnv, usize) {
        let mut env = AgiEnv::default();
        for (i, line) in text.split('\n').enumerate() {
            if env.push_line(line).unwrap() {
                return (env, i + 1);
            }
        }
        panic!("no blank line");
    }

    #[test]
    fn recorded_session_environment_and_replies() {
        let (env, used) = env_of(RECORDED);
        assert_eq!(env.get("channel"), Some("Local/800@from-trunk-00000018;2"));
        assert_eq!(env.get("uniqueid"), Some("1795596443.49"));
        assert_eq!(env.get("callerid"), Some("+15555550100"));
        assert_eq!(env.get("accountcode"), Some(""));
        assert_eq!(env.known("dnid"), None);
        assert_eq!(env.script(), "inbound");
        assert_eq!(env.query(), vec![("did".to_string(), "800".to_string())]);
        let mut reader = ReplyReader::default();
        let replies: Vec<ReplyLine> = RECORDED
            .split('\n')
            .skip(used)
            .filter(|l| !l.is_empty())
            .map(|l| reader.push_line(l).unwrap())
            .collect();
        assert_eq!(
            replies[0],
            ReplyLine::Reply(AgiReply::Success {
                result: 1,
                data: Some("+15555550100".into())
            })
        );
        assert_eq!(
            replies[1],
            ReplyLine::Reply(AgiReply::Success {
                result: 1,
                data: Some("PSTN Caller/800".into())
            })
        );
        assert_eq!(replies.len(), 4);
    }

    #[test]
    fn garbage_is_not_a_session() {
        let mut env = AgiEnv::default();
        assert!(matches!(
            env.push_line("GET / HTTP/1.1"),
            Err(AgiError::NotAgi { line: 1, .. })
        ));
        let mut env = AgiEnv::default();
        assert!(env.push_line("agi_network: yes").is_ok());
        assert!(matches!(
            env.push_line("Action: Login"),
            Err(AgiError::NotAgi { line: 2, .. })
        ));
        let mut env = AgiEnv::default();
        for _ in 0..MAX_ENV_LINES {
            env.push_line("agi_arg_1: x").unwrap();
        }
        assert_eq!(
            env.push_line("agi_arg_2: y"),
            Err(AgiError::TooManyEnvLines)
        );
    }

    #[test]
    fn query_is_percent_decoded_and_plus_stays() {
        let mut env = AgiEnv::default();
        env.push_line(
            "agi_network_script: newcall?direction=out&to=+4930%20123&user=Alice%2CBob&flag",
        )
        .unwrap();
        assert_eq!(env.script(), "newcall");
        assert_eq!(
            env.query(),
            vec![
                ("direction".into(), "out".into()),
                ("to".into(), "+4930 123".into()),
                ("user".into(), "Alice,Bob".into()),
                ("flag".into(), "".into()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn commands_quote_every_value_and_refuse_line_breaks() {
        assert_eq!(
            AgiCommand::get_variable("CHANNEL(linkedid)")
                .unwrap()
                .as_str(),
            r#"GET VARIABLE "CHANNEL(linkedid)""#
        );
        assert_eq!(
            AgiCommand::set_variable("ZAMMAD_ACTION", "a \"b\" \\c")
                .unwrap()
                .as_str(),
            r#"SET VARIABLE "ZAMMAD_ACTION" "a \"b\" \\c""#
        );
        assert_eq!(
            AgiCommand::exec("Hangup", "17").unwrap().as_str(),
            r#"EXEC "Hangup" "17""#
        );
        assert_eq!(
            AgiCommand::verbose("hi", 1).unwrap().as_str(),
            r#"VERBOSE "hi" 1"#
        );
        for bad in ["x\r\nEXEC Hangup", "x\nHANGUP", "x\0"] {
            assert_eq!(
                AgiCommand::set_variable("CALLERID(num)", bad),
                Err(AgiError::LineBreakInCommand)
            );
        }
    }

    #[test]
    fn replies_every_form() {
        let mut r = ReplyReader::default();
        let mut one = |l: &str| r.push_line(l).unwrap();
        assert_eq!(one("HANGUP"), ReplyLine::Hangup);
        assert_eq!(
            one("200 result=0"),
            ReplyLine::Reply(AgiReply::Success {
                result: 0,
                data: None
            })
        );
        assert_eq!(
            one("200 result=1 (a (b) c) endpos=1234"),
            ReplyLine::Reply(AgiReply::Success {
                result: 1,
                data: Some("a (b) c".into())
            })
        );
        assert_eq!(
            one("200 result=-1\r"),
            ReplyLine::Reply(AgiReply::Success {
                result: -1,
                data: None
            })
        );
        assert_eq!(
            one("510 Invalid or unknown command"),
            ReplyLine::Reply(AgiReply::InvalidCommand)
        );
        assert_eq!(
            one("511 Command Not Permitted on a dead channel or intercept routine"),
            ReplyLine::Reply(AgiReply::DeadChannel)
        );
        assert_eq!(
            one("520 Invalid command syntax.  Proper usage not available."),
            ReplyLine::Reply(AgiReply::Usage(
                "Invalid command syntax.  Proper usage not available.".into()
            ))
        );
        assert_eq!(
            one("520-Invalid command syntax.  Proper usage follows:"),
            ReplyLine::More
        );
        assert_eq!(
            one(" Usage: SET VARIABLE <variablename> <value>"),
            ReplyLine::More
        );
        // HANGUP inside a usage block is part of the text, not a hangup.
        assert_eq!(one("HANGUP"), ReplyLine::More);
        assert_eq!(
            one("520 End of proper usage."),
            ReplyLine::Reply(AgiReply::Usage(
                "Invalid command syntax.  Proper usage follows:\n Usage: SET VARIABLE <variablename> <value>\nHANGUP".into()
            ))
        );
        assert!(r.push_line("hello").is_err());
        assert!(r.push_line("200 result=x").is_err());
        assert!(r.push_line("200 foo").is_err());
    }

    /// Found by fuzzing: the lines of a `520-` block were kept until its last line, so a
    /// peer that never sent one (each line within the idle timeout) grew the session's
    /// memory without end.
    #[test]
    fn a_520_block_without_end_is_refused() {
        let mut r = ReplyReader::default();
        assert_eq!(
            r.push_line("520-Invalid command syntax."),
            Ok(ReplyLine::More)
        );
        let line = " Usage: SET VARIABLE <variablename> <value>";
        let mut kept = "Invalid command syntax.".len();
        while kept + 1 + line.len() <= MAX_USAGE {
            assert_eq!(r.push_line(line), Ok(ReplyLine::More));
            kept += 1 + line.len();
        }
        assert_eq!(r.push_line(line), Err(AgiError::UsageTooLong));
        // The reader starts afresh.
        assert_eq!(r.push_line("HANGUP"), Ok(ReplyLine::Hangup));
    }
}
