//! The files in `asterisk-examples/` agree with each other and with the daemon: the
//! configs load with the daemon's own parser, the dialplans call the FastAGI script the
//! daemon serves on the address the configs listen on, with parameters it knows, and the
//! manager.conf user is the one the configs log in as, with the classes the daemon needs.
//! (The real Asterisk loads the dialplan and manager.conf in the end-to-end tests.)

use asterisk_zammad_bridge::config::Config;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asterisk-examples")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(examples().join(name)).unwrap()
}

fn configs() -> Vec<(PathBuf, Config)> {
    let mut configs: Vec<(PathBuf, Config)> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let config =
                Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, config)
        })
        .collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    configs
}

/// The dialplan lines of a file (`exten =>` and `same =>`), each without its comment.
/// Commented-out lines that are dialplan (`;exten => ...`, `; same => ...`: examples for
/// the admin to enable) are included when `with_examples`.
fn dialplan_lines(dialplan: &str, with_examples: bool) -> Vec<String> {
    dialplan
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let uncommented = l.strip_prefix(';').map(str::trim_start);
            match uncommented {
                Some(example) if with_examples => Some(example),
                Some(_) => None,
                None => Some(l),
            }
        })
        .filter(|l| l.starts_with("exten =>") || l.starts_with("same =>"))
        .map(|l| l.split(';').next().unwrap().trim_end().to_string())
        .collect()
}

/// The `AGI(...)` URLs of a dialplan file, the commented-out examples included.
fn agi_urls(dialplan: &str) -> Vec<String> {
    dialplan_lines(dialplan, true)
        .iter()
        .filter_map(|l| l.split_once("AGI(").map(|(_, rest)| rest))
        .map(|rest| rest.split([')', ',']).next().unwrap().to_string())
        .collect()
}

/// The application of a dialplan line and its arguments: `ExecIf` and
/// `$[...]?MacroExit():Return()` for `same => n(done),ExecIf($[...]?MacroExit():Return())`.
fn application(line: &str) -> (&str, &str) {
    // exten => EXTEN,PRIORITY,App(args) | same => PRIORITY,App(args)
    let rest = line.split_once("=>").unwrap().1.trim_start();
    let fields = if line.starts_with("exten") { 2 } else { 1 };
    let app_and_args = rest.splitn(fields + 1, ',').nth(fields).unwrap_or("");
    let (app, args) = app_and_args.split_once('(').unwrap_or((app_and_args, ")"));
    (app.trim(), args.strip_suffix(')').unwrap_or(args))
}

/// The dialplan lines of each context (`[name]`) of a file, comments left out.
fn contexts(dialplan: &str) -> Vec<(String, Vec<String>)> {
    let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
    for line in dialplan.lines() {
        let line = line.split(';').next().unwrap().trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            contexts.push((name.to_string(), Vec::new()));
        } else if let Some((_, lines)) = contexts.last_mut()
            && !dialplan_lines(line, false).is_empty()
        {
            lines.push(line.to_string());
        }
    }
    contexts
}

#[test]
fn every_config_loads_and_both_are_there() {
    let names: Vec<String> = configs()
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config-freepbx.toml", "config.toml"]);
}

/// Each dialplan with the config that goes with it.
const PAIRS: [(&str, &str); 2] = [
    ("extensions.conf", "config.toml"),
    ("extensions_custom.conf", "config-freepbx.toml"),
];

#[test]
fn dialplans_call_newcall_where_their_configs_listen() {
    let configs = configs();
    for (file, config_name) in PAIRS {
        let (_, config) = configs
            .iter()
            .find(|(p, _)| p.ends_with(Path::new(config_name)))
            .unwrap();
        let urls = agi_urls(&read(file));
        assert!(urls.len() >= 2, "{file}: inbound and outbound AGI lines");
        for url in &urls {
            let rest = url
                .strip_prefix("agi://")
                .unwrap_or_else(|| panic!("{file}: {url}"));
            let (addr, script) = rest.split_once('/').unwrap();
            assert_eq!(addr, config.agi.listen, "{file} vs {config_name}");
            let (name, query) = script.split_once('?').unwrap_or((script, ""));
            assert_eq!(name, "newcall", "{file}: {url}");
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().unwrap();
                assert!(
                    ["direction", "queue", "user", "from", "to", "secret"].contains(&key),
                    "{file}: unknown parameter {key} in {url}"
                );
            }
        }
    }
}

/// FreePBX 17 runs its own FastAGI server on 127.0.0.1:4573 (ring groups call
/// `AGI(agi://127.0.0.1/dialparties.agi)` on it): the FreePBX example must not listen there.
/// The plain example keeps FastAGI's default port.
#[test]
fn the_freepbx_example_leaves_port_4573_to_freepbx() {
    for (path, config) in configs() {
        let port = config.agi.listen.rsplit(':').next().unwrap().to_string();
        if path.ends_with(Path::new("config-freepbx.toml")) {
            assert_ne!(port, "4573", "{}", path.display());
        } else {
            assert_eq!(port, "4573", "{}", path.display());
        }
    }
}

/// The FreePBX hooks (`[macro-*]`) run under `Macro()` on FreePBX 16 and under `Gosub()` on
/// FreePBX 17, where Asterisk has no `MacroExit` (21 and later): a bare `MacroExit()` there
/// is "No application" and hangs the call up. Each hook must end in a way right for both.
/// (Asterisk loads the file and runs the hook under Gosub in the end-to-end tests.)
#[test]
fn no_freepbx_hook_ends_with_a_bare_macroexit() {
    let dialplan = read("extensions_custom.conf");
    let hooks: Vec<(String, Vec<String>)> = contexts(&dialplan)
        .into_iter()
        .filter(|(name, _)| name.starts_with("macro-"))
        .collect();
    assert!(
        !hooks.is_empty(),
        "extensions_custom.conf has a FreePBX hook"
    );
    for (name, lines) in &hooks {
        for line in lines {
            let (app, args) = application(line);
            assert!(
                !app.eq_ignore_ascii_case("MacroExit"),
                "[{name}]: a bare MacroExit() hangs the call up under Gosub (FreePBX 17): {line}"
            );
            if app.eq_ignore_ascii_case("ExecIf") && args.contains("MacroExit") {
                let (condition, branches) = args.split_once('?').unwrap();
                assert!(
                    condition.contains("MACRO_DEPTH")
                        && branches.replace(' ', "") == "MacroExit():Return()",
                    "[{name}]: MacroExit() only inside a Macro, else Return(): {line}"
                );
            }
        }
        // A bare Return() is wrong the other way round: under Macro (FreePBX 16) there is no
        // Gosub to return from, and the call is hung up.
        let last = lines.last().unwrap();
        let (app, args) = application(last);
        assert!(
            app.eq_ignore_ascii_case("ExecIf") && args.contains("MacroExit():Return()"),
            "[{name}] must end with MacroExit() under Macro (FreePBX 16) and Return() under \
             Gosub (FreePBX 17): {last}"
        );
    }
}

/// The predial hook runs for legs nobody dialed out too (follow-me and ring-group members,
/// call forwards to outside numbers), where FreePBX leaves AMPUSER empty: those must not
/// claim an outbound call.
#[test]
fn the_freepbx_predial_hook_claims_outbound_calls_only_with_an_ampuser() {
    let dialplan = read("extensions_custom.conf");
    let (_, hook) = contexts(&dialplan)
        .into_iter()
        .find(|(name, _)| name == "macro-dialout-trunk-predial-hook")
        .expect("the predial hook");
    let agi = hook
        .iter()
        .position(|l| l.contains("AGI(") && l.contains("direction=out"))
        .expect("the hook claims outbound calls");
    let guard = hook
        .iter()
        .position(|l| l.contains(r#"GotoIf($["${AMPUSER}" = ""]?"#))
        .expect("the hook skips the AGI without AMPUSER");
    assert!(
        guard < agi,
        "the AMPUSER guard comes before the AGI: {hook:#?}"
    );
}

/// The commented-out per-DID example for queues (an exact DID before the `_X.` catch-all)
/// passes the queue's name.
#[test]
fn the_freepbx_queue_example_names_the_queue() {
    let dialplan = read("extensions_custom.conf");
    let examples: Vec<String> = dialplan_lines(&dialplan, true)
        .into_iter()
        .filter(|l| !dialplan_lines(&dialplan, false).contains(l))
        .collect();
    assert!(
        examples
            .iter()
            .any(|l| l.contains("AGI(") && l.contains("&queue=")),
        "{examples:#?}"
    );
}

#[test]
fn plain_dialplan_contexts_are_the_configured_ones() {
    let (_, config) = configs()
        .into_iter()
        .find(|(p, _)| p.ends_with(Path::new("config.toml")))
        .unwrap();
    let dialplan = read("extensions.conf");
    assert!(dialplan.contains("[from-trunk]"));
    assert!(config.calls.inbound_contexts.contains(&"from-trunk".into()));
    assert!(dialplan.contains("[from-internal]"));
    assert!(
        config
            .calls
            .outbound_contexts
            .contains(&"from-internal".into())
    );
}

#[test]
fn manager_user_is_the_configured_one_with_the_classes_needed() {
    let manager = read("manager.conf");
    let section = manager
        .split("\n[")
        .find(|s| s.starts_with("zammad]"))
        .expect("a [zammad] user");
    for (_, config) in configs() {
        assert_eq!(config.ami.username, "zammad");
    }
    let value = |key: &str| -> Vec<String> {
        section
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.trim_start_matches([' ', '='])
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let read_classes = value("read");
    let write_classes = value("write");
    for class in ["call", "agent", "dialplan"] {
        assert!(read_classes.contains(&class.to_string()), "read {class}");
    }
    for class in ["call", "reporting"] {
        assert!(write_classes.contains(&class.to_string()), "write {class}");
    }
    // Least rights: nothing that could run commands or change the PBX.
    for class in ["system", "command", "config", "originate", "all"] {
        assert!(!write_classes.contains(&class.to_string()), "write {class}");
    }
}

#[test]
fn the_service_config_is_the_example_without_its_two_secrets() {
    let example = read("config.toml");
    let service = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/config.toml"),
    )
    .unwrap();
    let from_ami = |text: &str| text[text.find("[ami]").unwrap()..].to_string();
    let expected: Vec<String> = from_ami(&example)
        .lines()
        .map(|l| {
            if l.starts_with("secret = ") || l.starts_with("url = ") {
                format!("# {l}   # given by systemd as a credential (see the unit file)")
            } else {
                l.to_string()
            }
        })
        .collect();
    let service_body = from_ami(&service);
    let got: Vec<&str> = service_body.lines().collect();
    assert_eq!(got, expected);
    let config = Config::from_toml_str(&service).unwrap();
    assert!(config.ami.secret.is_none() && config.zammad.url.is_none());
}
