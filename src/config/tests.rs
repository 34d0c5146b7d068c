//! Loading: every key's default, file and environment, the messages of every refusal.

use super::*;
use keys::shape_at;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Environment variables of a test case.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Loads `toml` with `env` as the environment; an error comes back as its message,
/// after checking what every config error must be: exit code 78, no secret inside.
fn check(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    Config::from_toml_str_with_env(toml, env.iter().copied()).map_err(|e| {
        assert_eq!(e.exit_code(), 78);
        let message = format!("{e:#} / {e:?}");
        assert!(!message.contains("SECRETTOKEN"), "secret in {message}");
        e.to_string()
    })
}

/// The value of `key`, written as in docs/configuration.md; `<unset>` for a missing option.
fn value_of(c: &Config, key: &str) -> String {
    let s = |v: &str| format!("{v:?}");
    let d = |v: Duration| s(&humantime::format_duration(v).to_string());
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|x| s(x)).collect();
        format!("[{}]", items.join(", "))
    };
    fn secret<S: ExposeSecret<str>>(v: &Option<S>) -> String {
        v.as_ref().map_or("<unset>".to_string(), |x| {
            format!("{:?}", x.expose_secret())
        })
    }
    let path = |v: &Option<PathBuf>| {
        v.as_ref()
            .map_or("<unset>".to_string(), |p| format!("{p:?}"))
    };
    match key {
        "ami.address" => s(&c.ami.address),
        "ami.username" => s(&c.ami.username),
        "ami.secret" => secret(&c.ami.secret),
        "ami.secret_file" => path(&c.ami.secret_file),
        "ami.tls" => c.ami.tls.to_string(),
        "ami.plain_login" => c.ami.plain_login.to_string(),
        "ami.tls_ca_file" => path(&c.ami.tls_ca_file),
        "ami.tls_server_name" => {
            (c.ami.tls_server_name.as_ref()).map_or("<unset>".into(), |n| s(n))
        }
        "ami.ping_interval" => d(c.ami.ping_interval),
        "ami.reconcile_interval" => d(c.ami.reconcile_interval),
        "agi.listen" => s(&c.agi.listen),
        "agi.decision_timeout" => d(c.agi.decision_timeout),
        "agi.reject" => s(match c.agi.reject {
            RejectMode::Hangup => "hangup",
            RejectMode::Variable => "variable",
        }),
        "agi.max_sessions" => c.agi.max_sessions.to_string(),
        "agi.idle_timeout" => d(c.agi.idle_timeout),
        "agi.max_sessions_per_source" => c.agi.max_sessions_per_source.to_string(),
        "agi.secret" => secret(&c.agi.secret),
        "agi.secret_file" => path(&c.agi.secret_file),
        "zammad.url" => secret(&c.zammad.url),
        "zammad.url_file" => path(&c.zammad.url_file),
        "zammad.timeout" => d(c.zammad.timeout),
        "zammad.call_id_prefix" => s(&c.zammad.call_id_prefix),
        "zammad.proxy" => (c.zammad.proxy.as_ref()).map_or("<unset>".into(), |p| s(&p.to_string())),
        "numbers.country_code" => s(&c.numbers.country_code),
        "numbers.national_prefix" => s(&c.numbers.national_prefix),
        "numbers.international_prefix" => s(&c.numbers.international_prefix),
        "calls.inbound_contexts" => list(&c.calls.inbound_contexts),
        "calls.outbound_contexts" => list(&c.calls.outbound_contexts),
        "calls.extension_pattern" => s(c.calls.extension_pattern.as_str()),
        "calls.trunk_channel" => {
            (c.calls.trunk_channel.as_ref()).map_or("<unset>".into(), |p| s(p.as_str()))
        }
        "calls.stale_after" => d(c.calls.stale_after),
        "agents" => {
            let items: Vec<String> = c
                .agents
                .iter()
                .map(|(k, a)| match a.number() {
                    Some(n) => format!("{k:?} = {{ name = {:?}, number = {n:?} }}", a.name()),
                    None => format!("{k:?} = {:?}", a.name()),
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        "admin.listen" => s(&c.admin.listen),
        "state.dir" => format!("{:?}", c.state.dir),
        "state.max_outbox" => c.state.max_outbox.to_string(),
        "state.shutdown_grace" => d(c.state.shutdown_grace),
        "log.format" => s(match c.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }),
        "log.level" => s(&c.log.level),
        "log.show_numbers" => c.log.show_numbers.to_string(),
        _ => panic!("value_of: no key {key}"),
    }
}

/// docs/configuration.md, literally.
const DEFAULTS: &[(&str, &str)] = &[
    ("ami.address", r#""127.0.0.1:5038""#),
    ("ami.username", r#""zammad""#),
    ("ami.secret", "<unset>"),
    ("ami.secret_file", "<unset>"),
    ("ami.tls", "false"),
    ("ami.plain_login", "false"),
    ("ami.tls_ca_file", "<unset>"),
    ("ami.tls_server_name", "<unset>"),
    ("ami.ping_interval", r#""15s""#),
    ("ami.reconcile_interval", r#""5m""#),
    ("agi.listen", r#""127.0.0.1:4573""#),
    ("agi.decision_timeout", r#""2s""#),
    ("agi.reject", r#""hangup""#),
    ("agi.max_sessions", "512"),
    ("agi.idle_timeout", r#""10s""#),
    ("agi.max_sessions_per_source", "256"),
    ("agi.secret", "<unset>"),
    ("agi.secret_file", "<unset>"),
    ("zammad.url", "<unset>"),
    ("zammad.url_file", "<unset>"),
    ("zammad.timeout", r#""5s""#),
    ("zammad.call_id_prefix", r#""""#),
    ("zammad.proxy", "<unset>"),
    ("numbers.country_code", r#""49""#),
    ("numbers.national_prefix", r#""0""#),
    ("numbers.international_prefix", r#""00""#),
    (
        "calls.inbound_contexts",
        r#"["from-trunk", "from-pstn", "from-external"]"#,
    ),
    ("calls.outbound_contexts", r#"["from-internal"]"#),
    ("calls.extension_pattern", r#""^[0-9]{2,5}$""#),
    ("calls.trunk_channel", "<unset>"),
    ("calls.stale_after", r#""12h""#),
    ("agents", "{}"),
    ("admin.listen", r#""127.0.0.1:9137""#),
    ("state.dir", r#""/var/lib/asterisk-zammad-bridge""#),
    ("state.max_outbox", "100000"),
    ("state.shutdown_grace", r#""5s""#),
    ("log.format", r#""text""#),
    ("log.level", r#""info""#),
    ("log.show_numbers", "false"),
];

/// Every key the structs have, by serde (`[agents]` as one key: its keys are extensions).
fn schema_keys() -> Vec<String> {
    let Shape::Table(sections) = shape_at::<Config>(&[]) else {
        panic!("the config is a table");
    };
    sections
        .iter()
        .flat_map(|section| match shape_at::<Config>(&[section]) {
            Shape::Table(keys) => keys.iter().map(|k| format!("{section}.{k}")).collect(),
            _ => vec![section.to_string()],
        })
        .collect()
}

#[test]
fn defaults_are_those_of_the_documentation() {
    let loaded = check("", &[]).unwrap();
    for (name, config) in [
        ("Config::default()", Config::default()),
        ("empty file", loaded),
    ] {
        for (key, expected) in DEFAULTS {
            assert_eq!(value_of(&config, key), *expected, "{name}: {key}");
        }
    }
    let listed: Vec<&str> = DEFAULTS.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        listed,
        schema_keys(),
        "DEFAULTS must cover every key of the structs"
    );
}

#[test]
fn file_and_environment_set_values() {
    let cases: &[(&str, Env, &str, &str)] = &[
        ("[log]\nlevel = \"warn\"", &[], "log.level", r#""warn""#),
        (
            "[log]\nlevel = \"warn\"",
            &[("AZB__LOG__LEVEL", "debug")],
            "log.level",
            r#""debug""#,
        ),
        (
            "",
            &[("AZB__ZAMMAD__URL", "https://z.example/api/v1/cti/T")],
            "zammad.url",
            r#""https://z.example/api/v1/cti/T""#,
        ),
        (
            "",
            &[("AZB__AMI__SECRET", "s3cret")],
            "ami.secret",
            r#""s3cret""#,
        ),
        (
            "",
            &[("AZB__LOG__SHOW_NUMBERS", "true")],
            "log.show_numbers",
            "true",
        ),
        ("", &[("AZB__AMI__TLS", "TRUE")], "ami.tls", "true"),
        (
            "[ami]\ntls = true",
            &[("AZB__AMI__TLS", "false")],
            "ami.tls",
            "false",
        ),
        (
            "",
            &[("AZB__AGI__DECISION_TIMEOUT", "500ms")],
            "agi.decision_timeout",
            r#""500ms""#,
        ),
        (
            "",
            &[("AZB__AMI__PING_INTERVAL", "1m")],
            "ami.ping_interval",
            r#""1m""#,
        ),
        (
            "",
            &[("AZB__ZAMMAD__TIMEOUT", "3s")],
            "zammad.timeout",
            r#""3s""#,
        ),
        (
            "",
            &[("AZB__NUMBERS__COUNTRY_CODE", "41")],
            "numbers.country_code",
            r#""41""#,
        ),
        (
            "",
            &[("AZB__NUMBERS__INTERNATIONAL_PREFIX", "00")],
            "numbers.international_prefix",
            r#""00""#,
        ),
        (
            "",
            &[("AZB__NUMBERS__NATIONAL_PREFIX", "")],
            "numbers.national_prefix",
            r#""""#,
        ),
        (
            "[numbers]\ncountry_code = 41",
            &[],
            "numbers.country_code",
            r#""41""#,
        ),
        (
            "",
            &[("AZB__ZAMMAD__CALL_ID_PREFIX", "pbx1-")],
            "zammad.call_id_prefix",
            r#""pbx1-""#,
        ),
        (
            "",
            &[("AZB__CALLS__INBOUND_CONTEXTS", "from-sip, from-did")],
            "calls.inbound_contexts",
            r#"["from-sip", "from-did"]"#,
        ),
        (
            "",
            &[("AZB__CALLS__OUTBOUND_CONTEXTS", "from-internal")],
            "calls.outbound_contexts",
            r#"["from-internal"]"#,
        ),
        (
            "",
            &[("AZB__CALLS__OUTBOUND_CONTEXTS", "")],
            "calls.outbound_contexts",
            "[]",
        ),
        (
            "",
            &[("AZB__CALLS__INBOUND_CONTEXTS", "from-trunk,  ,")],
            "calls.inbound_contexts",
            r#"["from-trunk"]"#,
        ),
        (
            "",
            &[
                ("AZB__AGI__MAX_SESSIONS", "3"),
                ("AZB__STATE__MAX_OUTBOX", "7"),
            ],
            "agi.max_sessions",
            "3",
        ),
        (
            "[calls]\nstale_after = \"100years\"",
            &[],
            "calls.stale_after",
            r#""100years""#,
        ),
        (
            "",
            &[("AZB__CALLS__TRUNK_CHANNEL", "^PJSIP/trunk-")],
            "calls.trunk_channel",
            r#""^PJSIP/trunk-""#,
        ),
        (
            "",
            &[("AZB__CALLS__EXTENSION_PATTERN", "^[0-9]{3}$")],
            "calls.extension_pattern",
            r#""^[0-9]{3}$""#,
        ),
        ("", &[("azb__agi__listen", "")], "agi.listen", r#""""#),
        (
            "",
            &[("AZB__AGI__REJECT", "variable")],
            "agi.reject",
            r#""variable""#,
        ),
        (
            "",
            &[("AZB__ADMIN__LISTEN", "[::1]:9137")],
            "admin.listen",
            r#""[::1]:9137""#,
        ),
        (
            "",
            &[("AZB__STATE__DIR", "/tmp/azb")],
            "state.dir",
            r#""/tmp/azb""#,
        ),
        (
            "",
            &[("AZB__LOG__FORMAT", "json")],
            "log.format",
            r#""json""#,
        ),
        (
            "",
            &[("AZB__AGENTS__201", "Bob Example")],
            "agents",
            r#"{"201" = "Bob Example"}"#,
        ),
        (
            "",
            &[
                ("AZB__AGENTS__203__NAME", "Carol"),
                ("AZB__AGENTS__203__NUMBER", "4930123"),
            ],
            "agents",
            r#"{"203" = { name = "Carol", number = "4930123" }}"#,
        ),
        (
            "[agents]\n\"201\" = \"Alice\"",
            &[("AZB__AGENTS__202", "Bob")],
            "agents",
            r#"{"201" = "Alice", "202" = "Bob"}"#,
        ),
        (
            "[agents]\nAlice = \"Alice Example\"",
            &[],
            "agents",
            r#"{"Alice" = "Alice Example"}"#,
        ),
        (
            "[agents]\n\"203\" = { name = \"Carol\" }",
            &[],
            "agents",
            r#"{"203" = "Carol"}"#,
        ),
        // Not ours: other prefixes are ignored.
        (
            "",
            &[("AZB_LOG__LEVEL", "debug"), ("LOG__LEVEL", "debug")],
            "log.level",
            r#""info""#,
        ),
    ];
    for (toml, env, key, expected) in cases {
        let config = check(toml, env).unwrap_or_else(|e| panic!("{toml:?} {env:?}: {e}"));
        assert_eq!(value_of(&config, key), *expected, "{toml:?} {env:?}");
    }
}

#[test]
fn bad_keys_and_values_are_named() {
    let cases: &[(&str, Env, &str)] = &[
        ("colour = 1", &[], r#"unknown key "colour""#),
        (
            "[amy]\naddress = \"x:1\"",
            &[],
            r#"unknown key "amy" (did you mean "ami"?)"#,
        ),
        (
            "[ami]\nsecert = \"x\"",
            &[],
            r#"unknown key "ami.secert" (did you mean "ami.secret"?)"#,
        ),
        (
            "[log]\nshow_number = true",
            &[],
            r#"unknown key "log.show_number" (did you mean "log.show_numbers"?)"#,
        ),
        (
            "[agents]\n\"203\" = { name = \"C\", nmae = \"x\" }",
            &[],
            r#"unknown key "agents.203.nmae""#,
        ),
        (
            "",
            &[("AZB__AMI__SECERT", "x")],
            r#"unknown key "ami.secert" (did you mean "ami.secret"?), set by AZB__AMI__SECERT"#,
        ),
        ("ami = 1", &[], "ami: expected a table [ami]"),
        (
            "[agi]\ndecision_timeout = \"2 parsecs\"",
            &[],
            r#"agi.decision_timeout: invalid duration "2 parsecs""#,
        ),
        (
            "[ami]\nping_interval = 15",
            &[],
            r#"ami.ping_interval: invalid duration "15""#,
        ),
        (
            "",
            &[("AZB__ZAMMAD__TIMEOUT", "soon")],
            r#"zammad.timeout: invalid duration "soon""#,
        ),
        (
            "[zammad]\ntimeout = \"0s\"",
            &[],
            "zammad.timeout: must be greater than zero",
        ),
        (
            "[calls]\nextension_pattern = \"[0-9\"",
            &[],
            "calls.extension_pattern: invalid regex",
        ),
        (
            "[calls]\ntrunk_channel = \"(\"",
            &[],
            "calls.trunk_channel: invalid regex",
        ),
        (
            "[calls]\ninbound_contexts = \"from-trunk\"",
            &[],
            "calls.inbound_contexts: invalid type",
        ),
        (
            "[calls]\ninbound_contexts = [\"\"]",
            &[],
            "calls.inbound_contexts: a context name is empty",
        ),
        (
            "[agi]\nreject = \"drop\"",
            &[],
            r#"agi.reject: expected "hangup" or "variable", got "drop""#,
        ),
        (
            "[agi]\nreject = \"Hangup\"",
            &[],
            r#"agi.reject: expected "hangup" or "variable""#,
        ),
        (
            "[log]\nformat = \"xml\"",
            &[],
            r#"log.format: expected "text" or "json", got "xml""#,
        ),
        (
            "[log]\nlevel = \"verbose\"",
            &[],
            "log.level: expected trace, debug",
        ),
        (
            "[log]\nlevel = \"info,x=loud\"",
            &[],
            "log.level: invalid tracing filter",
        ),
        ("[ami]\ntls = \"maybe\"", &[], "ami.tls: "),
        (
            "",
            &[("AZB__LOG__SHOW_NUMBERS", "sometimes")],
            "log.show_numbers: ",
        ),
        (
            "[zammad]\nurl = \"ftp://z.example/api/v1/cti/SECRETTOKEN\"",
            &[],
            "zammad.url: must start with http:// or https://",
        ),
        (
            "[zammad]\nurl = \"https://\"",
            &[],
            "zammad.url: not a valid URL",
        ),
        (
            "[zammad]\nurl = { token = \"SECRETTOKEN\" }",
            &[],
            "zammad.url: expected a string",
        ),
        (
            "",
            &[("AZB__ZAMMAD__URL", "zammad.example/SECRETTOKEN")],
            "zammad.url: must start with http:// or https://",
        ),
        (
            "[zammad]\nurl = \"https://z.example/api/v1/cti/SECRETTOKEN",
            &[],
            "invalid TOML in the given TOML: TOML parse error at line 2",
        ),
        (
            "[numbers]\ncountry_code = \"+49\"",
            &[],
            "numbers.country_code: digits only",
        ),
        (
            "[numbers]\ncountry_code = \"\"",
            &[],
            "numbers.country_code: digits only",
        ),
        (
            "[numbers]\ninternational_prefix = \"0x\"",
            &[],
            "numbers.international_prefix: digits only",
        ),
        (
            "[numbers]\nnational_prefix = \"-\"",
            &[],
            "numbers.national_prefix: digits only",
        ),
        (
            "[ami]\naddress = \"localhost\"",
            &[],
            r#"ami.address: expected host:port, got "localhost""#,
        ),
        (
            "[ami]\naddress = \"pbx:99999\"",
            &[],
            "ami.address: expected host:port",
        ),
        (
            "[ami]\naddress = \"pbx:0\"",
            &[],
            "ami.address: expected host:port",
        ),
        (
            "[ami]\nusername = \"\"",
            &[],
            "ami.username: must not be empty",
        ),
        (
            "[agi]\nlisten = \"4573\"",
            &[],
            "agi.listen: expected an address",
        ),
        (
            "[admin]\nlisten = \"*:9137\"",
            &[],
            "admin.listen: expected an address such as 127.0.0.1:9137, or \"\" to disable it, got \"*:9137\"",
        ),
        (
            "[agents]\n\"201\" = 5",
            &[],
            "agents.201: expected a name, or a table",
        ),
        (
            "[agents]\n\"201\" = { number = \"1\" }",
            &[],
            "agents.201: expected a name, or a table",
        ),
        (
            "[agents]\n\"201\" = \"\"",
            &[],
            "agents.201.name: must not be empty",
        ),
        ("[state]\ndir = \"\"", &[], "state.dir: must not be empty"),
        (
            "[ami]\nsecret = \"x\"\nsecret_file = \"/x\"",
            &[],
            "ami.secret and ami.secret_file are both set",
        ),
        (
            "[ami]\nsecret_file = \"/x\"",
            &[("AZB__AMI__SECRET", "y")],
            "ami.secret and ami.secret_file are both set",
        ),
        (
            "[zammad]\nurl_file = \"/nonexistent/azb-url\"",
            &[],
            "zammad.url_file: failed to read /nonexistent/azb-url",
        ),
        ("[[ami]]", &[], "ami: expected a table [ami]"),
        ("agents = 1", &[], "agents: expected a table [agents]"),
        (
            "[agents]\n\"203\" = { name = \"C\", nmae = \"x\" }",
            &[],
            r#"unknown key "agents.203.nmae" (did you mean "agents.203.name"?)"#,
        ),
        (
            "",
            &[("AZB__AGENTS__203__NUMBR", "1")],
            r#"unknown key "agents.203.numbr" (did you mean "agents.203.number"?), set by AZB__AGENTS__203__NUMBR"#,
        ),
        (
            "[agents]\n\"\" = \"x\"",
            &[],
            "agents: an extension is empty",
        ),
        (
            "[agents]\n\"201\" = { name = \" \" }",
            &[],
            "agents.201.name: must not be empty",
        ),
        (
            "",
            &[("AZB__AGENTS__201", "")],
            "agents.201.name: must not be empty",
        ),
        (
            "[agents]\n\"201\" = { name = \"A\", number = \"\" }",
            &[],
            "agents.201.number: must not be empty (leave it out instead)",
        ),
        (
            "[agents]\n\"201\" = [\"A\"]",
            &[],
            r#"agents.201: expected a name, or a table { name = "...", number = "..." }"#,
        ),
        (
            "[agi]\nmax_sessions = 0",
            &[],
            r#"agi.max_sessions: must be at least 1 (use agi.listen = "" to turn FastAGI off)"#,
        ),
        (
            "",
            &[("AZB__STATE__MAX_OUTBOX", "0")],
            "state.max_outbox: must be at least 1",
        ),
        (
            "[state]\nmax_outbox = -1",
            &[],
            "state.max_outbox: invalid type",
        ),
        // Huge durations parse, but a timer that far away overflows: refused here.
        (
            "[calls]\nstale_after = \"500000000000y\"",
            &[],
            r#"calls.stale_after: must be at most 100years, got "500000000000y""#,
        ),
        (
            "",
            &[("AZB__STATE__SHUTDOWN_GRACE", "500000000000y")],
            r#"state.shutdown_grace: must be at most 100years, got "500000000000y""#,
        ),
        (
            "[ami]\nreconcile_interval = \"0ms\"",
            &[],
            "ami.reconcile_interval: must be greater than zero",
        ),
        (
            "[agi]\nidle_timeout = { seconds = 2 }",
            &[],
            r#"agi.idle_timeout: expected a duration such as "2s" or "500ms""#,
        ),
        (
            "[agi]\nreject = 1",
            &[],
            r#"agi.reject: expected "hangup" or "variable", got "1""#,
        ),
        (
            "[log]\nformat = [\"json\"]",
            &[],
            r#"log.format: expected "text" or "json""#,
        ),
        (
            "[ami]\naddress = \"\"",
            &[],
            r#"ami.address: expected host:port, got """#,
        ),
        (
            "[numbers]\ncountry_code = 4.9",
            &[],
            r#"numbers.country_code: digits only, got "4.9""#,
        ),
        (
            "[calls]\noutbound_contexts = [\"from-internal\", \" \"]",
            &[],
            "calls.outbound_contexts: a context name is empty",
        ),
    ];
    for (toml, env, expected) in cases {
        let error = check(toml, env).expect_err(toml);
        assert!(
            error.starts_with(expected),
            "{toml:?} {env:?}:\n got {error}\nwant {expected}"
        );
    }
}

static TEMP: AtomicUsize = AtomicUsize::new(0);

fn temp_file(content: &str) -> PathBuf {
    let n = TEMP.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("azb-config-test-{}-{n}", std::process::id()));
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn secret_files_are_read_and_trimmed() {
    let cases: &[(&str, &str, &str, Result<&str, &str>)] = &[
        ("ami", "secret_file", "s3cret\n", Ok(r#""s3cret""#)),
        ("ami", "secret_file", "s3cret\r\n", Ok(r#""s3cret""#)),
        ("ami", "secret_file", "s3cret", Ok(r#""s3cret""#)),
        ("ami", "secret_file", " s3 cret \n", Ok(r#"" s3 cret ""#)),
        ("ami", "secret_file", "\n", Err("ami.secret_file: ")),
        (
            "zammad",
            "url_file",
            "https://z.example/api/v1/cti/T\n",
            Ok(r#""https://z.example/api/v1/cti/T""#),
        ),
        (
            "zammad",
            "url_file",
            "z.example/SECRETTOKEN\n",
            Err("zammad.url_file: must start with http:// or https://"),
        ),
    ];
    for (section, key, content, expected) in cases {
        let path = temp_file(content);
        let toml = format!("[{section}]\n{key} = {:?}", path.display().to_string());
        let result = check(&toml, &[]);
        std::fs::remove_file(&path).unwrap();
        let secret_key = if *section == "ami" {
            "ami.secret"
        } else {
            "zammad.url"
        };
        match (result, expected) {
            (Ok(config), Ok(want)) => {
                assert_eq!(value_of(&config, secret_key), *want, "{content:?}");
                assert_eq!(
                    value_of(&config, &format!("{section}.{key}")),
                    format!("{path:?}")
                );
            }
            (Err(error), Err(want)) => assert!(error.starts_with(want), "{content:?}: {error}"),
            (got, want) => panic!("{content:?}: got {:?}, want {want:?}", got.map(|_| ())),
        }
    }
}

#[test]
fn debug_shows_no_secret() {
    let config = check(
        "[ami]\nsecret = \"hunter2-SECRET\"\n[zammad]\nurl = \"https://z.example/api/v1/cti/TOKEN-SECRET\"",
        &[],
    )
    .unwrap();
    let debug = format!("{config:?} {:#?}", config);
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("TOKEN-SECRET"), "{debug}");
    assert!(debug.contains("REDACTED"), "{debug}");
}

#[test]
fn connections_are_required_for_run_and_check() {
    let cases: &[(&str, Env, Result<(), &str>)] = &[
        (
            "",
            &[],
            Err(
                "ami.secret is required: set it in the file, as ami.secret_file (a file holding it), or with the environment variable AZB__AMI__SECRET",
            ),
        ),
        ("[ami]\nsecret = \"\"", &[], Err("ami.secret is required")),
        (
            "[ami]\nsecret = \"x\"",
            &[],
            Err(
                "zammad.url is required: set it in the file, as zammad.url_file (a file holding it), or with the environment variable AZB__ZAMMAD__URL",
            ),
        ),
        (
            "",
            &[
                ("AZB__AMI__SECRET", "x"),
                ("AZB__ZAMMAD__URL", "http://z/api/v1/cti/T"),
            ],
            Ok(()),
        ),
    ];
    for (toml, env, expected) in cases {
        let got = check(toml, env)
            .unwrap()
            .require_connections()
            .map_err(|e| {
                assert_eq!(e.exit_code(), 78);
                e.to_string()
            });
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) => assert!(e.starts_with(want), "{toml:?}: {e}"),
            (got, want) => panic!("{toml:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn check_warns_about_odd_settings() {
    let cases: &[(&str, &[&str])] = &[
        ("", &[]),
        (
            "[agi]\nlisten = \"localhost:4573\"\n[ami]\naddress = \"[::1]:5038\"",
            &[],
        ),
        (
            "[agi]\nlisten = \"0.0.0.0:4573\"",
            &["agi.listen = \"0.0.0.0:4573\" is not a loopback address and agi.secret is not set"],
        ),
        (
            "[agi]\nlisten = \"0.0.0.0:4573\"\nsecret = \"0123456789abcdef\"",
            &[],
        ),
        (
            "[ami]\nplain_login = true",
            &["ami.plain_login = true: when Asterisk refuses the MD5 challenge"],
        ),
        (
            "[zammad]\nurl = \"http://zammad.example.com/api/v1/cti/T\"",
            &["zammad.url is plain http:// to a host that is not this one"],
        ),
        (
            "[zammad]\nurl = \"http://localhost:3000/api/v1/cti/T\"",
            &[],
        ),
        ("[zammad]\nurl = \"http://[::1]/api/v1/cti/T\"", &[]),
        (
            "[zammad]\nurl = \"https://zammad.example.com/api/v1/cti/T\"",
            &[],
        ),
        ("[agi]\nlisten = \"\"", &[]),
        (
            "[ami]\naddress = \"pbx.example:5038\"",
            &["ami.address = \"pbx.example:5038\" is not a loopback address and ami.tls = false"],
        ),
        ("[ami]\naddress = \"pbx.example:5039\"\ntls = true", &[]),
        (
            "[admin]\nlisten = \"0.0.0.0:9137\"",
            &["admin.listen = \"0.0.0.0:9137\" is not a loopback address"],
        ),
        (
            "[log]\nshow_numbers = true",
            &["log.show_numbers = true: phone numbers"],
        ),
        (
            "[agi]\nlisten = \"\"\n[calls]\ninbound_contexts = []",
            &["agi.listen is empty and calls.inbound_contexts is empty"],
        ),
        (
            "[calls]\noutbound_contexts = [\"from-trunk\"]",
            &["context \"from-trunk\" is in both"],
        ),
        (
            "[agi]\ndecision_timeout = \"10s\"",
            &["agi.decision_timeout (10s) is longer than zammad.timeout (5s)"],
        ),
    ];
    for (toml, expected) in cases {
        let warnings = check(toml, &[]).unwrap().check();
        assert_eq!(warnings.len(), expected.len(), "{toml:?}: {warnings:#?}");
        for (warning, want) in warnings.iter().zip(expected.iter()) {
            assert!(warning.starts_with(want), "{toml:?}: {warning}");
        }
    }
}

#[test]
fn patterns_are_compiled_once_and_an_empty_trunk_pattern_is_unset() {
    let config = check("[calls]\ntrunk_channel = \"^PJSIP/trunk-\"", &[]).unwrap();
    let extension = &config.calls.extension_pattern;
    assert!(extension.is_match("201"));
    assert!(!extension.is_match("0301234567"));
    let trunk = config.calls.trunk_channel.as_ref().unwrap();
    assert!(trunk.is_match("PJSIP/trunk-0000001"));
    assert!(!trunk.is_match("PJSIP/201-0000001"));
    assert!(Config::default().calls.trunk_channel.is_none());
    for (toml, env) in [
        ("[calls]\ntrunk_channel = \"\"", &[][..]),
        ("", &[("AZB__CALLS__TRUNK_CHANNEL", "")][..]),
        (
            "[calls]\ntrunk_channel = \"^x\"",
            &[("AZB__CALLS__TRUNK_CHANNEL", "")][..],
        ),
    ] {
        let empty = check(toml, env).unwrap();
        assert_eq!(empty.calls.trunk_channel, None, "{toml:?} {env:?}");
    }
}

const EXAMPLE: &str = include_str!("../../asterisk-examples/config.toml");
const EXAMPLE_FREEPBX: &str = include_str!("../../asterisk-examples/config-freepbx.toml");

#[test]
fn shipped_example_parses_with_the_documented_defaults() {
    // The placeholders are refused (exit 78) until real values replace them.
    let config = check(EXAMPLE, &[]).unwrap();
    let refused = config.require_connections().unwrap_err();
    assert_eq!(refused.exit_code(), 78);
    assert!(
        refused
            .to_string()
            .starts_with("ami.secret is still the example's placeholder")
    );
    let real = [
        ("AZB__AMI__SECRET", "s3cret"),
        (
            "AZB__ZAMMAD__URL",
            "https://zammad.example.com/api/v1/cti/aB3dE6",
        ),
    ];
    let config = check(EXAMPLE, &real).unwrap();
    config.require_connections().unwrap();
    assert_eq!(config.check(), Vec::<String>::new());
    for (key, default) in DEFAULTS {
        let value = value_of(&config, key);
        match *key {
            "ami.secret" | "zammad.url" => assert_ne!(value, "<unset>", "{key}"),
            "agents" => assert_eq!(
                value,
                r#"{"201" = "Alice Example", "203" = { name = "Carol Example", number = "4930123456203" }}"#
            ),
            _ => assert_eq!(value, *default, "{key}"),
        }
    }
}

#[test]
fn shipped_examples_mention_every_key() {
    for example in [EXAMPLE, EXAMPLE_FREEPBX] {
        check(example, &[]).unwrap();
        let lines: Vec<&str> = example
            .lines()
            .map(|l| l.trim_start_matches(['#', ' ']))
            .collect();
        for key in schema_keys() {
            let (section, key) = key.split_once('.').unwrap_or((&key, ""));
            assert!(
                lines.contains(&format!("[{section}]").as_str()),
                "[{section}]"
            );
            assert!(
                key.is_empty() || lines.iter().any(|l| l.starts_with(&format!("{key} ="))),
                "{section}.{key}"
            );
        }
    }
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let path = temp_file("[log]\nlevel = \"debug\"\n");
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).unwrap();
    // The process environment may set AZB__LOG__LEVEL; nobody sets it in our CI.
    assert_eq!(loaded.unwrap().log.level, "debug");
    let error = Config::load(Path::new("/nonexistent/azb.toml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to read config file /nonexistent/azb.toml"
    );
    assert_eq!(error.exit_code(), 78);
    let broken = temp_file("[log\n");
    let error = Config::load(&broken).unwrap_err().to_string();
    std::fs::remove_file(&broken).unwrap();
    let want = format!(
        "invalid TOML in {}: TOML parse error at line 1",
        broken.display()
    );
    assert!(error.starts_with(&want), "{error}");
}

#[test]
fn edit_distance_counts_edits() {
    for (a, b, d) in [
        ("", "", 0),
        ("ami", "ami", 0),
        ("amy", "ami", 1),
        ("secert", "secret", 2),
        ("", "abc", 3),
        ("abc", "", 3),
    ] {
        assert_eq!(edit_distance(a, b), d, "{a} {b}");
    }
}

#[test]
fn a_misspelt_key_at_every_level_gets_a_did_you_mean() {
    let mut misspelt = 0;
    for key in schema_keys() {
        let (toml, typo, meant) = match key.split_once('.') {
            Some((section, field)) => (
                format!("[{section}]\n{field}x = 1"),
                format!("{section}.{field}x"),
                key.clone(),
            ),
            None => (format!("[{key}x]"), format!("{key}x"), key.clone()),
        };
        let want = format!(r#"unknown key "{typo}" (did you mean "{meant}"?)"#);
        assert_eq!(check(&toml, &[]).unwrap_err(), want, "{toml:?}");
        let var = env_var_name(&typo);
        let want = format!("{want}, set by {var}");
        assert_eq!(check("", &[(&var, "1")]).unwrap_err(), want, "{var}");
        misspelt += 1;
    }
    assert_eq!(misspelt, DEFAULTS.len());
    for field in ["name", "number"] {
        let toml = format!("[agents.\"201\"]\nname = \"A\"\n{field}x = \"1\"");
        let want =
            format!(r#"unknown key "agents.201.{field}x" (did you mean "agents.201.{field}"?)"#);
        assert_eq!(check(&toml, &[]).unwrap_err(), want);
    }
}

#[test]
fn secrets_never_appear_in_a_message() {
    let url = "https://z.example/api/v1/cti/SECRETTOKEN";
    let cases: &[(&str, Env)] = &[
        ("[ami]\nsecret = { value = \"SECRETTOKEN\" }", &[]),
        ("[ami]\nsecret = [\"SECRETTOKEN\"]", &[]),
        ("[ami]\nsecret = \"SECRETTOKEN\"\nsecret_file = \"/x\"", &[]),
        ("[ami]\nsecret = \"SECRETTOKEN\"\naddress = \"x\"", &[]),
        ("[ami]\nsecrets = \"SECRETTOKEN\"", &[]),
        ("[ami]\nsecret = \"SECRETTOKEN", &[]),
        ("[zammad]\nurl = [\"https://z.example/SECRETTOKEN\"]", &[]),
        ("[zammad]\nurl = \"ftp://z.example/SECRETTOKEN\"", &[]),
        ("[zammad]\nurl = \"https://[SECRETTOKEN/\"", &[]),
        (
            "[zammad]\nurl = \"https://z.example/SECRETTOKEN\"\nurl_file = \"/x\"",
            &[],
        ),
        ("", &[("AZB__ZAMMAD__URL", "SECRETTOKEN")]),
        ("", &[("AZB__ZAMMAD__URI", url)]),
        (
            "",
            &[
                ("AZB__AMI__SECRET", "SECRETTOKEN"),
                ("AZB__AMI__SECRET_FILE", "/x"),
            ],
        ),
    ];
    for (toml, env) in cases {
        // `check` fails the test if the secret is in the message, its chain or its Debug.
        let error = check(toml, env).expect_err(toml);
        assert!(!error.is_empty(), "{toml:?} {env:?}");
    }
    let debug = format!("{:?}", check("", &[("AZB__ZAMMAD__URL", url)]).unwrap());
    assert!(!debug.contains("SECRETTOKEN"), "{debug}");
}

/// SIGHUP: which sections changed is a comparison of typed values, so a value written
/// another way (`"15s"`, `"15000ms"`) is no change, and a secret's change is one.
#[test]
fn sections_needing_restart_compare_values() {
    let base = "[ami]\nsecret = \"a\"\n[zammad]\nurl = \"https://z/api/v1/cti/T\"\n";
    let cases: &[(&str, &[&str])] = &[
        ("", &[]),
        (
            "[agents]\n\"201\" = \"Alice\"\n[calls]\ntrunk_channel = \"^T\"",
            &[],
        ),
        ("[numbers]\ncountry_code = \"41\"", &[]),
        ("[log]\nlevel = \"debug\"", &["log"]),
        (
            "[agi]\nlisten = \"\"\n[admin]\nlisten = \"127.0.0.1:1\"",
            &["agi", "admin"],
        ),
        ("[state]\nmax_outbox = 5", &["state"]),
    ];
    let running = check(base, &[]).unwrap();
    for (change, want) in cases {
        let new = check(&format!("{base}{change}"), &[]).unwrap();
        assert_eq!(running.sections_needing_restart(&new), *want, "{change:?}");
    }
    let env_cases: &[(Env, &[&str])] = &[
        (&[("AZB__AMI__PING_INTERVAL", "15000ms")], &[]),
        (&[("AZB__AMI__SECRET", "b")], &["ami"]),
        (
            &[("AZB__ZAMMAD__URL", "https://z/api/v1/cti/U")],
            &["zammad"],
        ),
        (&[("AZB__AMI__PING_INTERVAL", "16s")], &["ami"]),
    ];
    for (env, want) in env_cases {
        let new = check(base, env).unwrap();
        assert_eq!(running.sections_needing_restart(&new), *want, "{env:?}");
    }
}

const MINIMAL: &str =
    "[ami]\nsecret = \"s3cret\"\n[zammad]\nurl = \"https://z.example/api/v1/cti/aB3\"\n";

/// What `run` and `check` refuse at load, each with exit 78 and its key named, so that the
/// unit (which does not restart on 78) never loops on them.
#[test]
fn settings_the_daemon_cannot_run_with_are_refused_naming_the_key() {
    let not_a_dir = temp_file("a file, not a directory");
    let under_file = format!("[state]\ndir = \"{}/sub\"\n", not_a_dir.display());
    let cases: Vec<(String, &str)> = vec![
        (
            MINIMAL.replace("s3cret", "change-me"),
            "ami.secret is still the example's placeholder \"change-me\"",
        ),
        (
            MINIMAL.replace("aB3", "TOKEN"),
            "zammad.url is still the example's placeholder \"…/TOKEN\"",
        ),
        (format!("{MINIMAL}{under_file}"), "state.dir: "),
        (
            format!("{MINIMAL}[agi]\nlisten = \"127.0.0.1:573\"\n"),
            "agi.listen: port 573 is privileged",
        ),
        (
            format!("{MINIMAL}[admin]\nlisten = \"[::1]:80\"\n"),
            "admin.listen: port 80 is privileged",
        ),
        (
            "[zammad]\nurl = \"https://z.example/api/v1/cti/aB3\"\n".to_string(),
            "ami.secret is required",
        ),
        (
            "[ami]\nsecret = \"s3cret\"\n".to_string(),
            "zammad.url is required",
        ),
    ];
    for (toml, want) in &cases {
        let config = check(toml, &[]).unwrap();
        let error = config
            .require_ami()
            .and_then(|()| config.require_zammad())
            .and_then(|()| config.require_usable_state_dir(None))
            .and_then(|()| config.require_unprivileged_ports(1024))
            .unwrap_err();
        assert_eq!(error.exit_code(), 78);
        assert!(error.to_string().starts_with(want), "{toml:?}: {error}");
    }
    std::fs::remove_file(&not_a_dir).unwrap();
    // A placeholder in a secret file names the file.
    let file = temp_file("change-me\n");
    let toml = format!(
        "[ami]\nsecret_file = \"{}\"\n[zammad]\nurl = \"https://z.example/api/v1/cti/aB3\"\n",
        file.display()
    );
    let error = check(&toml, &[]).unwrap().require_ami().unwrap_err();
    std::fs::remove_file(&file).unwrap();
    assert!(
        error.to_string().starts_with(&format!(
            "ami.secret (from {}) is still the example's placeholder",
            file.display()
        )),
        "{error}"
    );
    // Under systemd the state dir lies in the unit's StateDirectory=.
    let under_unit = Some("/var/lib/asterisk-zammad-bridge");
    let default = check(MINIMAL, &[]).unwrap();
    default.require_usable_state_dir(under_unit).unwrap();
    let inside = check(
        &format!("{MINIMAL}[state]\ndir = \"/var/lib/asterisk-zammad-bridge/a\"\n"),
        &[],
    );
    inside
        .unwrap()
        .require_usable_state_dir(under_unit)
        .unwrap();
    let outside = check(&format!("{MINIMAL}[state]\ndir = \"/srv/azb\"\n"), &[]).unwrap();
    let error = outside
        .require_usable_state_dir(under_unit)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("state.dir: /srv/azb is outside the unit's StateDirectory="),
        "{error}"
    );
    outside.require_usable_state_dir(None).unwrap();
    // Ports from 1024 up, port 0 (any) and listeners turned off are fine.
    for listen in ["127.0.0.1:1024", "127.0.0.1:0", ""] {
        let toml = format!("{MINIMAL}[agi]\nlisten = \"{listen}\"\n");
        check(&toml, &[])
            .unwrap()
            .require_unprivileged_ports(1024)
            .unwrap();
    }
    // A TLS CA file must hold certificates.
    let junk = temp_file("not PEM\n");
    let toml = format!("[ami]\ntls = true\ntls_ca_file = \"{}\"\n", junk.display());
    let error = check(&toml, &[]).unwrap_err();
    std::fs::remove_file(&junk).unwrap();
    assert!(error.starts_with("ami.tls_ca_file: "), "{error}");
    assert!(error.contains("holds no certificate"), "{error}");
    let error = check("[ami]\ntls_ca_file = \"/nonexistent/ca.pem\"\n", &[]).unwrap_err();
    assert!(
        error.starts_with("ami.tls_ca_file: failed to read /nonexistent/ca.pem"),
        "{error}"
    );
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let config = check(&format!("[ami]\ntls = true\ntls_ca_file = \"{ca}\"\n"), &[]).unwrap();
    assert_eq!(config.ami.tls_ca_certs.len(), 1);
    for (name, ok) in [
        ("pbx.example.com", true),
        ("10.0.0.1", true),
        ("not a name", false),
    ] {
        let loaded = check(&format!("[ami]\ntls_server_name = \"{name}\"\n"), &[]);
        assert_eq!(loaded.is_ok(), ok, "{name}: {loaded:?}");
    }
    // The Zammad URL's path ends in the token.
    for url in ["https://z.example/api/v1/cti/", "https://z.example"] {
        let error = check(&format!("[zammad]\nurl = \"{url}\"\n"), &[]).unwrap_err();
        assert!(
            error.starts_with("zammad.url: the path must end in the CTI token"),
            "{url}: {error}"
        );
    }
}

/// The secrets nothing else gives come from systemd's credentials, then from the files the
/// unit loads them from; what the file or the environment gives wins.
#[test]
fn secrets_are_found_as_credentials() {
    let dir = |name: &str, files: &[(&str, &str)]| {
        let dir = std::env::temp_dir().join(format!(
            "azb-config-credentials-{}-{}-{name}",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
        dir
    };
    let url = "https://z.example/api/v1/cti/fromfile";
    let systemd = dir("systemd", &[("ami-secret", "from-systemd\n")]);
    let etc = dir("etc", &[("ami-secret", "from-etc\n"), ("zammad-url", url)]);
    let dirs = [systemd.clone(), etc.clone()];

    let mut config = check("", &[]).unwrap();
    config.find_credentials(&dirs).unwrap();
    config.require_connections().unwrap();
    assert_eq!(value_of(&config, "ami.secret"), r#""from-systemd""#);
    assert_eq!(config.ami.secret_file, Some(systemd.join("ami-secret")));
    assert_eq!(value_of(&config, "zammad.url"), format!("{url:?}"));
    assert_eq!(config.zammad.url_file, Some(etc.join("zammad-url")));

    // Given in the file or by the environment: nothing is looked for.
    let mut config = check(MINIMAL, &[]).unwrap();
    config.find_credentials(&dirs).unwrap();
    assert_eq!(value_of(&config, "ami.secret"), r#""s3cret""#);
    assert_eq!(config.ami.secret_file, None);
    let mut config = check("", &[("AZB__AMI__SECRET", "from-env")]).unwrap();
    config.find_credentials(&dirs).unwrap();
    assert_eq!(value_of(&config, "ami.secret"), r#""from-env""#);

    // Nothing found: still missing, as before.
    let empty = dir("empty", &[]);
    let mut config = check("", &[]).unwrap();
    config
        .find_credentials(std::slice::from_ref(&empty))
        .unwrap();
    assert!(
        config
            .require_connections()
            .unwrap_err()
            .to_string()
            .starts_with("ami.secret is required")
    );

    // Found but empty, or a placeholder: refused, naming the file.
    let blank = dir(
        "blank",
        &[
            ("ami-secret", "\n"),
            ("zammad-url", "https://z.example/api/v1/cti/TOKEN\n"),
        ],
    );
    let mut config = check("", &[]).unwrap();
    let error = config
        .find_credentials(std::slice::from_ref(&blank))
        .unwrap_err();
    assert_eq!(error.exit_code(), 78);
    assert!(error.to_string().starts_with("ami.secret: "), "{error}");
    assert!(error.to_string().contains("is empty"), "{error}");
    let mut config = check(MINIMAL.split("[zammad]").next().unwrap(), &[]).unwrap();
    config
        .find_credentials(std::slice::from_ref(&blank))
        .unwrap();
    let error = config.require_connections().unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "zammad.url (from {}) is still",
            blank.join("zammad-url").display()
        )),
        "{error}"
    );

    for d in [systemd, etc, empty, blank] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
