//! `demo`: the real daemon between an in-process Asterisk and an in-process Zammad, fed
//! with calls recorded on a real Asterisk 22, then a table of the calls as Zammad saw them.
//!
//! Nothing outside the process is needed: [`FakeZammad`] answers like Zammad (with a
//! blocked caller and an outbound routing rule, so that a reject and a caller-ID change
//! show), [`FakeAmi`] streams the recorded AMI bytes (tests/fixtures/ami-transcripts,
//! embedded), [`FakeAgiCall`] plays the dialplan's `AGI(agi://…/newcall)` where a recorded
//! call ran one, and [`daemon::run`] does the rest exactly as in production
//! (state dir in a temporary directory, FastAGI on `127.0.0.1:0`). Calls are played one
//! after the other; each is done when Zammad has its hangup.

use crate::ami::AmiMessage;
use crate::ami::codec::AmiCodec;
use crate::config::Config;
use crate::service::daemon;
use crate::standins::agi::{AgiTranscript, FakeAgiCall};
use crate::standins::ami::{FakeAmi, FakeAmiConfig};
use crate::standins::zammad::{FakeZammad, FakeZammadConfig, LogEntry, Route};
use anyhow::Context as _;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::codec::Encoder as _;
use tokio_util::sync::CancellationToken;

const INBOUND_ANSWERED: &[u8] = include_bytes!("demo/inbound-answered.txt");
const INBOUND_BUSY: &[u8] = include_bytes!("demo/inbound-busy.txt");
const INBOUND_NOANSWER: &[u8] = include_bytes!("demo/inbound-noanswer-caller-hangup.txt");
const QUEUE_ANSWERED: &[u8] = include_bytes!("demo/queue-answered.txt");
const AGI_INBOUND: &[u8] = include_bytes!("demo/agi-inbound.txt");
const OUTBOUND_ANSWERED: &[u8] = include_bytes!("demo/outbound-answered.txt");

/// The recordings' external caller, and the number the blocked call is given instead.
const RECORDED_CALLER: &str = "+15555550100";
const BLOCKED_CALLER: &str = "+15555550166";
/// What Zammad's block list and routing table hold (numbers as the bridge sends them).
const BLOCKED: &str = "15555550166";
const ROUTE_DEST: &str = "1555*";
const ROUTE_CALLER_ID: &str = "493023125877";

/// The bridge config of the recording lab (`demo/README.md`).
const LAB_CONFIG: &str = r#"
[calls]
inbound_contexts = ["from-trunk"]
outbound_contexts = ["from-internal"]
[numbers]
country_code = "1"
[agents]
"201" = { name = "Alice", number = "4930123456201" }
"202" = "Bob"
"203" = "Carol"
"204" = "Dave"
[agi]
listen = "127.0.0.1:0"
[admin]
listen = ""
[state]
shutdown_grace = "2s"
"#;

/// How long one call may take from its first event to Zammad's answer to its hangup.
const PER_CALL: Duration = Duration::from_secs(5);

/// Runs the demo and prints its table on `out`.
pub fn run(out: &mut dyn Write) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let started = Instant::now();
    let state_dir = std::env::temp_dir().join(format!(
        "asterisk-zammad-bridge-demo-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = runtime.block_on(play(state_dir.clone()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let report = result?;
    print_report(out, &report, started.elapsed())?;
    Ok(())
}

/// What the demo saw: Zammad's caller log, its answers to each newCall, and what the
/// FastAGI sessions did, by callId.
struct Report {
    calls: Vec<LogEntry>,
    answers: HashMap<String, String>,
    agi: HashMap<String, AgiTranscript>,
    /// Breaches of Zammad's rules for a bridge (docs/zammad.md); none expected.
    violations: Vec<String>,
}

async fn play(state_dir: PathBuf) -> anyhow::Result<Report> {
    let zammad = FakeZammad::start(FakeZammadConfig {
        token: format!("demo-{}", fastrand::u64(..)),
        blocked: vec![BLOCKED.into()],
        routes: vec![Route::new(ROUTE_DEST, ROUTE_CALLER_ID)],
        ..FakeZammadConfig::default()
    })
    .await
    .context("failed to start the in-process zammad")?;
    let ami = FakeAmi::start(FakeAmiConfig {
        username: "zammad".into(),
        secret: "demo".into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let mut config = Config::from_toml_str(LAB_CONFIG).context("the demo config")?;
    config.ami.address = ami.addr().into();
    config.ami.username = "zammad".into();
    config.ami.secret = Some("demo".to_string().into());
    config.zammad.url = Some(zammad.url().parse().map_err(anyhow::Error::msg)?);
    config.state.dir = state_dir;

    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let no_reloads = tokio::sync::mpsc::unbounded_channel().1;
    let daemon = tokio::spawn(daemon::run(config, shutdown.clone(), ready_tx, no_reloads));
    let listening = match tokio::time::timeout(PER_CALL, ready).await {
        Ok(Ok(listening)) => listening,
        _ => {
            shutdown.cancel();
            return match daemon.await {
                Ok(Err(error)) => Err(error.context("the daemon did not start")),
                _ => Err(anyhow::anyhow!("the daemon did not start in time")),
            };
        }
    };
    let agi = listening.agi.context("FastAGI is not listening")?;
    tokio::time::timeout(PER_CALL, ami.wait_logged_in())
        .await
        .context("the daemon did not log in to the in-process AMI")?;

    let mut agi_sessions = Vec::new();
    let mut hangups = 0;
    let played = async {
        // Calls seen only on AMI.
        for transcript in [
            INBOUND_ANSWERED,
            INBOUND_BUSY,
            INBOUND_NOANSWER,
            QUEUE_ANSWERED,
        ] {
            send(&ami, transcript)?;
            hangups += 1;
            wait_for_hangups(&zammad, hangups).await?;
        }

        // A blocked caller: the dialplan runs the AGI before its Dial; the bridge hangs
        // the channel up with cause 17, which Asterisk reports over AMI.
        let recorded = replace(AGI_INBOUND, RECORDED_CALLER, BLOCKED_CALLER);
        let (before_dial, _) = split_before(&recorded, |f| f.starts_with("Event: DialBegin"));
        send(&ami, before_dial)?;
        let mut call =
            FakeAgiCall::inbound("1795596443.48", "1795596443.49", BLOCKED_CALLER, "800");
        call.channel = "Local/800@from-trunk-00000018;2".into();
        agi_sessions.push(run_agi(&call, agi).await?);
        send_bytes(&ami, blocked_call_hangups())?;
        hangups += 1;
        wait_for_hangups(&zammad, hangups).await?;

        // An outbound call: the phone's channel runs the AGI before the Dial that leaves
        // the PBX, and gets the caller ID Zammad's routing table names.
        let (before, after) = split_before(OUTBOUND_ANSWERED, |f| {
            f.starts_with("Event: DialBegin") && f.contains("\r\nChannel: ")
        });
        send(&ami, before)?;
        let mut call =
            FakeAgiCall::outbound("1795596391.16", "1795596391.17", "201", "+15555550199");
        call.channel = "Local/+15555550199@from-internal-00000008;2".into();
        agi_sessions.push(run_agi(&call, agi).await?);
        send(&ami, after)?;
        hangups += 1;
        wait_for_hangups(&zammad, hangups).await?;
        anyhow::Ok(())
    }
    .await;

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), daemon).await;
    played?;
    match stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => return Err(error.context("the daemon failed")),
        Ok(Err(panic)) => anyhow::bail!("the daemon panicked: {panic}"),
        Err(_) => anyhow::bail!("the daemon did not stop in time"),
    }

    let answers = zammad
        .requests()
        .into_iter()
        .filter(|r| r.event() == Some("newCall"))
        .filter_map(|r| Some((r.call_id()?, r.response_body?)))
        .collect();
    let agi = agi_sessions
        .into_iter()
        .filter_map(|t| Some((t.variables.get("ZAMMAD_CALLID")?.clone(), t)))
        .collect();
    Ok(Report {
        calls: zammad.calls(),
        violations: zammad.violations(),
        answers,
        agi,
    })
}

fn send(ami: &FakeAmi, transcript: &[u8]) -> anyhow::Result<()> {
    ami.send_events(transcript)
        .map(|_| ())
        .context("the daemon is not logged in to the in-process AMI")
}

fn send_bytes(ami: &FakeAmi, bytes: bytes::Bytes) -> anyhow::Result<()> {
    anyhow::ensure!(
        ami.send_raw(bytes),
        "the daemon is not logged in to the in-process AMI"
    );
    Ok(())
}

async fn run_agi(call: &FakeAgiCall, agi: std::net::SocketAddr) -> anyhow::Result<AgiTranscript> {
    tokio::time::timeout(PER_CALL, call.run(agi))
        .await
        .context("the FastAGI session did not end in time")?
        .context("the FastAGI session failed")
}

/// Waits until Zammad has answered `n` hangups.
async fn wait_for_hangups(zammad: &FakeZammad, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + PER_CALL;
    loop {
        let done = zammad
            .requests()
            .iter()
            .filter(|r| r.event() == Some("hangup") && r.status.is_some())
            .count();
        if done >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "zammad got {done} of {n} hangups in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8_lossy(bytes)
        .replace(from, to)
        .into_bytes()
}

/// Splits recorded bytes before the first frame for which `at` holds (all of them if
/// none does).
fn split_before(bytes: &[u8], at: impl Fn(&str) -> bool) -> (&[u8], &[u8]) {
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(bytes.len(), |p| start + p + 4);
        if at(&String::from_utf8_lossy(&bytes[start..end])) {
            return (&bytes[..start], &bytes[start..]);
        }
        start = end;
    }
    (bytes, &[])
}

/// The Hangup events of the blocked call's two channels after the AGI's `EXEC Hangup 17`.
fn blocked_call_hangups() -> bytes::Bytes {
    let hangup = |channel: &str, uniqueid: &str| {
        AmiMessage::from_pairs([
            ("Event", "Hangup"),
            ("Privilege", "call,all"),
            ("Channel", channel),
            ("ChannelState", "4"),
            ("CallerIDNum", BLOCKED_CALLER),
            ("Context", "from-trunk"),
            ("Exten", "800"),
            ("Uniqueid", uniqueid),
            ("Linkedid", "1795596443.48"),
            ("Cause", "17"),
            ("Cause-txt", "User busy"),
        ])
    };
    let mut buf = bytes::BytesMut::new();
    for event in [
        hangup("Local/800@from-trunk-00000018;2", "1795596443.49"),
        hangup("Local/800@from-trunk-00000018;1", "1795596443.48"),
    ] {
        // Fixed, well-formed headers: encoding cannot fail.
        let _ = AmiCodec::new().encode(&event, &mut buf);
    }
    buf.freeze()
}

/// What Zammad answered a newCall, in words, and how the bridge carried it out.
fn decision(report: &Report, call_id: &str) -> String {
    let answer = report.answers.get(call_id).map(String::as_str);
    let parsed = answer.and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok());
    let action = parsed
        .as_ref()
        .and_then(|v| v.get("action"))
        .and_then(|v| v.as_str());
    let agi = report.agi.get(call_id);
    match action {
        Some("reject") => {
            let how = match agi.and_then(|t| t.hangup_cause.as_deref()) {
                Some(cause) => format!(" (FastAGI: Hangup({cause}))"),
                None => String::new(),
            };
            format!("rejected as busy{how}")
        }
        Some("dial") => {
            let caller_id = parsed
                .as_ref()
                .and_then(|v| v.get("caller_id"))
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            let how = if agi.is_some_and(|t| t.variables.contains_key("CALLERID(num)")) {
                " (FastAGI: CALLERID(num))"
            } else {
                ""
            };
            format!("caller ID set to {caller_id}{how}")
        }
        _ => "-".into(),
    }
}

fn print_report(out: &mut dyn Write, report: &Report, took: Duration) -> std::io::Result<()> {
    let header = [
        "callId",
        "dir",
        "from",
        "to",
        "answered by",
        "result",
        "zammad's answer",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for call in &report.calls {
        let inbound = call.direction == "in";
        let answered_by = match (call.answered, inbound) {
            (false, _) => "-".to_string(),
            (true, true) => call.to_comment.clone().unwrap_or_else(|| "?".into()),
            (true, false) => "the callee".into(),
        };
        let cause = call.comment.clone().unwrap_or_default();
        let result = if inbound && !call.done {
            format!("missed ({cause})")
        } else {
            cause
        };
        rows.push([
            call.call_id.clone(),
            if inbound { "in" } else { "out" }.into(),
            match &call.from_comment {
                Some(name) if !name.is_empty() => format!("{} ({name})", call.from),
                _ => call.from.clone(),
            },
            call.to.clone(),
            answered_by,
            result,
            decision(report, &call.call_id),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text
    };
    writeln!(
        out,
        "{} calls recorded on a real Asterisk 22, replayed through the bridge into a \
         stand-in Zammad ({} ms):\n",
        rows.len(),
        took.as_millis()
    )?;
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    writeln!(
        out,
        "\nThis is Zammad's caller log. \"missed\": an inbound call nobody answered \
         (done = false); \"result\": the\nhangup cause the bridge sent. The stand-in \
         Zammad blocks {BLOCKED} and gives calls to {ROUTE_DEST} the\ncaller ID \
         {ROUTE_CALLER_ID}; those two calls ran the dialplan's \
         AGI(agi://127.0.0.1:4573/newcall), so the\nbridge rejected the one and set the \
         caller ID of the other before Asterisk dialed."
    )?;
    for violation in &report.violations {
        writeln!(out, "zammad's rules broken: {violation}")?;
    }
    Ok(())
}
