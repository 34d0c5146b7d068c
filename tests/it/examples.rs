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

/// The `AGI(...)` URLs of a dialplan file, comments left out.
fn agi_urls(dialplan: &str) -> Vec<String> {
    dialplan
        .lines()
        .map(|l| l.split(';').next().unwrap())
        .filter_map(|l| l.split_once("AGI(").map(|(_, rest)| rest))
        .map(|rest| rest.split([')', ',']).next().unwrap().to_string())
        .collect()
}

#[test]
fn every_config_loads_and_both_are_there() {
    let names: Vec<String> = configs()
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config-freepbx.toml", "config.toml"]);
}

#[test]
fn dialplans_call_newcall_where_the_configs_listen() {
    let configs = configs();
    for file in ["extensions.conf", "extensions_custom.conf"] {
        let urls = agi_urls(&read(file));
        assert!(urls.len() >= 2, "{file}: inbound and outbound AGI lines");
        for url in &urls {
            let rest = url
                .strip_prefix("agi://")
                .unwrap_or_else(|| panic!("{file}: {url}"));
            let (addr, script) = rest.split_once('/').unwrap();
            for (path, config) in &configs {
                assert_eq!(addr, config.agi.listen, "{file} vs {}", path.display());
            }
            let (name, query) = script.split_once('?').unwrap_or((script, ""));
            assert_eq!(name, "newcall", "{file}: {url}");
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().unwrap();
                assert!(
                    ["direction", "queue", "user", "from", "to"].contains(&key),
                    "{file}: unknown parameter {key} in {url}"
                );
            }
        }
    }
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
