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
    crate::support::without_azb_env(&mut command);
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

/// The shipped examples pass `check --offline` once their two placeholders are replaced
/// (here by environment, as `.ci/run` does), and are refused with exit 78 while they are
/// not.
#[test]
fn check_offline_accepts_the_shipped_examples_but_not_their_placeholders() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asterisk-examples");
    for example in ["config.toml", "config-freepbx.toml"] {
        let path = examples.join(example);
        let run = |env: &[(&str, &str)]| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
            command.args(["check", "--offline", "-c"]).arg(&path);
            crate::support::without_azb_env(&mut command);
            command
                .env_remove("CREDENTIALS_DIRECTORY")
                .envs(env.iter().copied());
            command.output().unwrap()
        };
        let placeholders = run(&[]);
        assert_eq!(placeholders.status.code(), Some(78), "{example}");
        let stderr = String::from_utf8_lossy(&placeholders.stderr);
        assert!(
            stderr.contains("ami.secret is still the example's placeholder \"change-me\""),
            "{example}: {stderr}"
        );
        let url_left = run(&[("AZB__AMI__SECRET", "s3cret")]);
        assert_eq!(url_left.status.code(), Some(78), "{example}");
        let stderr = String::from_utf8_lossy(&url_left.stderr);
        assert!(
            stderr.contains("zammad.url is still the example's placeholder \"…/TOKEN\""),
            "{example}: {stderr}"
        );
        let real = run(&[
            ("AZB__AMI__SECRET", "s3cret"),
            (
                "AZB__ZAMMAD__URL",
                "https://zammad.example.com/api/v1/cti/aB3dE6",
            ),
        ]);
        assert_eq!(real.status.code(), Some(0), "{example}: {real:?}");
        assert_eq!(String::from_utf8_lossy(&real.stdout), "config OK\n");
    }
}

#[test]
fn check_and_run_exit_78_on_an_invalid_config_or_one_they_cannot_run_with() {
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
        // Parses as a duration, but no timer can be set that far ahead.
        (
            &["run", "-c", "{}"],
            "[ami]\nsecret = \"x\"\nreconcile_interval = \"500000000000y\"\n",
            "ami.reconcile_interval: must be at most 100years",
        ),
    ];
    // Settings the daemon could not run with: refused at load by run and check alike, so
    // that systemd (RestartPreventExitStatus=78) never restarts it in a loop.
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let unrunnable: Vec<(String, &str)> = vec![
        (
            MINIMAL.replace("secret = \"x\"", "secret = \"change-me\""),
            "ami.secret is still the example's placeholder",
        ),
        (
            MINIMAL.replace("/cti/T", "/cti/TOKEN"),
            "zammad.url is still the example's placeholder",
        ),
        (
            MINIMAL.replace("/cti/T", "/cti/T/"),
            "zammad.url: the path must end in the CTI token",
        ),
        (
            format!("{MINIMAL}[agi]\nlisten = \"127.0.0.1:573\"\n"),
            "agi.listen: port 573 is privileged",
        ),
        (
            format!("{MINIMAL}[admin]\nlisten = \"127.0.0.1:80\"\n"),
            "admin.listen: port 80 is privileged",
        ),
        (
            MINIMAL.replace(
                "[ami]\n",
                "[ami]\ntls = true\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            ),
            "ami.tls_ca_file: failed to read /nonexistent/ca.pem",
        ),
        (
            MINIMAL.replace(
                "[ami]\n",
                &format!("[ami]\ntls = true\ntls_ca_file = \"{not_pem}\"\n"),
            ),
            "ami.tls_ca_file: ",
        ),
        (
            MINIMAL.replace(
                "[ami]\n",
                "[ami]\ntls = true\ntls_server_name = \"not a name\"\n",
            ),
            "ami.tls_server_name: ",
        ),
        (
            MINIMAL.replace(
                "[ami]\n",
                &format!("[ami]\ntls = true\ntls_ca_file = \"{ca}\"\naddress = \"[::1:5039\"\n"),
            ),
            "ami.address: ",
        ),
    ];
    for (config, stderr) in &unrunnable {
        for args in [
            &["run", "-c", "{}"][..],
            &["check", "--offline", "-c", "{}"],
        ] {
            check(args, Some(config), 78, "", stderr);
        }
    }
    for (args, config, stderr) in cases {
        if stderr.ends_with(" is required") && crate::support::etc_has_credentials() {
            continue; // found in /etc: see etc_has_credentials
        }
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
    asterisk_zammad_bridge::standins::ami::FakeAmi,
    asterisk_zammad_bridge::standins::zammad::FakeZammad,
) {
    use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
    use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
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
fn usage_errors_exit_2_and_help_lists_the_commands() {
    // clap's usage errors exit with 2.
    check(&["replay"], None, 2, "", "TRANSCRIPT");
    check(&["-c", "{}", "check"], None, 2, "", "");
    check(&["check", "--online"], None, 2, "", "--online");
    check(&["--help"], None, 0, "replay", "");
}

#[test]
fn run_refuses_a_state_dir_that_cannot_be_one_with_78() {
    // A regular file where the state directory should be.
    let file = TempConfig::new("not a directory");
    let config = format!(
        "{MINIMAL}[agi]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[state]\ndir = \"{}/sub\"\n",
        file.0.display()
    );
    check(&["run", "-c", "{}"], Some(&config), 78, "", "state.dir: ");
    check(
        &["check", "--offline", "-c", "{}"],
        Some(&config),
        78,
        "",
        "state.dir: ",
    );
}

/// The real binary on loopback, stopped by SIGTERM mid-call: it exits 0 and a new one on
/// the same state dir sends the call's remaining events, under the same callId.
#[tokio::test]
async fn sigterm_stops_cleanly_and_the_next_start_goes_on() {
    use crate::support::{call_events, encode, temp_dir};
    use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
    use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};

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

/// SIGHUP reloads `[agents]` (a new name shows on the next call; a call under way goes on)
/// and says which other changes need a restart; an invalid file keeps the running config.
#[tokio::test]
async fn sighup_reloads_agents_and_names_what_needs_a_restart() {
    use crate::support::{call_events, encode, temp_dir};
    use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
    use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
    use std::time::{Duration, Instant};

    let zammad = FakeZammad::start(FakeZammadConfig::default())
        .await
        .unwrap();
    let ami = FakeAmi::start(FakeAmiConfig::default()).await;
    let dir = temp_dir("sighup");
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.toml");
    let write_config = |alice: &str, ping: &str| {
        std::fs::write(
            &config_path,
            format!(
                "[ami]\naddress = \"{}\"\nusername = \"bridge\"\nsecret = \"bridge-secret\"\n\
                 ping_interval = \"{ping}\"\n[zammad]\nurl = \"{}\"\n[agi]\nlisten = \"\"\n\
                 [admin]\nlisten = \"\"\n[calls]\ninbound_contexts = [\"from-trunk\"]\n\
                 [numbers]\ncountry_code = \"1\"\n[agents]\n\"201\" = \"{alice}\"\n\
                 [state]\ndir = \"{}\"\n",
                ami.addr(),
                zammad.url(),
                dir.join("state").display()
            ),
        )
        .unwrap();
    };
    write_config("Alice", "15s");
    let log_path = dir.join("daemon.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"))
        .args(["run", "-c"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    let wait = |what: &'static str, ok: &dyn Fn() -> bool| {
        assert!(Instant::now() < deadline, "waiting for {what}:\n{}", log());
        !ok()
    };
    let answers = || {
        zammad
            .requests()
            .iter()
            .filter(|r| r.event() == Some("answer") && r.status == Some(200))
            .map(|r| r.params["user"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    tokio::time::timeout(Duration::from_secs(10), ami.wait_logins(1))
        .await
        .expect("logs in");
    ami.send_raw(encode(&call_events(21)));
    while wait("the first answer", &|| answers().len() == 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap().to_string();
    // Broken file first: nothing changes.
    std::fs::write(&config_path, "[ami]\nsecert = \"x\"\n").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    while wait("the refused reload", &|| {
        log().contains("keeping the running one")
    }) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_config("Alice Renamed", "20s");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    while wait("the reload", &|| log().contains("config reloaded")) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        log().contains("take effect only after a restart"),
        "{}",
        log()
    );
    assert!(log().contains("\"ami\""), "{}", log());
    ami.send_raw(encode(&call_events(22)));
    while wait("the second answer", &|| answers().len() == 2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answers(), ["Alice", "Alice Renamed"]);
    assert_eq!(zammad.violations(), Vec::<String>::new());
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    let _ = std::fs::remove_dir_all(dir);
}

/// A full run at debug level, in both log formats: calls, a FastAGI reject, Zammad
/// refusing a token, AMI refusing a secret. The log never holds the Zammad token or the AMI
/// secret, and holds no phone number unless `log.show_numbers` is on.
#[tokio::test]
async fn logs_never_show_secrets_and_numbers_only_when_asked() {
    use crate::support::{call_events, encode, temp_dir};
    use asterisk_zammad_bridge::standins::agi::FakeAgiCall;
    use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
    use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
    use std::time::{Duration, Instant};

    const TOKEN: &str = "tok3nZammadXYZ";
    const SECRET: &str = "s3cr3tAmiPw";
    const CALLER: &str = "5555550100";
    const CALLER_2: &str = "5550000031";
    let zammad = FakeZammad::start(FakeZammadConfig {
        token: TOKEN.into(),
        blocked: vec![format!("1{CALLER}")],
        ..FakeZammadConfig::default()
    })
    .await
    .unwrap();
    let ami = FakeAmi::start(FakeAmiConfig {
        username: "zammad".into(),
        secret: SECRET.into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let run = |format: &'static str, show_numbers: bool, secret: &'static str, url: String| {
        let dir = temp_dir("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let agi_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[ami]\naddress = \"{}\"\nusername = \"zammad\"\nsecret = \"{secret}\"\n\
                 [zammad]\nurl = \"{url}\"\n[agi]\nlisten = \"127.0.0.1:{agi_port}\"\n\
                 [admin]\nlisten = \"\"\n[calls]\ninbound_contexts = [\"from-trunk\"]\n\
                 [numbers]\ncountry_code = \"1\"\n[agents]\n\"201\" = \"Alice\"\n\
                 [state]\ndir = \"{}\"\n[log]\nformat = \"{format}\"\nlevel = \"debug\"\n\
                 show_numbers = {show_numbers}\n",
                ami.addr(),
                dir.join("state").display()
            ),
        )
        .unwrap();
        let log_path = dir.join("daemon.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"))
            .args(["run", "-c"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (dir, log_path, child, agi_port)
    };
    let good_url = zammad.url();
    assert!(good_url.contains(TOKEN));
    let wrong_url = good_url.replace(TOKEN, "wrongTok3nABC");
    let mut logs = Vec::new();
    for (format, show) in [("text", false), ("json", false), ("text", true)] {
        let hangups_before = zammad
            .requests()
            .iter()
            .filter(|r| r.event() == Some("hangup"))
            .count();
        let (dir, log_path, mut child, agi_port) = run(format, show, SECRET, good_url.clone());
        let logins = ami.logins();
        tokio::time::timeout(Duration::from_secs(10), ami.wait_logins(logins + 1))
            .await
            .expect("logs in");
        ami.send_raw(encode(&call_events(31)));
        let agi = std::net::SocketAddr::from(([127, 0, 0, 1], agi_port));
        let blocked = FakeAgiCall::inbound(
            &format!("1700000000.{}", logs.len() * 2),
            &format!("1700000000.{}", logs.len() * 2 + 1),
            &format!("+1{CALLER}"),
            "800",
        );
        ami.send_raw(encode(&[blocked.newchannel()]));
        let t = blocked.run(agi).await.unwrap();
        assert_eq!(t.hangup_cause.as_deref(), Some("17"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while zammad
            .requests()
            .iter()
            .filter(|r| r.event() == Some("hangup") && r.status.is_some())
            .count()
            < hangups_before + 1
        {
            assert!(Instant::now() < deadline, "the call's hangup");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Command::new("kill")
            .args(["-TERM", &child.id().unwrap().to_string()])
            .status()
            .unwrap();
        child.wait().await.unwrap();
        logs.push((show, std::fs::read_to_string(&log_path).unwrap()));
        let _ = std::fs::remove_dir_all(dir);
    }
    // Zammad refuses the token, AMI refuses the secret.
    let (dir, log_path, mut child, _) = run("text", false, "wrongS3cretQQ", wrong_url);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    child.wait().await.unwrap();
    let refused = std::fs::read_to_string(&log_path).unwrap();
    assert!(refused.contains("zammad"), "{refused}");
    logs.push((false, refused));
    let _ = std::fs::remove_dir_all(dir);

    for (show_numbers, log) in &logs {
        for secret in [TOKEN, SECRET, "wrongTok3nABC", "wrongS3cretQQ"] {
            assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        }
        for number in [CALLER, CALLER_2] {
            if !show_numbers {
                assert!(!log.contains(number), "{number} in the log:\n{log}");
            }
        }
    }
    // With show_numbers, the numbers are there (the test could not fail otherwise).
    assert!(
        logs[2].1.contains(CALLER_2) || logs[2].1.contains(CALLER),
        "{}",
        logs[2].1
    );
}

/// `ami.tls = true` with nothing to trust (no system roots: `SSL_CERT_FILE` names an empty
/// file, as on a system without ca-certificates; no `ami.tls_ca_file`) is refused at load.
#[test]
fn tls_with_nothing_to_trust_is_refused_with_78() {
    let file = TempConfig::new(&MINIMAL.replace("[ami]\n", "[ami]\ntls = true\n"));
    let empty = TempConfig::new("");
    for args in [&["run", "-c"][..], &["check", "--offline", "-c"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
        command.args(args).arg(&file.0);
        crate::support::without_azb_env(&mut command);
        command
            .env("SSL_CERT_FILE", &empty.0)
            .env_remove("SSL_CERT_DIR");
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(stderr.contains("ami.tls: nothing to trust"), "{stderr}");
    }
}
