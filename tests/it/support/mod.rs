//! Shared test support: the lab's config, fixture paths, Zammad's invariants.

pub mod bridge;
pub mod harness;
pub mod lab;
pub mod traffic;

use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::config::Config;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// A fresh, empty directory under the system's temp dir, unique to this test run.
pub fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    sweep_leftovers();
    let dir = std::env::temp_dir().join(format!(
        "azb-it-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Removes, once per test run, what earlier runs left in the system's temp dir: the
/// `azb-*` dirs and files the tests make carry their process id in their name, and those
/// of a process that is gone belong to no one (a passing test leaves its dir behind, a
/// failing one on purpose, for a look; a package test's dir holds a 20 MB package). A
/// name whose numbers include a live process id is kept, so that two runs side by side
/// (a CI clone and a checkout) never take each other's dirs.
pub fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(is_leftover) {
                let path = entry.path();
                let _ = match entry.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
            }
        }
    });
}

/// Whether `name` is a test's `azb-*` dir or file whose process is gone: among its
/// dash-separated parts is a number that can be a process id, and none of those is a live
/// process (this one included). Numbers below 300 are counters, not process ids: Linux
/// gives those out only at boot (`RESERVED_PIDS`), and wraps around to 300.
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("azb-") else {
        return false;
    };
    let mut pids = rest
        .split(['-', '.'])
        .filter_map(|part| part.parse::<u64>().ok())
        .filter(|n| *n >= 300)
        .peekable();
    pids.peek().is_some() && pids.all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The config of the lab that recorded `tests/fixtures/ami-transcripts` (its README):
/// inbound calls arrive in `from-trunk`, phones dial out from `from-internal`, and the
/// phones 201-204 belong to Alice, Bob, Carol and Dave. Alice's phone is known to Zammad
/// by a full number, so her `answeringNumber` and outbound `from` use it.
pub fn lab_config() -> Config {
    Config::from_toml_str(
        r#"
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
        "#,
    )
    .expect("the lab config is valid")
}

/// Checks Zammad's rules for a bridge (docs/zammad.md) on a sequence of CTI request bodies:
/// per callId one newCall first, at most one answer, exactly one hangup last, one
/// direction, and only string values. Returns the number of calls.
#[track_caller]
pub fn assert_invariants(requests: &[Value], context: &str) -> usize {
    let mut calls: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in requests {
        let obj = r.as_object().expect("a JSON object");
        for (k, v) in obj {
            let ok = v.is_string()
                || (k == "user" && v.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
            assert!(ok, "{context}: non-string value for {k}: {r}");
        }
        let id = r["callId"].as_str().expect("callId");
        assert!(!id.is_empty(), "{context}: empty callId");
        calls.entry(id.to_string()).or_default().push(r);
    }
    for (id, events) in &calls {
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            names.first(),
            Some(&"newCall"),
            "{context}: call {id} starts with {names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| **n == "newCall").count(),
            1,
            "{context}: {id} {names:?}"
        );
        assert!(
            names.iter().filter(|n| **n == "answer").count() <= 1,
            "{context}: {id} {names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| **n == "hangup").count(),
            1,
            "{context}: {id} {names:?}"
        );
        assert_eq!(
            names.last(),
            Some(&"hangup"),
            "{context}: call {id} ends with {names:?}"
        );
        let dir = events[0]["direction"].as_str();
        assert!(
            events.iter().all(|e| e["direction"].as_str() == dir),
            "{context}: {id} direction changes"
        );
        for e in events.iter().filter(|e| e["event"] == "answer") {
            assert!(
                !e["user"].is_array(),
                "{context}: {id} answer with a user array"
            );
        }
    }
    calls.len()
}

/// Events that bring call `i` through ringing, answer and hangup: an inbound trunk
/// channel (caller +1555000iiii, DID 700iiii) and a leg to phone 201.
pub fn call_events(i: usize) -> Vec<AmiMessage> {
    let t = format!("1900000000.{}", i * 2);
    let a = format!("1900000000.{}", i * 2 + 1);
    let trunk = format!("PJSIP/trunk-{i:08x}");
    let leg = format!("PJSIP/201-{i:08x}");
    let caller = format!("+1555000{i:04}");
    let did = format!("700{i:04}");
    let block = |ev: &str, ch: &str, uid: &str, state: &str, extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("Event", ev),
            ("Privilege", "call,all"),
            ("Channel", ch),
            ("ChannelState", state),
            ("CallerIDNum", caller.as_str()),
            ("Context", "from-trunk"),
            ("Exten", did.as_str()),
            ("Uniqueid", uid),
            ("Linkedid", t.as_str()),
        ];
        pairs.extend_from_slice(extra);
        AmiMessage::from_pairs(pairs)
    };
    let dest = [
        ("DestChannel", leg.as_str()),
        ("DestUniqueid", a.as_str()),
        ("DestLinkedid", t.as_str()),
    ];
    let mut end = dest.to_vec();
    end.push(("DialStatus", "ANSWER"));
    vec![
        block("Newchannel", &trunk, &t, "4", &[]),
        block("Newchannel", &leg, &a, "0", &[]),
        block("DialBegin", &trunk, &t, "4", &dest),
        block("Newstate", &leg, &a, "5", &[]),
        block("DialEnd", &trunk, &t, "4", &end),
        block("Hangup", &leg, &a, "6", &[("Cause", "16")]),
        block("Hangup", &trunk, &t, "6", &[("Cause", "16")]),
    ]
}

/// AMI events as the bytes Asterisk would send them.
pub fn encode(events: &[AmiMessage]) -> bytes::Bytes {
    use tokio_util::codec::Encoder;
    let mut buf = bytes::BytesMut::new();
    let mut codec = asterisk_zammad_bridge::ami::codec::AmiCodec::new();
    for e in events {
        codec.encode(e, &mut buf).expect("an encodable event");
    }
    buf.freeze()
}

/// Removes every `AZB__*` override this process's environment would pass on to the binary:
/// the config file a test writes says it all.
pub fn without_azb_env(command: &mut std::process::Command) {
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("AZB__")
        {
            command.env_remove(name);
        }
    }
}

/// Whether this machine has the service's credential files in /etc (the package installed
/// and set up): `run` and `check` find them there, so no secret is ever "required".
pub fn etc_has_credentials() -> bool {
    let dir = std::path::Path::new(asterisk_zammad_bridge::config::CREDENTIAL_DIR);
    dir.join("ami-secret").exists() || dir.join("zammad-url").exists()
}

#[test]
fn leftovers_are_the_test_files_of_processes_that_are_gone() {
    let me = std::process::id();
    // Above any pid_max Linux allows (2^22): no such process.
    let gone = 4_999_999;
    assert!(is_leftover(&format!("azb-it-deb-{gone}-3")));
    assert!(is_leftover(&format!("azb-e2e-{gone}-calls")));
    assert!(is_leftover(&format!("azb-cli-test-{gone}-1.toml")));
    assert!(!is_leftover(&format!("azb-it-deb-{me}-3")));
    // One of its numbers is a live process: kept, whichever it is.
    assert!(!is_leftover(&format!(
        "azb-it-attack-redirect-{gone}-{me}-0"
    )));
    assert!(!is_leftover("azb-soak-target"));
    assert!(!is_leftover("azb-it-state-3-0"));
    assert!(!is_leftover(&format!("other-{gone}")));
}
