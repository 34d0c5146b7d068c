//! `replay` of third-party recordings against expectations written by others, compared the
//! way their READMEs say:
//!
//! - `tests/fixtures/cacofonisk-expected/`: per cacofonisk stream (`tests/fixtures/cacofonisk`),
//!   the calls Zammad must be told about, derived from VoIPGRID/cacofonisk's test assertions;
//! - `tests/fixtures/freepbx/`: recordings of FreePBX 17's dialplan with the requests each
//!   callId must get.
//!
//! One test per set replays every fixture and lists every mismatch of every fixture before
//! it fails. The comparisons are first tried on hand-made wrong sequences, so that a pass
//! means something.

use crate::replay::replay;
use crate::support::fixture;
use asterisk_zammad_bridge::config::Config;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt;

/// One way in which what `replay` printed differs from an expectation.
#[derive(Debug)]
struct Mismatch {
    fixture: String,
    /// The reported callId, or the expected call's label when nothing matches it.
    call: String,
    field: String,
    got: String,
    want: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Mismatch {
            fixture,
            call,
            field,
            got,
            want,
        } = self;
        write!(f, "{fixture} {call} {field}: got {got}, expected {want}")
    }
}

/// A comparison: the fixture's name, its expectation and the replayed requests in, the
/// mismatches out.
type Compare = fn(&str, &Value, &[Value]) -> Vec<Mismatch>;

fn mismatch(
    fixture: &str,
    call: &str,
    field: &str,
    got: impl fmt::Display,
    want: impl fmt::Display,
) -> Mismatch {
    Mismatch {
        fixture: fixture.to_string(),
        call: call.to_string(),
        field: field.to_string(),
        got: got.to_string(),
        want: want.to_string(),
    }
}

/// A request's field as JSON, or `(absent)`.
fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(absent)".to_string(), Value::to_string)
}

/// The requests grouped by callId, calls in the order of their first request.
fn by_call(requests: &[Value]) -> Vec<(String, Vec<&Value>)> {
    let mut calls: Vec<(String, Vec<&Value>)> = Vec::new();
    for request in requests {
        let id = request["callId"]
            .as_str()
            .expect("every request has a callId");
        match calls.iter_mut().find(|(known, _)| known == id) {
            Some((_, events)) => events.push(request),
            None => calls.push((id.to_string(), vec![request])),
        }
    }
    calls
}

fn event_names(events: &[&Value]) -> String {
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?"))
        .collect();
    format!("[{}]", names.join(", "))
}

/// Zammad's order for one call: one `newCall` first, at most one `answer`, exactly one
/// `hangup` and it last, one direction throughout. What is wrong, if anything.
fn shape_error(events: &[&Value]) -> Option<String> {
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    let directions: BTreeSet<String> = events.iter().map(|e| show(e.get("direction"))).collect();
    let ok = events.first().is_some_and(|e| e["event"] == "newCall")
        && events.last().is_some_and(|e| e["event"] == "hangup")
        && count("newCall") == 1
        && count("answer") <= 1
        && count("hangup") == 1
        && directions.len() == 1;
    (!ok).then(|| {
        let directions: Vec<String> = directions.into_iter().collect();
        format!(
            "{} in direction {}",
            event_names(events),
            directions.join(" and ")
        )
    })
}

// ---------------------------------------------------------------------------------------
// cacofonisk: tests/fixtures/cacofonisk-expected/README.md

/// What the cacofonisk expectations compare of one reported call.
#[derive(Debug)]
struct Outline<'a> {
    direction: Option<&'a str>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    answered: bool,
    answering_number: Option<&'a str>,
    cause: Option<&'a str>,
}

impl<'a> Outline<'a> {
    fn of(events: &[&'a Value]) -> Outline<'a> {
        let first = |kind: &str| events.iter().find(|e| e["event"] == kind).copied();
        let new_call = first("newCall").or(events.first().copied());
        let field = |event: Option<&'a Value>, key: &str| event.and_then(|e| e[key].as_str());
        let answer = first("answer");
        Outline {
            direction: field(new_call, "direction"),
            from: field(new_call, "from"),
            to: field(new_call, "to"),
            answered: answer.is_some(),
            answering_number: field(answer, "answeringNumber"),
            cause: field(first("hangup"), "cause"),
        }
    }
}

fn ending(answered: bool, cause: Option<&str>) -> String {
    let answered = if answered { "answered" } else { "not answered" };
    format!("{answered} {}", cause.unwrap_or("(no cause)"))
}

/// The fields in which a reported call differs from an expected one: (field, got, want).
fn call_differences(got: &Outline, want: &Value) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let text = |v: Option<&str>| v.unwrap_or("(absent)").to_string();
    if got.direction != want["direction"].as_str() {
        out.push((
            "direction",
            text(got.direction),
            want["direction"].to_string(),
        ));
    }
    let from = want["from"].as_array().expect("`from` is a list");
    if !from.iter().any(|f| got.from == f.as_str()) {
        out.push(("from", text(got.from), format!("one of {}", want["from"])));
    }
    if got.to != want["to"].as_str() {
        out.push(("to", text(got.to), want["to"].to_string()));
    }
    let outcomes = want["outcomes"].as_array().expect("`outcomes` is a list");
    if !outcomes
        .iter()
        .any(|o| outcome(o) == (got.answered, got.cause.unwrap_or_default()))
    {
        let accepted: Vec<String> = outcomes
            .iter()
            .map(|o| ending(outcome(o).0, Some(outcome(o).1)))
            .collect();
        out.push((
            "answered/cause",
            ending(got.answered, got.cause),
            accepted.join(" or "),
        ));
    }
    // {"extension": X}: a phone of ours answers and, with no [agents] number, it is X;
    // null: someone who is not a phone of ours takes the call; absent: nobody answers.
    let answering = match want.get("answeringNumber") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v["extension"]
                .as_str()
                .expect("answeringNumber {extension}"),
        ),
    };
    if let Some(number) = answering
        && got.answered
        && got.answering_number != Some(number)
    {
        out.push((
            "answeringNumber",
            text(got.answering_number),
            number.to_string(),
        ));
    }
    out
}

/// An accepted ending: (answered, cause).
fn outcome(o: &Value) -> (bool, &str) {
    let answered = o["answered"].as_bool().expect("an outcome's `answered`");
    let cause = o["cause"].as_str().expect("an outcome's `cause`");
    (answered, cause)
}

fn describe(outline: &Outline) -> String {
    let text = |v: Option<&str>| v.unwrap_or("(absent)").to_string();
    format!(
        "{} {}->{} {}",
        text(outline.direction),
        text(outline.from),
        text(outline.to),
        ending(outline.answered, outline.cause)
    )
}

/// The calls reported for a cacofonisk stream against its expected calls, matched in any
/// order; callId values, `user` and `queue` are not compared.
fn compare_cacofonisk(fixture: &str, expected: &Value, requests: &[Value]) -> Vec<Mismatch> {
    let calls = by_call(requests);
    let wanted = expected["calls"].as_array().expect("`calls` is a list");
    let mut out = Vec::new();
    // `not_reported` calls have no callId to look for: the number of calls covers them.
    if calls.len() != wanted.len() {
        out.push(mismatch(
            fixture,
            "-",
            "number of calls",
            calls.len(),
            wanted.len(),
        ));
    }
    for (id, events) in &calls {
        if let Some(error) = shape_error(events) {
            let want = "newCall first, at most one answer, one hangup last, one direction";
            out.push(mismatch(fixture, id, "shape", error, want));
        }
    }
    let mut left: Vec<(&str, Outline)> = calls
        .iter()
        .map(|(id, events)| (id.as_str(), Outline::of(events)))
        .collect();
    let mut unmet = Vec::new();
    for want in wanted {
        match left
            .iter()
            .position(|(_, got)| call_differences(got, want).is_empty())
        {
            Some(i) => drop(left.remove(i)),
            None => unmet.push(want),
        }
    }
    // An expected call nothing fits is compared with the closest call left over, so that
    // the report names the fields that differ.
    for want in unmet {
        let closest = (0..left.len()).min_by_key(|&i| call_differences(&left[i].1, want).len());
        match closest {
            Some(i) => {
                let (id, got) = left.remove(i);
                for (field, got, want) in call_differences(&got, want) {
                    out.push(mismatch(fixture, id, field, got, want));
                }
            }
            None => {
                let label = want["linkedid"].as_str().unwrap_or("-");
                let summary = format!("{} {}->{}", want["direction"], want["from"], want["to"]);
                out.push(mismatch(fixture, label, "call", "not reported", summary));
            }
        }
    }
    for (id, got) in left {
        out.push(mismatch(
            fixture,
            id,
            "call",
            describe(&got),
            "no such call",
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// FreePBX: tests/fixtures/freepbx/README.md

/// Whether a request's field (`None`: absent) is the value an expectation lists; `null`
/// means absent, `user` arrays are sets.
fn field_matches(field: &str, got: Option<&Value>, want: &Value) -> bool {
    match (got, want) {
        (None, Value::Null) => true,
        (Some(_), Value::Null) | (None, _) => false,
        (Some(Value::Array(got)), Value::Array(want)) if field == "user" => {
            let set = |users: &[Value]| users.iter().map(Value::to_string).collect::<BTreeSet<_>>();
            set(got) == set(want)
        }
        (Some(got), want) => got == want,
    }
}

/// `K: value` or `K_any: [values]` against one request: (field, got, want) if it differs.
fn field_difference(request: &Value, key: &str, want: &Value) -> Option<(String, String, String)> {
    let (field, accepted, shown) = match key.strip_suffix("_any") {
        Some(field) => {
            let values = want.as_array().expect("a `_any` value is a list");
            (field, values.iter().collect(), format!("one of {want}"))
        }
        None if want.is_null() => (key, vec![want], "(absent)".to_string()),
        None => (key, vec![want], want.to_string()),
    };
    let got = request.get(field);
    let ok = accepted.iter().any(|w| field_matches(field, got, w));
    (!ok).then(|| (field.to_string(), show(got), shown))
}

/// The requests of a FreePBX recording against its expected calls, by callId: the events
/// in order, each listed field; no other callIds.
fn compare_freepbx(fixture: &str, expected: &Value, requests: &[Value]) -> Vec<Mismatch> {
    let calls = by_call(requests);
    let wanted = expected["calls"].as_array().expect("`calls` is a list");
    let mut out = Vec::new();
    for (id, events) in &calls {
        if !wanted.iter().any(|w| w["callId"] == id.as_str()) {
            out.push(mismatch(
                fixture,
                id,
                "call",
                event_names(events),
                "no such call",
            ));
        }
    }
    for want in wanted {
        let id = want["callId"].as_str().expect("an expected call's callId");
        let want_events = want["events"].as_array().expect("`events` is a list");
        let want_names: Vec<&Value> = want_events.iter().collect();
        let got: &[&Value] = calls
            .iter()
            .find(|(known, _)| known == id)
            .map_or(&[], |(_, events)| events);
        if got.len() != want_events.len() {
            let (got, want) = (event_names(got), event_names(&want_names));
            out.push(mismatch(fixture, id, "events", got, want));
            continue;
        }
        for (request, want_event) in got.iter().zip(want_events) {
            let kind = want_event["event"].as_str().unwrap_or("?");
            let fields = want_event
                .as_object()
                .expect("an expected event is an object");
            for (key, value) in fields {
                if let Some((field, got, want)) = field_difference(request, key, value) {
                    out.push(mismatch(fixture, id, &format!("{kind}.{field}"), got, want));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The fixtures

fn read_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(fixture(rel)).expect("expectation readable");
    serde_json::from_str(&text).expect("expectation is JSON")
}

/// The config in a fixture folder, without this process's `AZB__` variables.
fn fixture_config(rel: &str) -> Config {
    let text = std::fs::read_to_string(fixture(rel)).expect("config readable");
    Config::from_toml_str(&text).expect("fixture config is valid")
}

/// The sorted names (without extension) of the files `*.ext` in a fixture folder.
fn fixture_names(dir: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture(dir))
        .expect("fixture folder")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Fails listing every mismatch of every fixture, so one run shows them all.
#[track_caller]
fn assert_no_mismatches(set: &str, fixtures: usize, mismatches: &[Mismatch]) {
    if mismatches.is_empty() {
        return;
    }
    let lines: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
    let failing: BTreeSet<&str> = mismatches.iter().map(|m| m.fixture.as_str()).collect();
    panic!(
        "{set}: {} mismatches in {} of {fixtures} fixtures:\n{}",
        mismatches.len(),
        failing.len(),
        lines.join("\n")
    );
}

#[test]
fn every_cacofonisk_recording_has_an_expectation() {
    assert_eq!(
        fixture_names("cacofonisk-expected", "json"),
        fixture_names("cacofonisk", "ami")
    );
}

#[test]
fn cacofonisk_expectations_hold() {
    let config = fixture_config("cacofonisk-expected/config.toml");
    let mut mismatches = Vec::new();
    let mut skipped = Vec::new();
    let names = fixture_names("cacofonisk-expected", "json");
    for name in &names {
        let expected = read_json(&format!("cacofonisk-expected/{name}.json"));
        assert_eq!(
            expected["fixture"],
            name.as_str(),
            "{name}.json names itself"
        );
        // Only "exact" expectations are compared. The one "ambiguous" fixture,
        // originate_cmn-world-world, is a click-to-dial that joins two outside numbers:
        // reporting it as in, out or not at all could all be right, so nothing is expected.
        if expected["status"] != "exact" {
            skipped.push(name.as_str());
            continue;
        }
        let requests = replay(&config, &format!("cacofonisk/{name}.ami"));
        mismatches.extend(compare_cacofonisk(name, &expected, &requests));
    }
    assert_eq!(skipped, ["originate_cmn-world-world"]);
    assert_no_mismatches("cacofonisk", names.len() - skipped.len(), &mismatches);
}

#[test]
fn freepbx_call_ids_are_the_linkedids() {
    // The expectations name each call by the Linkedid of its first channel; the config
    // prefixes nothing, so that is the callId `replay` prints.
    let config = fixture_config("freepbx/config.toml");
    assert_eq!(config.zammad.call_id_prefix, "");
    for name in fixture_names("freepbx", "json") {
        let transcript = std::fs::read(fixture(&format!("freepbx/{name}.txt"))).unwrap();
        let transcript = String::from_utf8_lossy(&transcript);
        for call in read_json(&format!("freepbx/{name}.json"))["calls"]
            .as_array()
            .unwrap()
        {
            let id = call["callId"].as_str().unwrap();
            let first = format!("Uniqueid: {id}\r\nLinkedid: {id}\r\n");
            assert!(
                transcript.contains(&first),
                "{name}: no channel {id} heads its call"
            );
        }
    }
}

#[test]
fn freepbx_expectations_hold() {
    let config = fixture_config("freepbx/config.toml");
    let names = fixture_names("freepbx", "json");
    assert_eq!(names.len(), 6);
    let mut mismatches = Vec::new();
    for name in &names {
        let expected = read_json(&format!("freepbx/{name}.json"));
        let requests = replay(&config, &format!("freepbx/{name}.txt"));
        mismatches.extend(compare_freepbx(name, &expected, &requests));
    }
    assert_no_mismatches("freepbx", names.len(), &mismatches);
}

// ---------------------------------------------------------------------------------------
// The comparisons on hand-made sequences

/// Runs `compare` over cases of (what, the requests, the fields it must report, in order).
#[track_caller]
fn check(compare: Compare, expected: &Value, cases: &[(&str, &[&str], &[&str])]) {
    for (what, requests, fields) in cases {
        let requests: Vec<Value> = requests
            .iter()
            .map(|r| serde_json::from_str(r).expect("valid request JSON"))
            .collect();
        let found = compare("hand-made", expected, &requests);
        let got: Vec<&str> = found.iter().map(|m| m.field.as_str()).collect();
        let shown: Vec<String> = found.iter().map(Mismatch::to_string).collect();
        assert_eq!(&got, fields, "{what}: {shown:#?}");
    }
}

#[test]
fn cacofonisk_comparison_finds_wrong_calls() {
    // An inbound call a phone (201) answers, and an outbound one that ends busy or unanswered.
    let expected = json!({"calls": [
        {"direction": "in", "from": ["311"], "to": "312", "answeringNumber": {"extension": "201"},
         "outcomes": [{"answered": true, "cause": "normalClearing"}]},
        {"direction": "out", "from": ["201", "313"], "to": "314",
         "outcomes": [{"answered": false, "cause": "busy"}, {"answered": false, "cause": "noAnswer"}]},
    ]});
    let in_new = r#"{"event":"newCall","direction":"in","callId":"a","from":"311","to":"312"}"#;
    let in_answer = r#"{"event":"answer","direction":"in","callId":"a","from":"311","to":"312","answeringNumber":"201"}"#;
    let in_hangup = r#"{"event":"hangup","direction":"in","callId":"a","from":"311","to":"312","cause":"normalClearing"}"#;
    let out_new = r#"{"event":"newCall","direction":"out","callId":"b","from":"201","to":"314"}"#;
    let out_hangup = r#"{"event":"hangup","direction":"out","callId":"b","from":"201","to":"314","cause":"busy"}"#;
    check(
        compare_cacofonisk,
        &expected,
        &[
            (
                "both right, in the other order",
                &[out_new, in_new, in_answer, out_hangup, in_hangup],
                &[],
            ),
            (
                "the other accepted from and ending",
                &[
                    in_new,
                    in_answer,
                    in_hangup,
                    r#"{"event":"newCall","direction":"out","callId":"b","from":"313","to":"314"}"#,
                    r#"{"event":"hangup","direction":"out","callId":"b","from":"313","to":"314","cause":"noAnswer"}"#,
                ],
                &[],
            ),
            (
                "wrong cause",
                &[
                    in_new,
                    in_answer,
                    r#"{"event":"hangup","direction":"in","callId":"a","cause":"cancel"}"#,
                    out_new,
                    out_hangup,
                ],
                &["answered/cause"],
            ),
            (
                "not answered",
                &[
                    in_new,
                    r#"{"event":"hangup","direction":"in","callId":"a","cause":"normalClearing"}"#,
                    out_new,
                    out_hangup,
                ],
                &["answered/cause"],
            ),
            (
                "missing hangup",
                &[in_new, in_answer, out_new, out_hangup],
                &["shape", "answered/cause"],
            ),
            (
                "two answers",
                &[in_new, in_answer, in_answer, in_hangup, out_new, out_hangup],
                &["shape"],
            ),
            (
                "direction changes",
                &[
                    in_new,
                    in_answer,
                    r#"{"event":"hangup","direction":"out","callId":"a","cause":"normalClearing"}"#,
                    out_new,
                    out_hangup,
                ],
                &["shape"],
            ),
            (
                "hangup before the answer",
                &[in_new, in_hangup, in_answer, out_new, out_hangup],
                &["shape"],
            ),
            (
                "wrong from",
                &[
                    r#"{"event":"newCall","direction":"in","callId":"a","from":"anonymous","to":"312"}"#,
                    in_answer,
                    in_hangup,
                    out_new,
                    out_hangup,
                ],
                &["from"],
            ),
            (
                "wrong answeringNumber",
                &[
                    in_new,
                    r#"{"event":"answer","direction":"in","callId":"a","answeringNumber":"202"}"#,
                    in_hangup,
                    out_new,
                    out_hangup,
                ],
                &["answeringNumber"],
            ),
            (
                "an extra call",
                &[
                    in_new,
                    in_answer,
                    in_hangup,
                    out_new,
                    out_hangup,
                    r#"{"event":"newCall","direction":"in","callId":"c","from":"311","to":"201"}"#,
                    r#"{"event":"hangup","direction":"in","callId":"c","cause":"cancel"}"#,
                ],
                &["number of calls", "call"],
            ),
            (
                "a call missing",
                &[in_new, in_answer, in_hangup],
                &["number of calls", "call"],
            ),
        ],
    );
}

#[test]
fn freepbx_comparison_finds_wrong_requests() {
    let expected = json!({"calls": [{"callId": "a", "events": [
        {"event": "newCall", "direction": "in", "from_any": ["201", "4930"],
         "user": ["Alice", "Carol"], "queue_any": ["700", null]},
        {"event": "answer", "user": null},
        {"event": "hangup", "cause": "normalClearing"},
    ]}]});
    let new_call = r#"{"event":"newCall","direction":"in","callId":"a","from":"201","to":"700","user":["Carol","Alice"]}"#;
    let answer = r#"{"event":"answer","direction":"in","callId":"a"}"#;
    let hangup = r#"{"event":"hangup","direction":"in","callId":"a","cause":"normalClearing"}"#;
    check(
        compare_freepbx,
        &expected,
        &[
            (
                "right: users in another order, queue absent",
                &[new_call, answer, hangup],
                &[],
            ),
            (
                "right: the other from, the queue named",
                &[
                    r#"{"event":"newCall","direction":"in","callId":"a","from":"4930","user":["Alice","Carol"],"queue":"700"}"#,
                    answer,
                    hangup,
                ],
                &[],
            ),
            (
                "from and queue not among the accepted, one user missing",
                &[
                    r#"{"event":"newCall","direction":"in","callId":"a","from":"999","user":["Alice"],"queue":"701"}"#,
                    answer,
                    hangup,
                ],
                &["newCall.from", "newCall.user", "newCall.queue"],
            ),
            (
                "user missing",
                &[
                    r#"{"event":"newCall","direction":"in","callId":"a","from":"201"}"#,
                    answer,
                    hangup,
                ],
                &["newCall.user"],
            ),
            (
                "one name where a list is expected",
                &[
                    r#"{"event":"newCall","direction":"in","callId":"a","from":"201","user":"Alice"}"#,
                    answer,
                    hangup,
                ],
                &["newCall.user"],
            ),
            (
                "fields not listed are not compared",
                &[
                    new_call,
                    answer,
                    r#"{"event":"hangup","direction":"out","callId":"a","cause":"normalClearing","user":"Alice"}"#,
                ],
                &[],
            ),
            (
                "a field that must be absent is there",
                &[
                    new_call,
                    r#"{"event":"answer","direction":"in","callId":"a","user":"Alice"}"#,
                    hangup,
                ],
                &["answer.user"],
            ),
            (
                "wrong cause",
                &[
                    new_call,
                    answer,
                    r#"{"event":"hangup","direction":"in","callId":"a","cause":"cancel"}"#,
                ],
                &["hangup.cause"],
            ),
            ("hangup missing", &[new_call, answer], &["events"]),
            (
                "events out of order",
                &[new_call, hangup, answer],
                &["answer.event", "hangup.event", "hangup.cause"],
            ),
            (
                "an extra callId",
                &[
                    new_call,
                    answer,
                    hangup,
                    r#"{"event":"newCall","direction":"in","callId":"b"}"#,
                ],
                &["call"],
            ),
            ("nothing reported", &[], &["events"]),
        ],
    );
}
