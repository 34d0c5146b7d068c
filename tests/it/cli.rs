//! The binary's command line: exit codes and messages of `check`, `demo` and `replay`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/asterisk-examples/config.toml");

static TEMP: AtomicUsize = AtomicUsize::new(0);

/// A config file with `content`, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(content: &str) -> Self {
        let n = TEMP.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("azb-cli-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the binary with `args` (`{}` stands for the path of `config`) and checks its exit
/// code and that stdout and stderr contain the given strings.
fn check(args: &[&str], config: Option<&str>, code: i32, stdout: &str, stderr: &str) {
    let file = config.map(TempConfig::new);
    let path = file
        .as_ref()
        .map_or(EXAMPLE.to_string(), |f| f.0.display().to_string());
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", &path)).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    command.args(&args);
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("AZB__")
        {
            command.env_remove(name);
        }
    }
    let output = command.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        out.contains(stdout),
        "{args:?}: stdout {out:?} lacks {stdout:?}"
    );
    assert!(
        err.contains(stderr),
        "{args:?}: stderr {err:?} lacks {stderr:?}"
    );
}

const MINIMAL: &str = "[ami]\nsecret = \"x\"\n[zammad]\nurl = \"https://z.example/api/v1/cti/T\"\n";

#[test]
fn check_offline_accepts_the_shipped_example() {
    check(
        &["check", "--offline", "-c", "{}"],
        None,
        0,
        "config OK",
        "",
    );
}

#[test]
fn check_and_run_exit_78_on_an_invalid_config() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["check", "--offline", "-c", "{}"],
            "[ami]\nsecert = \"x\"\n",
            r#"unknown key "ami.secert""#,
        ),
        (
            &["check", "--offline", "-c", "{}"],
            "[log]\nformat = \"xml\"\n",
            "log.format: expected",
        ),
        (
            &["check", "--offline", "-c", "{}"],
            "[zammad]\nurl = \"https://z.example/x\"\n",
            "ami.secret is required",
        ),
        (&["check", "-c", "{}"], "[ami\n", "invalid TOML in /"),
        (
            &["check", "-c", "{}"],
            "[[ami]]\n",
            "ami: expected a table [ami]",
        ),
        (
            &["-c", "{}"],
            "[ami]\nsecert = \"x\"\n",
            r#"unknown key "ami.secert""#,
        ),
        (
            &["run", "-c", "{}"],
            "[ami]\nsecret = \"x\"\n",
            "zammad.url is required",
        ),
        (
            &["replay", "-c", "{}", "/nonexistent"],
            "[agi]\nreject = \"drop\"\n",
            "agi.reject: expected",
        ),
    ];
    for (args, config, stderr) in cases {
        check(args, Some(config), 78, "", stderr);
    }
    check(
        &["check", "--offline", "-c", "/nonexistent/azb.toml"],
        None,
        78,
        "",
        "failed to read config file /nonexistent/azb.toml: ",
    );
}

/// Runs the binary with `args` without blocking the runtime the stand-ins serve on;
/// returns the exit code, stdout and stderr.
async fn run_async(args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const CHECK_TOKEN: &str = "Zx9-check-token_0123456789abc";
const AMI_SECRET: &str = "ami-s3cret-value";

/// `check` (online) against a stand-in AMI at `ami` and a Zammad URL.
async fn check_online(ami: &str, url: &str, secret: &str) -> (Option<i32>, String, String) {
    let config = TempConfig::new(&format!(
        "[ami]\naddress = \"{ami}\"\nusername = \"zammad\"\nsecret = \"{secret}\"\n\
         [zammad]\nurl = \"{url}\"\ntimeout = \"3s\"\n"
    ));
    let path = config.0.display().to_string();
    let result = run_async(&["check", "-c", &path]).await;
    let all = format!("{}{}", result.1, result.2);
    assert!(!all.contains(CHECK_TOKEN), "the token was printed: {all}");
    assert!(!all.contains(AMI_SECRET), "the secret was printed: {all}");
    result
}

async fn stand_ins() -> (
    asterisk_zammad_bridge::fake_ami::FakeAmi,
    asterisk_zammad_bridge::fake_zammad::FakeZammad,
) {
    use asterisk_zammad_bridge::fake_ami::{FakeAmi, FakeAmiConfig};
    use asterisk_zammad_bridge::fake_zammad::{FakeZammad, FakeZammadConfig};
    let ami = FakeAmi::start(FakeAmiConfig {
        username: "zammad".into(),
        secret: AMI_SECRET.into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let zammad = FakeZammad::start(FakeZammadConfig {
        token: CHECK_TOKEN.into(),
        ..FakeZammadConfig::default()
    })
    .await
    .unwrap();
    (ami, zammad)
}

/// A loopback address nobody listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn check_passes_against_a_working_asterisk_and_zammad_and_creates_no_call() {
    let (ami, zammad) = stand_ins().await;
    let (code, out, err) = check_online(&ami.addr().to_string(), &zammad.url(), AMI_SECRET).await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("config OK"), "{out}");
    let want = format!("ami: ok (logged in as zammad at {}", ami.addr());
    assert!(out.contains(&want), "{out}");
    assert!(out.contains("zammad: ok (reachable at http://"), "{out}");
    // The probes: CoreShowChannels and a Setvar naming a channel, never a global one.
    let actions: Vec<String> = ami
        .actions()
        .iter()
        .map(|a| a.get("Action").unwrap_or_default().to_string())
        .collect();
    assert!(
        actions.contains(&"CoreShowChannels".to_string()),
        "{actions:?}"
    );
    let setvar = ami
        .actions()
        .into_iter()
        .find(|a| a.get("Action") == Some("Setvar"))
        .expect("a Setvar");
    assert!(setvar.get("Channel").is_some_and(|c| !c.is_empty()));
    // Zammad was asked once, refused it after the token check, and stored no call.
    let requests = zammad.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, Some(422));
    assert_eq!(zammad.calls(), Vec::new());
    assert_eq!(zammad.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn check_fails_on_a_wrong_token_or_a_disabled_integration() {
    let (ami, zammad) = stand_ins().await;
    let ami_addr = ami.addr().to_string();
    let wrong = zammad
        .url()
        .replace(CHECK_TOKEN, "Wr0ng-token_0123456789abcdef");
    let (code, out, err) = check_online(&ami_addr, &wrong, AMI_SECRET).await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("ami: ok"), "{out}");
    assert!(out.contains("zammad: token wrong"), "{out}");
    assert!(!out.contains("Wr0ng-token"), "{out}");

    zammad.set_enabled(false);
    let (code, out, err) = check_online(&ami_addr, &zammad.url(), AMI_SECRET).await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("zammad: CTI integration disabled"), "{out}");

    zammad.set_enabled(true);
    zammad.set_configured(false);
    let (code, out, _) = check_online(&ami_addr, &zammad.url(), AMI_SECRET).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("zammad: CTI integration not configured"),
        "{out}"
    );
    assert_eq!(zammad.calls(), Vec::new());
}

#[tokio::test]
async fn check_fails_on_a_wrong_secret_a_missing_permission_or_nothing_listening() {
    let (ami, zammad) = stand_ins().await;
    let ami_addr = ami.addr().to_string();
    let (code, out, err) = check_online(&ami_addr, &zammad.url(), "not-the-secret").await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("ami: login as zammad at"), "{out}");
    assert!(out.contains("wrong ami.secret"), "{out}");
    assert!(out.contains("zammad: ok"), "{out}");

    ami.set_reply(
        "CoreShowChannels",
        asterisk_zammad_bridge::ami::AmiMessage::from_pairs([
            ("Response", "Error"),
            ("Message", "Permission denied"),
        ]),
    );
    let (code, out, _) = check_online(&ami_addr, &zammad.url(), AMI_SECRET).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("may not send CoreShowChannels"), "{out}");
    assert!(out.contains("write = reporting"), "{out}");

    let nobody = closed_port();
    let url = format!("http://{}/api/v1/cti/{CHECK_TOKEN}", closed_port());
    let (code, out, err) = check_online(&nobody, &url, AMI_SECRET).await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("ami: connection refused"), "{out}");
    assert!(out.contains("zammad: unreachable"), "{out}");
    assert_eq!(zammad.calls(), Vec::new());
}

#[tokio::test]
async fn demo_shows_inbound_outbound_rejected_and_missed_calls_within_10_s() {
    let started = std::time::Instant::now();
    let (code, out, err) = run_async(&["demo"]).await;
    let took = started.elapsed();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("17955963") || l.starts_with("17955964"))
        .collect();
    assert_eq!(rows.len(), 6, "{out}");
    assert!(!out.contains("rules broken"), "{out}");
    let row = |call_id: &str| {
        *rows
            .iter()
            .find(|r| r.starts_with(call_id))
            .unwrap_or_else(|| panic!("no row for {call_id}: {out}"))
    };
    // Answered by Alice; busy and unanswered are missed; the blocked caller is rejected
    // through FastAGI; the outbound call gets Zammad's caller ID.
    let answered = row("1795596369.0 ");
    assert!(
        answered.contains(" in ") && answered.contains("Alice"),
        "{answered}"
    );
    assert!(row("1795596377.4 ").contains("missed (busy)"), "{out}");
    assert!(row("1795596378.8 ").contains("missed"), "{out}");
    let blocked = row("1795596443.48 ");
    assert!(blocked.contains("rejected as busy"), "{blocked}");
    assert!(blocked.contains("15555550166"), "{blocked}");
    let outbound = row("1795596391.16 ");
    assert!(outbound.contains(" out "), "{outbound}");
    assert!(
        outbound.contains("caller ID set to 493023125877"),
        "{outbound}"
    );
}

#[test]
fn arguments_follow_design_section_2() {
    // clap's usage errors exit with 2.
    check(&["replay"], None, 2, "", "TRANSCRIPT");
    check(&["-c", "{}", "check"], None, 2, "", "");
    check(&["check", "--online"], None, 2, "", "--online");
    check(&["--help"], None, 0, "replay", "");
}

#[test]
fn run_names_an_unusable_state_dir_and_exits_1() {
    // A regular file where the state directory should be.
    let file = TempConfig::new("not a directory");
    let config = format!(
        "{MINIMAL}[agi]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[state]\ndir = \"{}/sub\"\n",
        file.0.display()
    );
    check(&["run", "-c", "{}"], Some(&config), 1, "", "state.dir ");
}

/// The real binary on loopback, stopped by SIGTERM mid-call: it exits 0 and a new one on
/// the same state dir sends the call's remaining events, under the same callId.
#[tokio::test]
async fn sigterm_stops_cleanly_and_the_next_start_goes_on() {
    use crate::support::{call_events, temp_dir};
    use asterisk_zammad_bridge::ami::codec::AmiCodec;
    use asterisk_zammad_bridge::fake_ami::{FakeAmi, FakeAmiConfig};
    use asterisk_zammad_bridge::fake_zammad::{FakeZammad, FakeZammadConfig};
    use tokio_util::codec::Encoder;

    let zammad = FakeZammad::start(FakeZammadConfig::default())
        .await
        .unwrap();
    let ami = FakeAmi::start(FakeAmiConfig::default()).await;
    let state = temp_dir("sigterm");
    let config = TempConfig::new(&format!(
        "[ami]\naddress = \"{}\"\nusername = \"bridge\"\nsecret = \"bridge-secret\"\n\
         [zammad]\nurl = \"{}\"\n[agi]\nlisten = \"\"\n[admin]\nlisten = \"\"\n\
         [calls]\ninbound_contexts = [\"from-trunk\"]\n[numbers]\ncountry_code = \"1\"\n\
         [state]\ndir = \"{}\"\n",
        ami.addr(),
        zammad.url(),
        state.display()
    ));
    let start = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"))
            .args(["run", "-c"])
            .arg(&config.0)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let encode = |events: &[asterisk_zammad_bridge::ami::AmiMessage]| {
        let mut buf = bytes::BytesMut::new();
        for e in events {
            AmiCodec::new().encode(e, &mut buf).unwrap();
        }
        buf.freeze()
    };
    let accepted = |zammad: &FakeZammad| {
        zammad
            .requests()
            .iter()
            .filter(|r| r.status == Some(200))
            .map(|r| r.event().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    let events = call_events(7);
    let first = start();
    tokio::time::timeout(std::time::Duration::from_secs(10), ami.wait_logins(1))
        .await
        .expect("logs in");
    ami.send_raw(encode(&events[..5]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while accepted(&zammad).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "newCall and answer");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = first.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), first.wait_with_output())
        .await
        .expect("stops in time")
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    // The call is still up when the next daemon starts.
    ami.set_channels(crate::recovery::live_channels(7));
    let second = start();
    tokio::time::timeout(std::time::Duration::from_secs(10), ami.wait_logins(2))
        .await
        .expect("logs in again");
    ami.send_raw(encode(&events[5..]));
    while accepted(&zammad).len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the hangup");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(accepted(&zammad), ["newCall", "answer", "hangup"]);
    assert_eq!(zammad.violations(), Vec::<String>::new());
    let pid = second.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = second.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(state);
}
