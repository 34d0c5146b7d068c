//! `Config`: the typed tree of the TOML file of DESIGN.md §3, one section per part.
//!
//! Owns loading (the file, then `AZB__SECTION__KEY` environment overrides, then `*_file`
//! secrets), rejecting unknown keys and bad values with a [`ConfigError`] that names the key,
//! the defaults, the warnings about legal but odd settings ([`Config::check`]) and the
//! compiled regexes the tracker needs. Other modules receive their own section, already
//! checked; they never read the environment or the file themselves.
//!
//! Environment overrides: `AZB__AMI__SECRET=...` sets `ami.secret`. Names are
//! case-insensitive and become lowercase keys, so they can override the lowercase keys of
//! §3 and agent extensions made of digits (`AZB__AGENTS__201="Bob"`,
//! `AZB__AGENTS__203__NUMBER=...`), but cannot name an agent key with capital letters.
//! Values are taken as strings and converted by the field's type (`"true"`, `"2s"`, `"49"`);
//! they are never guessed as numbers, so `AZB__NUMBERS__INTERNATIONAL_PREFIX=00` stays
//! `"00"`. The list keys (`calls.inbound_contexts`, `calls.outbound_contexts`) take a
//! comma-separated list; an empty value is an empty list.

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable prefix: `AZB__SECTION__KEY`.
pub const ENV_PREFIX: &str = "AZB";
/// Where `run` and `check` look for the file when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/asterisk-zammad-bridge/config.toml";

/// Why a config could not be loaded. Every message names the key it is about (or the
/// file); none shows a secret. All of them exit with [`ConfigError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML; `message` has the position but not the line itself,
    /// which may hold a secret.
    #[error("invalid TOML in {origin}: {message}")]
    Syntax { origin: String, message: String },
    /// `hint` is empty, or says which environment variable set it or what was meant.
    #[error("unknown key \"{key}\"{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{inline} and {file} are both set: use only one of them")]
    SecretConflict {
        inline: &'static str,
        file: &'static str,
    },
    #[error("{key}: failed to read {}", path.display())]
    SecretFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{key} is required: set it in the file, as {file_key} (a file holding it), or with the environment variable {env}"
    )]
    Missing {
        key: &'static str,
        file_key: &'static str,
        env: &'static str,
    },
    /// An error of the `config` crate that names no key.
    #[error("invalid config: {0}")]
    Other(String),
}

impl ConfigError {
    /// EX_CONFIG from sysexits.h, the exit code of every config error.
    pub fn exit_code(&self) -> u8 {
        78
    }

    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole file. Build it with [`Config::load`] (or [`Config::from_toml_str`] in tests);
/// a hand-built one should go through [`Config::validate`]. `Debug` shows no secret.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ami: AmiConfig,
    pub agi: AgiConfig,
    pub zammad: ZammadConfig,
    pub numbers: NumbersConfig,
    pub calls: CallsConfig,
    /// Extension -> who answers there.
    pub agents: BTreeMap<String, AgentEntry>,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfig {
    /// `host:port` of the AMI.
    pub address: String,
    pub username: String,
    /// After loading, holds the content of `secret_file` when that was given.
    pub secret: Option<SecretString>,
    pub secret_file: Option<PathBuf>,
    pub tls: bool,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How often the daemon asks Asterisk for its channels (`CoreShowChannels`) besides
    /// after every (re)connect, to end calls whose hangup it missed.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
}

impl Default for AmiConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:5038".into(),
            username: "zammad".into(),
            secret: None,
            secret_file: None,
            tls: false,
            ping_interval: Duration::from_secs(15),
            reconcile_interval: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectMode {
    /// Hang the channel up with cause 17 (busy).
    Hangup,
    /// Only set `ZAMMAD_ACTION`; the dialplan decides.
    Variable,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgiConfig {
    /// FastAGI listen address; empty disables the listener.
    pub listen: String,
    #[serde(with = "humantime_serde")]
    pub decision_timeout: Duration,
    pub reject: RejectMode,
    /// Most FastAGI sessions at once; more are closed at once (their calls go on).
    pub max_sessions: usize,
    /// Longest wait for Asterisk's next line in a FastAGI session.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for AgiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4573".into(),
            decision_timeout: Duration::from_secs(2),
            reject: RejectMode::Hangup,
            max_sessions: 512,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZammadConfig {
    /// The CTI endpoint including its token; a secret. After loading, holds the content of
    /// `url_file` when that was given.
    pub url: Option<SecretString>,
    pub url_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub call_id_prefix: String,
}

impl Default for ZammadConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            timeout: Duration::from_secs(5),
            call_id_prefix: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersConfig {
    pub country_code: String,
    pub national_prefix: String,
    pub international_prefix: String,
}

impl Default for NumbersConfig {
    fn default() -> Self {
        Self {
            country_code: "49".into(),
            national_prefix: "0".into(),
            international_prefix: "00".into(),
        }
    }
}

/// Which channels make a call and which numbers are internal.
///
/// The two patterns are strings so that the struct stays plain data; [`Config::validate`]
/// (run by every loader) compiles them, so [`CallsConfig::extension_regex`] and
/// [`CallsConfig::trunk_regex`] cannot fail on a loaded config. They compile on each call:
/// call them once at start-up and keep the `Regex`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub inbound_contexts: Vec<String>,
    pub outbound_contexts: Vec<String>,
    /// Regex of internal extensions; calls between two of them are not reported.
    pub extension_pattern: String,
    /// Optional regex of channel names that are the provider trunk; empty is the same as
    /// not set.
    pub trunk_channel: Option<String>,
    /// A call with no AMI event for this long is ended (its hangup sent).
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            inbound_contexts: vec![
                "from-trunk".into(),
                "from-pstn".into(),
                "from-external".into(),
            ],
            outbound_contexts: vec!["from-internal".into()],
            extension_pattern: "^[0-9]{2,5}$".into(),
            trunk_channel: None,
            stale_after: Duration::from_secs(12 * 3600),
        }
    }
}

impl CallsConfig {
    /// `extension_pattern`, compiled.
    ///
    /// # Panics
    /// If the pattern is not a valid regex, which [`Config::validate`] rules out for every
    /// loaded config.
    pub fn extension_regex(&self) -> Regex {
        Regex::new(&self.extension_pattern)
            .expect("calls.extension_pattern is checked by Config::validate")
    }

    /// `trunk_channel`, compiled; `None` when unset or empty.
    ///
    /// # Panics
    /// As [`CallsConfig::extension_regex`].
    pub fn trunk_regex(&self) -> Option<Regex> {
        self.trunk_pattern()
            .map(|p| Regex::new(p).expect("calls.trunk_channel is checked by Config::validate"))
    }

    fn trunk_pattern(&self) -> Option<&str> {
        self.trunk_channel.as_deref().filter(|p| !p.is_empty())
    }
}

/// `[agents]`: `"201" = "Alice"` or `"203" = { name = "Carol", number = "4930123456203" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AgentEntry {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        number: Option<String>,
    },
}

impl AgentEntry {
    pub fn name(&self) -> &str {
        match self {
            AgentEntry::Name(n) | AgentEntry::Full { name: n, .. } => n,
        }
    }

    pub fn number(&self) -> Option<&str> {
        match self {
            AgentEntry::Name(_) => None,
            AgentEntry::Full { number, .. } => number.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin HTTP listen address; empty disables it.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9137".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// Most undelivered events kept; past it, new calls are not reported.
    pub max_outbox: usize,
    /// How long a stopping daemon (SIGTERM) goes on delivering before it exits; what is
    /// left is delivered after the next start.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/asterisk-zammad-bridge"),
            max_outbox: 100_000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `warn,asterisk_zammad_bridge=debug`); `RUST_LOG` wins.
    pub level: String,
    /// Phone numbers are personal data: logs show `***` unless this is on.
    pub show_numbers: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            show_numbers: false,
        }
    }
}

/// The keys of §3 by section, `agents` aside (its keys are extensions): what the
/// unknown-key check accepts. Kept equal to the structs above by a test.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "ami",
        &[
            "address",
            "username",
            "secret",
            "secret_file",
            "tls",
            "ping_interval",
            "reconcile_interval",
        ],
    ),
    (
        "agi",
        &[
            "listen",
            "decision_timeout",
            "reject",
            "max_sessions",
            "idle_timeout",
        ],
    ),
    ("zammad", &["url", "url_file", "timeout", "call_id_prefix"]),
    (
        "numbers",
        &["country_code", "national_prefix", "international_prefix"],
    ),
    (
        "calls",
        &[
            "inbound_contexts",
            "outbound_contexts",
            "extension_pattern",
            "trunk_channel",
            "stale_after",
        ],
    ),
    ("agents", &[]),
    ("admin", &["listen"]),
    ("state", &["dir", "max_outbox", "shutdown_grace"]),
    ("log", &["format", "level", "show_numbers"]),
];
const AGENT_KEYS: &[&str] = &["name", "number"];
const DURATION_KEYS: &[&str] = &[
    "ami.ping_interval",
    "agi.decision_timeout",
    "agi.idle_timeout",
    "zammad.timeout",
    "ami.reconcile_interval",
    "calls.stale_after",
    "state.shutdown_grace",
];
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["calls.inbound_contexts", "calls.outbound_contexts"];
/// Keys whose value never appears in a message.
const SECRET_KEYS: &[&str] = &["ami.secret", "zammad.url"];
const ENV_ORIGIN: &str = "the environment";

impl Config {
    /// The sections that differ between `self` and `new` and only take effect after a
    /// restart: everything but `[agents]`, `[calls]` and `[numbers]` (which SIGHUP reloads).
    pub fn sections_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_string());
        let mut out = Vec::new();
        if format!("{:?}", self.ami) != format!("{:?}", new.ami)
            || secret(&self.ami.secret) != secret(&new.ami.secret)
        {
            out.push("ami");
        }
        if format!("{:?}", self.agi) != format!("{:?}", new.agi) {
            out.push("agi");
        }
        if format!("{:?}", self.zammad) != format!("{:?}", new.zammad)
            || secret(&self.zammad.url) != secret(&new.zammad.url)
        {
            out.push("zammad");
        }
        if format!("{:?}", self.admin) != format!("{:?}", new.admin) {
            out.push("admin");
        }
        if format!("{:?}", self.state) != format!("{:?}", new.state) {
            out.push("state");
        }
        if format!("{:?}", self.log) != format!("{:?}", new.log) {
            out.push("log");
        }
        out
    }

    /// Loads `path`, then applies the `AZB__SECTION__KEY` variables of this process, then
    /// reads the `*_file` secrets, then validates every value.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::build(&text, &path.display().to_string(), process_env()?)
    }

    /// The defaults with this process's `AZB__…` variables applied, for when there is no
    /// file (`replay` without `-c`).
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::build("", "the environment", process_env()?)
    }

    /// As [`Config::load`] for a TOML string and no environment (tests, examples).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::build(toml, "the given TOML", Vec::new())
    }

    /// As [`Config::load`] for a TOML string, with `env` standing for the process
    /// environment (tests: the real environment is shared by all threads).
    pub fn from_toml_str_with_env<K, V>(
        toml: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self::build(toml, "the given TOML", env)
    }

    fn build(toml: &str, origin: &str, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
        let prefix = format!("{ENV_PREFIX}__").to_ascii_lowercase();
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.to_ascii_lowercase().starts_with(&prefix))
            .collect();
        // No `try_parsing`: it would turn "00" into the number 0 and "1.0" into 1. Values
        // stay strings and the field's type converts them; lists are split here.
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator("__")
                    .source(Some(env.clone())),
            );
        for key in LIST_KEYS {
            let var = env_var_name(key);
            if let Some((_, raw)) = env.iter().find(|(k, _)| k.eq_ignore_ascii_case(&var)) {
                let list: Vec<String> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                builder = builder
                    .set_override(*key, list)
                    .map_err(|e| ConfigError::Other(e.to_string()))?;
            }
        }
        let built = builder.build().map_err(|e| match e {
            config::ConfigError::FileParse { cause, .. } => ConfigError::Syntax {
                origin: origin.to_string(),
                message: scrub_toml_error(&cause.to_string()),
            },
            other => ConfigError::Other(other.to_string()),
        })?;
        let tree =
            config::Source::collect(&built).map_err(|e| ConfigError::Other(e.to_string()))?;
        check_keys(&tree)?;
        let mut config: Config = built.try_deserialize().map_err(|e| value_error(e, &tree))?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces `ami.secret_file` and `zammad.url_file` by the content of the file, less
    /// its trailing newline. The `*_file` fields stay set, to say where it came from.
    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        resolve_secret_file(
            &mut self.ami.secret,
            self.ami.secret_file.as_deref(),
            "ami.secret",
            "ami.secret_file",
        )?;
        resolve_secret_file(
            &mut self.zammad.url,
            self.zammad.url_file.as_deref(),
            "zammad.url",
            "zammad.url_file",
        )
    }

    /// Checks every value; the loaders call it, code that builds a `Config` by hand should.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if parse_host_port(&self.ami.address).is_none_or(|(_, port)| port == 0) {
            return Err(ConfigError::invalid(
                "ami.address",
                format!("expected host:port, got {:?}", self.ami.address),
            ));
        }
        non_empty("ami.username", &self.ami.username)?;
        positive("ami.ping_interval", self.ami.ping_interval)?;
        positive("ami.reconcile_interval", self.ami.reconcile_interval)?;
        positive("calls.stale_after", self.calls.stale_after)?;
        positive("state.shutdown_grace", self.state.shutdown_grace)?;
        if self.state.max_outbox == 0 {
            return Err(ConfigError::invalid(
                "state.max_outbox",
                "must be at least 1",
            ));
        }
        check_listen("agi.listen", &self.agi.listen, "127.0.0.1:4573")?;
        positive("agi.decision_timeout", self.agi.decision_timeout)?;
        positive("agi.idle_timeout", self.agi.idle_timeout)?;
        if self.agi.max_sessions == 0 {
            return Err(ConfigError::invalid(
                "agi.max_sessions",
                "must be at least 1 (use agi.listen = \"\" to turn FastAGI off)",
            ));
        }
        if let Some(url) = &self.zammad.url {
            let key = if self.zammad.url_file.is_some() {
                "zammad.url_file"
            } else {
                "zammad.url"
            };
            check_url(url.expose_secret()).map_err(|m| ConfigError::invalid(key, m))?;
        }
        positive("zammad.timeout", self.zammad.timeout)?;
        digits("numbers.country_code", &self.numbers.country_code, false)?;
        digits(
            "numbers.national_prefix",
            &self.numbers.national_prefix,
            true,
        )?;
        digits(
            "numbers.international_prefix",
            &self.numbers.international_prefix,
            true,
        )?;
        for (key, contexts) in [
            ("calls.inbound_contexts", &self.calls.inbound_contexts),
            ("calls.outbound_contexts", &self.calls.outbound_contexts),
        ] {
            if contexts.iter().any(|c| c.trim().is_empty()) {
                return Err(ConfigError::invalid(key, "a context name is empty"));
            }
        }
        Regex::new(&self.calls.extension_pattern).map_err(|e| {
            ConfigError::invalid("calls.extension_pattern", format!("invalid regex: {e}"))
        })?;
        if let Some(pattern) = self.calls.trunk_pattern() {
            Regex::new(pattern).map_err(|e| {
                ConfigError::invalid("calls.trunk_channel", format!("invalid regex: {e}"))
            })?;
        }
        for (extension, agent) in &self.agents {
            if extension.trim().is_empty() {
                return Err(ConfigError::invalid("agents", "an extension is empty"));
            }
            non_empty(&format!("agents.{extension}.name"), agent.name())?;
            if agent.number().is_some_and(|n| n.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("agents.{extension}.number"),
                    "must not be empty (leave it out instead)",
                ));
            }
        }
        check_listen("admin.listen", &self.admin.listen, "127.0.0.1:9137")?;
        if self.state.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("state.dir", "must not be empty"));
        }
        check_level(&self.log.level).map_err(|m| ConfigError::invalid("log.level", m))?;
        Ok(())
    }

    /// For `run` and `check`: the AMI secret and the Zammad URL must be known. `replay`
    /// and `demo` do without.
    pub fn require_connections(&self) -> Result<(), ConfigError> {
        let missing =
            |s: &Option<SecretString>| s.as_ref().is_none_or(|s| s.expose_secret().is_empty());
        if missing(&self.ami.secret) {
            return Err(ConfigError::Missing {
                key: "ami.secret",
                file_key: "ami.secret_file",
                env: "AZB__AMI__SECRET",
            });
        }
        if missing(&self.zammad.url) {
            return Err(ConfigError::Missing {
                key: "zammad.url",
                file_key: "zammad.url_file",
                env: "AZB__ZAMMAD__URL",
            });
        }
        Ok(())
    }

    /// Warnings about legal but odd settings, to log once logging is up.
    pub fn check(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.agi.listen.is_empty() && !is_loopback(&self.agi.listen) {
            warnings.push(format!(
                "agi.listen = {:?} is not a loopback address: FastAGI has no authentication, \
                 so anyone who reaches it can make calls look like they came from Asterisk; \
                 firewall it to the Asterisk host",
                self.agi.listen
            ));
        }
        if !self.ami.tls && !is_loopback(&self.ami.address) {
            warnings.push(format!(
                "ami.address = {:?} is not a loopback address and ami.tls = false: the AMI \
                 secret and every call's numbers cross the network in clear text",
                self.ami.address
            ));
        }
        if !self.admin.listen.is_empty() && !is_loopback(&self.admin.listen) {
            warnings.push(format!(
                "admin.listen = {:?} is not a loopback address: /metrics and /health are \
                 served without authentication",
                self.admin.listen
            ));
        }
        if self.log.show_numbers {
            warnings.push(
                "log.show_numbers = true: phone numbers, which are personal data, will appear \
                 in the logs"
                    .to_string(),
            );
        }
        if self.agi.listen.is_empty() && self.calls.inbound_contexts.is_empty() {
            warnings.push(
                "agi.listen is empty and calls.inbound_contexts is empty: no inbound call \
                 will be reported"
                    .to_string(),
            );
        }
        if let Some(both) = self
            .calls
            .inbound_contexts
            .iter()
            .find(|c| self.calls.outbound_contexts.contains(c))
        {
            warnings.push(format!(
                "context {both:?} is in both calls.inbound_contexts and \
                 calls.outbound_contexts: its calls count as inbound"
            ));
        }
        if self.agi.decision_timeout > self.zammad.timeout {
            warnings.push(format!(
                "agi.decision_timeout ({}) is longer than zammad.timeout ({}): a call can \
                 never wait that long for Zammad's answer",
                humantime::format_duration(self.agi.decision_timeout),
                humantime::format_duration(self.zammad.timeout)
            ));
        }
        warnings
    }
}

/// `AZB__CALLS__INBOUND_CONTEXTS` for `calls.inbound_contexts`.
fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__")).to_ascii_uppercase()
}

/// The `AZB__…` variables of this process.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.to_ascii_uppercase().starts_with(&prefix) {
            continue;
        }
        let value = value.into_string().map_err(|_| {
            ConfigError::invalid(name, "the environment variable is not valid UTF-8")
        })?;
        env.push((name.to_string(), value));
    }
    Ok(env)
}

/// The TOML parser quotes the offending line, which may hold a secret: keep the position
/// and the message, drop the quoted source.
fn scrub_toml_error(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

fn sorted<V>(map: &config::Map<String, V>) -> Vec<(&String, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Rejects every key that §3 does not have, before serde sees the tree, so that the
/// message names the full key (serde's names only the field).
fn check_keys(tree: &config::Map<String, config::Value>) -> Result<(), ConfigError> {
    let sections: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
    for (section, value) in sorted(tree) {
        let Some((_, known)) = SCHEMA.iter().find(|(s, _)| s == section) else {
            return Err(unknown_key(section, &sections, value));
        };
        let table = match &value.kind {
            config::ValueKind::Table(table) => table,
            _ => {
                return Err(ConfigError::invalid(
                    section.as_str(),
                    format!("expected a table [{section}]"),
                ));
            }
        };
        for (key, value) in sorted(table) {
            if *section == "agents" {
                if let config::ValueKind::Table(entry) = &value.kind {
                    for (field, value) in sorted(entry) {
                        if !AGENT_KEYS.contains(&field.as_str()) {
                            return Err(unknown_key(
                                &format!("agents.{key}.{field}"),
                                &AGENT_KEYS
                                    .iter()
                                    .map(|k| format!("agents.{key}.{k}"))
                                    .collect::<Vec<_>>(),
                                value,
                            ));
                        }
                    }
                }
            } else if !known.contains(&key.as_str()) {
                let candidates: Vec<String> =
                    known.iter().map(|k| format!("{section}.{k}")).collect();
                return Err(unknown_key(&format!("{section}.{key}"), &candidates, value));
            }
        }
    }
    Ok(())
}

fn unknown_key<S: AsRef<str>>(key: &str, candidates: &[S], value: &config::Value) -> ConfigError {
    let mut hint = String::new();
    if let Some(best) = candidates
        .iter()
        .map(|c| (edit_distance(key, c.as_ref()), c.as_ref()))
        .filter(|(d, _)| *d <= 2)
        .min()
    {
        hint.push_str(&format!(" (did you mean \"{}\"?)", best.1));
    }
    if value.origin() == Some(ENV_ORIGIN) {
        hint.push_str(&format!(", set by {}", env_var_name(key)));
    }
    ConfigError::UnknownKey {
        key: key.to_string(),
        hint,
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn lookup<'a>(
    tree: &'a config::Map<String, config::Value>,
    key: &str,
) -> Option<&'a config::Value> {
    let mut parts = key.split('.');
    let mut value = tree.get(parts.next()?)?;
    for part in parts {
        match &value.kind {
            config::ValueKind::Table(table) => value = table.get(part)?,
            _ => return None,
        }
    }
    Some(value)
}

/// Turns a serde error of the `config` crate into one that names the key and says what
/// was expected in our words; secrets are never quoted.
fn value_error(
    error: config::ConfigError,
    tree: &config::Map<String, config::Value>,
) -> ConfigError {
    let (key, message) = split_key(error);
    let Some(key) = key else {
        return ConfigError::Other(message);
    };
    let raw = lookup(tree, &key).and_then(|v| v.clone().into_string().ok());
    let got = raw
        .as_ref()
        .map(|r| format!(", got {r:?}"))
        .unwrap_or_default();
    let message = if SECRET_KEYS.contains(&key.as_str()) {
        "expected a string".to_string()
    } else if DURATION_KEYS.contains(&key.as_str()) {
        match raw.as_deref().map(humantime::parse_duration) {
            Some(Err(e)) => format!("invalid duration {:?} ({e})", raw.unwrap_or_default()),
            _ => "expected a duration such as \"2s\" or \"500ms\"".to_string(),
        }
    } else if key == "agi.reject" {
        format!("expected \"hangup\" or \"variable\"{got}")
    } else if key == "log.format" {
        format!("expected \"text\" or \"json\"{got}")
    } else if key.starts_with("agents.") && key.matches('.').count() == 1 {
        "expected a name, or a table { name = \"...\", number = \"...\" }".to_string()
    } else {
        message
    };
    ConfigError::Invalid { key, message }
}

fn split_key(error: config::ConfigError) -> (Option<String>, String) {
    match error {
        config::ConfigError::At { error, key, .. } => {
            let (inner_key, message) = split_key(*error);
            (key.or(inner_key), message)
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key,
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::NotFound(key) => (Some(key), "missing".to_string()),
        other => (None, other.to_string()),
    }
}

fn resolve_secret_file(
    secret: &mut Option<SecretString>,
    file: Option<&Path>,
    key: &'static str,
    file_key: &'static str,
) -> Result<(), ConfigError> {
    let Some(path) = file else { return Ok(()) };
    if secret.is_some() {
        return Err(ConfigError::SecretConflict {
            inline: key,
            file: file_key,
        });
    }
    let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key: file_key,
        path: path.to_owned(),
        source,
    })?;
    let content = content.trim_end_matches(['\n', '\r']);
    if content.is_empty() {
        return Err(ConfigError::invalid(
            file_key,
            format!("{} is empty", path.display()),
        ));
    }
    *secret = Some(SecretString::from(content));
    Ok(())
}

/// `host:port`, `ip:port` or `[ipv6]:port`.
fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        let (host, _) = s.rsplit_once(':')?;
        return Some((host, addr.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let plausible = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    (!host.is_empty() && host.chars().all(plausible)).then_some((host, port))
}

fn is_loopback(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => {
            parse_host_port(address).is_some_and(|(h, _)| h.eq_ignore_ascii_case("localhost"))
        }
    }
}

fn check_listen(key: &str, value: &str, example: &str) -> Result<(), ConfigError> {
    if value.is_empty() || parse_host_port(value).is_some() {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!("expected an address such as {example}, or \"\" to disable it, got {value:?}"),
    ))
}

/// The message never contains the URL: its path holds the token.
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err("must start with http:// or https://".to_string());
    }
    reqwest::Url::parse(url)
        .map(drop)
        .map_err(|e| format!("not a valid URL ({e})"))
}

fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    if !level.contains(['=', ',', '[']) {
        return if LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            Ok(())
        } else {
            Err(format!(
                "expected trace, debug, info, warn, error, off or a tracing filter such as \
                 \"info,asterisk_zammad_bridge=debug\", got {level:?}"
            ))
        };
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| format!("invalid tracing filter {level:?}: {e}"))
}

fn digits(key: &str, value: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    if (may_be_empty || !value.is_empty()) && value.chars().all(|c| c.is_ascii_digit()) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!("digits only, got {value:?}"),
    ))
}

fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(())
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// The value of `key`, written as in DESIGN.md §3; `<unset>` for a missing option.
    fn value_of(c: &Config, key: &str) -> String {
        let s = |v: &str| format!("{v:?}");
        let d = |v: Duration| s(&humantime::format_duration(v).to_string());
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|x| s(x)).collect();
            format!("[{}]", items.join(", "))
        };
        let secret = |v: &Option<SecretString>| {
            v.as_ref()
                .map_or("<unset>".to_string(), |x| s(x.expose_secret()))
        };
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
            "zammad.url" => secret(&c.zammad.url),
            "zammad.url_file" => path(&c.zammad.url_file),
            "zammad.timeout" => d(c.zammad.timeout),
            "zammad.call_id_prefix" => s(&c.zammad.call_id_prefix),
            "numbers.country_code" => s(&c.numbers.country_code),
            "numbers.national_prefix" => s(&c.numbers.national_prefix),
            "numbers.international_prefix" => s(&c.numbers.international_prefix),
            "calls.inbound_contexts" => list(&c.calls.inbound_contexts),
            "calls.outbound_contexts" => list(&c.calls.outbound_contexts),
            "calls.extension_pattern" => s(&c.calls.extension_pattern),
            "calls.trunk_channel" => c.calls.trunk_channel.as_deref().map_or("<unset>".into(), s),
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

    /// DESIGN.md §3, literally, plus the keys added since (agi.max_sessions, ...).
    const DEFAULTS: &[(&str, &str)] = &[
        ("ami.address", r#""127.0.0.1:5038""#),
        ("ami.username", r#""zammad""#),
        ("ami.secret", "<unset>"),
        ("ami.secret_file", "<unset>"),
        ("ami.tls", "false"),
        ("ami.ping_interval", r#""15s""#),
        ("ami.reconcile_interval", r#""5m""#),
        ("agi.listen", r#""127.0.0.1:4573""#),
        ("agi.decision_timeout", r#""2s""#),
        ("agi.reject", r#""hangup""#),
        ("agi.max_sessions", "512"),
        ("agi.idle_timeout", r#""10s""#),
        ("zammad.url", "<unset>"),
        ("zammad.url_file", "<unset>"),
        ("zammad.timeout", r#""5s""#),
        ("zammad.call_id_prefix", r#""""#),
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

    fn schema_keys() -> Vec<String> {
        SCHEMA
            .iter()
            .flat_map(|(s, keys)| {
                let keys: Vec<String> = if keys.is_empty() {
                    vec![s.to_string()]
                } else {
                    keys.iter().map(|k| format!("{s}.{k}")).collect()
                };
                keys
            })
            .collect()
    }

    #[test]
    fn defaults_are_those_of_design_section_3() {
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
            "DEFAULTS must cover every key of SCHEMA"
        );
    }

    #[test]
    fn serde_knows_every_key_of_the_schema() {
        // The unknown-key check runs before serde; make sure the two agree.
        for key in schema_keys().iter().filter(|k| k.contains('.')) {
            let (section, field) = key.split_once('.').unwrap();
            let tree = config::Config::builder()
                .add_source(config::File::from_str(
                    &format!("[{section}]\n{field} = {{ x = 1 }}"),
                    config::FileFormat::Toml,
                ))
                .build()
                .unwrap();
            let error = tree.try_deserialize::<Config>().unwrap_err().to_string();
            assert!(!error.contains("unknown field"), "{key}: {error}");
        }
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
                &[
                    "agi.listen = \"0.0.0.0:4573\" is not a loopback address: FastAGI has no authentication",
                ],
            ),
            ("[agi]\nlisten = \"\"", &[]),
            (
                "[ami]\naddress = \"pbx.example:5038\"",
                &[
                    "ami.address = \"pbx.example:5038\" is not a loopback address and ami.tls = false",
                ],
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
    fn regexes_compile_from_the_calls_section() {
        let config = check("[calls]\ntrunk_channel = \"^PJSIP/trunk-\"", &[]).unwrap();
        let extension = config.calls.extension_regex();
        assert!(extension.is_match("201"));
        assert!(!extension.is_match("0301234567"));
        let trunk = config.calls.trunk_regex().unwrap();
        assert!(trunk.is_match("PJSIP/trunk-0000001"));
        assert!(!trunk.is_match("PJSIP/201-0000001"));
        assert!(Config::default().calls.trunk_regex().is_none());
        let empty = check("[calls]\ntrunk_channel = \"\"", &[]).unwrap();
        assert!(empty.calls.trunk_regex().is_none());
    }

    const EXAMPLE: &str = include_str!("../asterisk-examples/config.toml");
    const EXAMPLE_FREEPBX: &str = include_str!("../asterisk-examples/config-freepbx.toml");

    #[test]
    fn shipped_example_parses_with_the_defaults_of_section_3() {
        let config = check(EXAMPLE, &[]).unwrap();
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
            for (section, keys) in SCHEMA {
                assert!(
                    lines.contains(&format!("[{section}]").as_str()),
                    "[{section}]"
                );
                for key in *keys {
                    assert!(
                        lines.iter().any(|l| l.starts_with(&format!("{key} ="))),
                        "{section}.{key}"
                    );
                }
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
}
