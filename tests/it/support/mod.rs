//! Shared test support: the lab's config, fixture paths, Zammad's invariants.

pub mod bridge;
pub mod harness;
pub mod traffic;

use asterisk_zammad_bridge::config::Config;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

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

/// Checks Zammad's invariants (zammad-cti.md §11) on a sequence of CTI request bodies:
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
