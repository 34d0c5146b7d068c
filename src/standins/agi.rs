//! `FakeAgiCall`: Asterisk's side of one FastAGI session, for tests, benchmarks and the
//! demo. It connects like `AGI(agi://HOST:PORT/SCRIPT)` does, sends the `agi_*`
//! environment block, answers each command the way Asterisk's `res_agi` does, and
//! records every command line byte for byte.
//!
//! Answers: `GET VARIABLE` of `CHANNEL(linkedid)` or of a variable set earlier
//! (`200 result=1 (value)`, `200 result=0` when unset), `SET VARIABLE` with exactly two
//! arguments (`200 result=1`, else 520), `EXEC MSet name=value,...` (sets each pair),
//! `EXEC Hangup <cause>` (hangs the channel up: `200 result=-1`, then a bare `HANGUP`
//! line), `VERBOSE`, `NOOP`; anything else `510`.
//! After a hangup only the dead-capable commands run; others get `511`.

use crate::ami::AmiMessage;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One channel running `AGI(agi://.../SCRIPT)`.
#[derive(Debug, Clone)]
pub struct FakeAgiCall {
    /// After the host in the URL: `newcall?direction=in`.
    pub script: String,
    pub channel: String,
    pub uniqueid: String,
    pub linkedid: String,
    pub callerid: String,
    pub context: String,
    pub extension: String,
    /// Send a bare `HANGUP` line (the caller hung up) before answering command `n` (0 is
    /// the first command).
    pub hangup_before_command: Option<usize>,
    /// Close the connection instead of answering command `n`.
    pub close_at_command: Option<usize>,
}

/// What the bridge did in one session.
#[derive(Debug, Clone, Default)]
pub struct AgiTranscript {
    /// Every command line the bridge sent, without its `\n`.
    pub commands: Vec<String>,
    /// Channel variables after the session (`SET VARIABLE`), by name.
    pub variables: BTreeMap<String, String>,
    /// The cause of an `EXEC Hangup`, if the bridge hung the channel up.
    pub hangup_cause: Option<String>,
    /// From the end of the environment block to the bridge closing the connection.
    pub elapsed: Duration,
    /// The bridge's share of `elapsed`: for each command, from this side's previous write
    /// (the environment block or a reply) to the command's arrival. Asterisk's own time to
    /// answer is not in it; the time the bridge waits for Zammad is.
    pub bridge_time: Duration,
    /// `bridge_time` per command: `steps[n]` is the wait for command `n`.
    pub steps: Vec<Duration>,
    /// When this side wrote: `writes[0]` the environment block, `writes[n + 1]` the reply
    /// to command `n` (to line up with other clocks, as the stand-in Zammad's).
    pub writes: Vec<Instant>,
    /// When command `n` arrived.
    pub arrivals: Vec<Instant>,
}

impl FakeAgiCall {
    /// An inbound call's trunk channel `uniqueid` in context `from-trunk`, dialing `did`.
    pub fn inbound(linkedid: &str, uniqueid: &str, callerid: &str, did: &str) -> Self {
        Self {
            script: "newcall".into(),
            channel: format!("Local/{did}@from-trunk-{};2", channel_suffix(uniqueid)),
            uniqueid: uniqueid.into(),
            linkedid: linkedid.into(),
            callerid: callerid.into(),
            context: "from-trunk".into(),
            extension: did.into(),
            hangup_before_command: None,
            close_at_command: None,
        }
    }

    /// A phone's channel `uniqueid` (`callerid` = its extension) in `from-internal`
    /// dialing `number`.
    pub fn outbound(linkedid: &str, uniqueid: &str, extension: &str, number: &str) -> Self {
        Self {
            script: "newcall".into(),
            channel: format!("PJSIP/{extension}-{}", channel_suffix(uniqueid)),
            uniqueid: uniqueid.into(),
            linkedid: linkedid.into(),
            callerid: extension.into(),
            context: "from-internal".into(),
            extension: number.into(),
            hangup_before_command: None,
            close_at_command: None,
        }
    }

    /// The `Newchannel` event Asterisk sends on AMI for this channel when it creates it,
    /// before its dialplan reaches the AGI: what confirms the session's claim.
    pub fn newchannel(&self) -> AmiMessage {
        AmiMessage::from_pairs([
            ("Event", "Newchannel"),
            ("Privilege", "call,all"),
            ("Channel", &self.channel),
            ("ChannelState", "4"),
            ("ChannelStateDesc", "Ring"),
            ("CallerIDNum", &self.callerid),
            ("CallerIDName", "<unknown>"),
            ("ConnectedLineNum", "<unknown>"),
            ("ConnectedLineName", "<unknown>"),
            ("Language", "en"),
            ("AccountCode", ""),
            ("Context", &self.context),
            ("Exten", &self.extension),
            ("Priority", "1"),
            ("Uniqueid", &self.uniqueid),
            ("Linkedid", &self.linkedid),
        ])
    }

    /// The environment block as Asterisk 22 sends it (LF line ends, blank line last).
    pub fn environment(&self, server: SocketAddr) -> String {
        let lines = [
            ("network", "yes".to_string()),
            ("network_script", self.script.clone()),
            ("request", format!("agi://{server}/{}", self.script)),
            ("channel", self.channel.clone()),
            ("language", "en".into()),
            ("type", "Local".into()),
            ("uniqueid", self.uniqueid.clone()),
            ("version", "22.10.1+dfsg+~cs6.17.60671434-1".into()),
            ("callerid", self.callerid.clone()),
            ("calleridname", "unknown".into()),
            ("callingpres", "0".into()),
            ("callingani2", "0".into()),
            ("callington", "0".into()),
            ("callingtns", "0".into()),
            ("dnid", "unknown".into()),
            ("rdnis", "unknown".into()),
            ("context", self.context.clone()),
            ("extension", self.extension.clone()),
            ("priority", "1".into()),
            ("enhanced", "0.0".into()),
            ("accountcode", String::new()),
            ("threadid", "140578475525824".into()),
        ];
        let mut env = String::new();
        for (k, v) in lines {
            env.push_str("agi_");
            env.push_str(k);
            env.push_str(": ");
            env.push_str(&v);
            env.push('\n');
        }
        env.push('\n');
        env
    }

    /// Runs the session against the FastAGI server at `server` until the server closes it
    /// (or this side does, see `close_at_command`).
    pub async fn run(&self, server: SocketAddr) -> std::io::Result<AgiTranscript> {
        let stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(self.environment(server).as_bytes()).await?;
        let mut peer = Peer::new();
        while let Some(line) = lines.next_line().await? {
            let Some(reply) = peer.respond(self, line) else {
                break;
            };
            write.write_all(reply.as_bytes()).await?;
            peer.wrote();
        }
        Ok(peer.end())
    }

    /// [`FakeAgiCall::run`] the way Asterisk does it: in a thread of its own with blocking
    /// reads (`res_agi` runs in the channel's thread), so that noticing the bridge's
    /// command takes a kernel wake-up, not a turn on a shared async scheduler.
    pub fn run_blocking(&self, server: SocketAddr) -> std::io::Result<AgiTranscript> {
        use std::io::{BufRead, Write};
        let stream = std::net::TcpStream::connect(server)?;
        stream.set_nodelay(true)?;
        let mut write = stream.try_clone()?;
        let lines = std::io::BufReader::new(stream).lines();
        write.write_all(self.environment(server).as_bytes())?;
        let mut peer = Peer::new();
        for line in lines {
            let Some(reply) = peer.respond(self, line?) else {
                break;
            };
            write.write_all(reply.as_bytes())?;
            peer.wrote();
        }
        Ok(peer.end())
    }

    fn answer(&self, line: &str, t: &mut AgiTranscript, dead: &mut bool) -> String {
        let words = split_words(line);
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let first = |n: usize| upper.iter().take(n).map(String::as_str).collect::<Vec<_>>();
        match first(2).as_slice() {
            ["GET", "VARIABLE"] if words.len() == 3 => {
                let value = if words[2] == "CHANNEL(linkedid)" {
                    Some(self.linkedid.clone())
                } else {
                    t.variables.get(&words[2]).cloned()
                };
                match value {
                    Some(v) => format!("200 result=1 ({v})\n"),
                    None => "200 result=0\n".into(),
                }
            }
            ["SET", "VARIABLE"] if words.len() == 4 => {
                t.variables.insert(words[2].clone(), words[3].clone());
                "200 result=1\n".into()
            }
            ["SET", "VARIABLE"] | ["GET", "VARIABLE"] => {
                "520-Invalid command syntax.  Proper usage follows:\n Usage: SET VARIABLE <variablename> <value>\n520 End of proper usage.\n".into()
            }
            ["EXEC", ..] if words.len() >= 2 => {
                if words[1].eq_ignore_ascii_case("MSet") {
                    // `MSet(name=value,...)`: each pair as `Set` would (Asterisk's
                    // `pbx_builtin_setvar_multiple`); a pair without `=` is skipped.
                    let data = words.get(2).map_or("", String::as_str);
                    for (name, value) in data.split(',').filter_map(|p| p.split_once('=')) {
                        t.variables.insert(name.to_string(), value.to_string());
                    }
                    "200 result=0\n".into()
                } else if words[1].eq_ignore_ascii_case("Hangup") {
                    t.hangup_cause = Some(words.get(2).cloned().unwrap_or_default());
                    *dead = true;
                    "200 result=-1\nHANGUP\n".into()
                } else {
                    "200 result=0\n".into()
                }
            }
            ["VERBOSE", ..] | ["NOOP", ..] => "200 result=1\n".into(),
            _ if *dead => "511 Command Not Permitted on a dead channel or intercept routine\n".into(),
            _ => "510 Invalid or unknown command\n".into(),
        }
    }
}

/// One session in progress on this side: the transcript and the clock.
struct Peer {
    t: AgiTranscript,
    dead: bool,
    started: Instant,
    last_write: Instant,
}

impl Peer {
    /// Just after the environment block was written.
    fn new() -> Peer {
        let now = Instant::now();
        Peer {
            t: AgiTranscript {
                writes: vec![now],
                ..AgiTranscript::default()
            },
            dead: false,
            started: now,
            last_write: now,
        }
    }

    /// A command arrived: what to write back, or `None` to close the connection.
    fn respond(&mut self, call: &FakeAgiCall, line: String) -> Option<String> {
        self.t.arrivals.push(Instant::now());
        let step = self.last_write.elapsed();
        self.t.bridge_time += step;
        self.t.steps.push(step);
        let n = self.t.commands.len();
        self.t.commands.push(line.clone());
        if call.close_at_command == Some(n) {
            return None;
        }
        let mut reply = String::new();
        if call.hangup_before_command == Some(n) {
            self.dead = true;
            reply.push_str("HANGUP\n");
        }
        reply.push_str(&call.answer(&line, &mut self.t, &mut self.dead));
        Some(reply)
    }

    /// The reply is written: the bridge's time runs again.
    fn wrote(&mut self) {
        self.last_write = Instant::now();
        self.t.writes.push(self.last_write);
    }

    fn end(mut self) -> AgiTranscript {
        self.t.elapsed = self.started.elapsed();
        self.t
    }
}

/// Eight hex digits from a uniqueid's sequence number, as Asterisk names channels.
fn channel_suffix(uniqueid: &str) -> String {
    let seq: u64 = uniqueid
        .rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    format!("{seq:08x}")
}

/// Splits a command line like `res_agi` does: spaces and tabs separate words, `"` groups,
/// `\` escapes the next character.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' | '\t' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_like_res_agi() {
        assert_eq!(
            split_words(r#"SET VARIABLE "CALLERID(num)" "a \"b\" \\c""#),
            ["SET", "VARIABLE", "CALLERID(num)", r#"a "b" \c"#]
        );
        assert_eq!(split_words("GET  VARIABLE\tX"), ["GET", "VARIABLE", "X"]);
        assert_eq!(split_words(r#"EXEC Hangup """#), ["EXEC", "Hangup", ""]);
    }
}
