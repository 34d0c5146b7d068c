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

#[test]
fn unfinished_commands_say_so_and_fail() {
    check(
        &["check", "-c", "{}"],
        Some(MINIMAL),
        1,
        "config OK",
        "not implemented yet",
    );
    check(&["demo"], None, 1, "", "not implemented yet");
}

#[test]
fn arguments_follow_design_section_2() {
    // clap's usage errors exit with 2.
    check(&["replay"], None, 2, "", "TRANSCRIPT");
    check(&["-c", "{}", "check"], None, 2, "", "");
    check(&["check", "--online"], None, 2, "", "--online");
    check(&["--help"], None, 0, "replay", "");
}
