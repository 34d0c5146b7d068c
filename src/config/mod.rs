//! `Config`: the typed tree of the TOML file (docs/configuration.md), one section per part.
//!
//! Owns loading (the file, then `AZB__SECTION__KEY` environment overrides, then `*_file`
//! secrets), rejecting unknown keys and bad values with a [`ConfigError`] that names the key,
//! the defaults and the warnings about legal but odd settings ([`Config::check`]). Each
//! field's type is its validation ([`values`]): a loaded config holds an address, a compiled
//! regex, digits, a bounded duration, read once; other modules receive their own section and
//! never parse a value again, nor read the environment or the file themselves.
//!
//! The keys are the structs' fields: the unknown-key check and the environment's lists ask
//! serde what each key holds (`keys.rs`), so no list of names is kept beside the structs.
//!
//! Environment overrides: `AZB__AMI__SECRET=...` sets `ami.secret`. Names are
//! case-insensitive and become lowercase keys, so they can override the lowercase keys and
//! agent extensions made of digits (`AZB__AGENTS__201="Bob"`,
//! `AZB__AGENTS__203__NUMBER=...`), but cannot name an agent key with capital letters.
//! Values are taken as strings and converted by the field's type (`"true"`, `"2s"`, `"49"`);
//! they are never guessed as numbers, so `AZB__NUMBERS__INTERNATIONAL_PREFIX=00` stays
//! `"00"`. A key that holds a list (`calls.inbound_contexts`, `calls.outbound_contexts`)
//! takes a comma-separated list; an empty value is an empty list.

mod keys;
pub mod values;

pub use values::{
    AgentEntry, Contexts, Digits, DigitsOrEmpty, HostPort, ListenAddr, LogFormat, LogLevel,
    Pattern, ProxyUrl, RejectMode, Secret, TlsServerName, UrlSecret, ZammadUrl,
};

use keys::Shape;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable prefix: `AZB__SECTION__KEY`.
pub const ENV_PREFIX: &str = "AZB";
/// Where `run` and `check` look for the file when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/asterisk-zammad-bridge/config.toml";
/// Where the shipped unit loads its credentials from (`LoadCredential=`), and so where
/// `run` and `check` look for a secret nothing else gives ([`Config::find_credentials`]).
pub const CREDENTIAL_DIR: &str = "/etc/asterisk-zammad-bridge";
/// The credential (and file) names of the two secrets, as the unit's `LoadCredential=`
/// names them.
pub const AMI_SECRET_CREDENTIAL: &str = "ami-secret";
pub const ZAMMAD_URL_CREDENTIAL: &str = "zammad-url";
/// The examples' placeholders, refused by `run` and `check`.
const PLACEHOLDER_SECRET: &str = "change-me";
const PLACEHOLDER_TOKEN: &str = "TOKEN";

/// Where [`Config::find_credentials`] looks: `$CREDENTIALS_DIRECTORY` (systemd's, when
/// set), then [`CREDENTIAL_DIR`].
pub fn credential_dirs() -> Vec<PathBuf> {
    let systemd = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty());
    systemd
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(CREDENTIAL_DIR)])
        .collect()
}

fn first_existing(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// A credential found by [`Config::find_credentials`]: `key` is the secret it gives.
fn read_found_credential(path: &Path, key: &'static str) -> Result<String, ConfigError> {
    let content = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(
            key,
            format!(
                "found {} (the service's credential) but cannot read it: {e}; run as root, \
                 or name another file in {key}_file",
                path.display()
            ),
        )
    })?;
    let content = content.trim_end_matches(['\n', '\r']);
    if content.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} (the service's credential) is empty", path.display()),
        ));
    }
    Ok(content.to_string())
}

/// Where the service's credential file of a missing secret would be found, for the
/// message of [`ConfigError::Missing`].
fn credential_hint(key: &str) -> String {
    let name = match key {
        "ami.secret" => AMI_SECRET_CREDENTIAL,
        "zammad.url" => ZAMMAD_URL_CREDENTIAL,
        _ => return String::new(),
    };
    format!(", or put it in {CREDENTIAL_DIR}/{name} (read by root; the unit's credential)")
}

/// `ami.secret`, or `ami.secret (from PATH)` when it came from a file.
fn given_as(file: &Option<PathBuf>, key: &str) -> String {
    match file {
        Some(path) => format!("{key} (from {})", path.display()),
        None => key.to_string(),
    }
}

/// `net.ipv4.ip_unprivileged_port_start`, 1024 where it cannot be read.
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

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
        "{key} is required: set it in the file, as {file_key} (a file holding it), or with the environment variable {env}{}",
        credential_hint(key)
    )]
    Missing {
        key: &'static str,
        file_key: &'static str,
        env: &'static str,
    },
    /// A value still the shipped examples' placeholder (`change-me`, `…/TOKEN`).
    #[error("{key} is still the example's placeholder \"{placeholder}\": {hint}")]
    Placeholder {
        key: String,
        placeholder: &'static str,
        hint: &'static str,
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

/// The whole file. Build it with [`Config::load`] (or [`Config::from_toml_str`] in tests).
/// `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ami: AmiConfig,
    pub agi: AgiConfig,
    pub zammad: ZammadConfig,
    pub numbers: NumbersConfig,
    pub calls: CallsConfig,
    /// Extension -> who answers there.
    #[serde(deserialize_with = "values::agents")]
    pub agents: BTreeMap<String, AgentEntry>,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfig {
    pub address: HostPort,
    #[serde(deserialize_with = "values::non_empty")]
    pub username: String,
    /// After loading, holds the content of `secret_file` when that was given.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    pub tls: bool,
    /// Send the secret in clear text (`Secret:`) when Asterisk refuses the MD5 challenge;
    /// off, such a login fails without sending it.
    pub plain_login: bool,
    /// PEM file of certificates trusted besides the system's roots (a self-signed
    /// Asterisk's CA, or its certificate itself).
    pub tls_ca_file: Option<PathBuf>,
    /// The name the certificate must carry (in its subjectAltName), when it is not the host
    /// of `address`; `""` is the same as not set.
    #[serde(deserialize_with = "TlsServerName::unset_if_empty")]
    pub tls_server_name: Option<TlsServerName>,
    /// The certificates of `tls_ca_file`, read when the config is loaded.
    #[serde(skip)]
    pub tls_ca_certs: Vec<CertificateDer<'static>>,
    #[serde(deserialize_with = "values::duration")]
    pub ping_interval: Duration,
    /// How often the daemon asks Asterisk for its channels (`CoreShowChannels`) besides
    /// after every (re)connect, to end calls whose hangup it missed.
    #[serde(deserialize_with = "values::duration")]
    pub reconcile_interval: Duration,
}

impl Default for AmiConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:5038".parse().expect("a valid default"),
            username: "zammad".into(),
            secret: None,
            secret_file: None,
            tls: false,
            plain_login: false,
            tls_ca_file: None,
            tls_server_name: None,
            tls_ca_certs: Vec::new(),
            ping_interval: Duration::from_secs(15),
            reconcile_interval: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgiConfig {
    /// FastAGI listen address; empty disables the listener.
    pub listen: ListenAddr<4573>,
    #[serde(deserialize_with = "values::duration")]
    pub decision_timeout: Duration,
    pub reject: RejectMode,
    /// Most FastAGI sessions at once; more are closed at once (their calls go on).
    #[serde(deserialize_with = "values::sessions")]
    pub max_sessions: usize,
    /// Longest wait for Asterisk's next line in a FastAGI session; the whole environment
    /// block must arrive within it too.
    #[serde(deserialize_with = "values::duration")]
    pub idle_timeout: Duration,
    /// Most FastAGI sessions at once from one source address.
    #[serde(deserialize_with = "values::sessions")]
    pub max_sessions_per_source: usize,
    /// When set, a session is served only if its URL carries `secret=` with this value.
    /// After loading, holds the content of `secret_file` when that was given.
    pub secret: Option<UrlSecret>,
    pub secret_file: Option<PathBuf>,
}

impl Default for AgiConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr::default(),
            decision_timeout: Duration::from_secs(2),
            reject: RejectMode::Hangup,
            max_sessions: 512,
            idle_timeout: Duration::from_secs(10),
            max_sessions_per_source: 256,
            secret: None,
            secret_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZammadConfig {
    /// The CTI endpoint including its token. After loading, holds the content of
    /// `url_file` when that was given.
    pub url: Option<ZammadUrl>,
    pub url_file: Option<PathBuf>,
    #[serde(deserialize_with = "values::duration")]
    pub timeout: Duration,
    pub call_id_prefix: String,
    /// The HTTP proxy to Zammad; unset (or `""`), none at all: `HTTP_PROXY` and the
    /// like are not read.
    #[serde(deserialize_with = "ProxyUrl::unset_if_empty")]
    pub proxy: Option<ProxyUrl>,
}

impl Default for ZammadConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            timeout: Duration::from_secs(5),
            call_id_prefix: String::new(),
            proxy: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersConfig {
    pub country_code: Digits,
    pub national_prefix: DigitsOrEmpty,
    pub international_prefix: DigitsOrEmpty,
}

impl Default for NumbersConfig {
    fn default() -> Self {
        Self {
            country_code: "49".parse().expect("a valid default"),
            national_prefix: "0".parse().expect("a valid default"),
            international_prefix: "00".parse().expect("a valid default"),
        }
    }
}

/// Which channels make a call and which numbers are internal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub inbound_contexts: Contexts,
    pub outbound_contexts: Contexts,
    /// Internal extensions; calls between two of them are not reported.
    pub extension_pattern: Pattern,
    /// Channel names that are the provider trunk; `""` is the same as not set.
    #[serde(deserialize_with = "Pattern::unset_if_empty")]
    pub trunk_channel: Option<Pattern>,
    /// A call with no AMI event for this long is ended (its hangup sent).
    #[serde(deserialize_with = "values::duration")]
    pub stale_after: Duration,
}

impl Default for CallsConfig {
    fn default() -> Self {
        let contexts = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|c| c.to_string()).collect();
            Contexts::try_from(names).expect("a valid default")
        };
        Self {
            inbound_contexts: contexts(&["from-trunk", "from-pstn", "from-external"]),
            outbound_contexts: contexts(&["from-internal"]),
            extension_pattern: "^[0-9]{2,5}$".parse().expect("a valid default"),
            trunk_channel: None,
            stale_after: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin HTTP listen address; empty disables it.
    pub listen: ListenAddr<9137>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    #[serde(deserialize_with = "values::non_empty_path")]
    pub dir: PathBuf,
    /// Most undelivered events kept; past it, new calls are not reported.
    #[serde(deserialize_with = "values::at_least_one")]
    pub max_outbox: usize,
    /// How long a stopping daemon (SIGTERM) goes on delivering before it exits; what is
    /// left is delivered after the next start.
    #[serde(deserialize_with = "values::duration")]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A level or a tracing filter (`info`, `warn,asterisk_zammad_bridge=debug`);
    /// `RUST_LOG` wins.
    pub level: LogLevel,
    /// Phone numbers are personal data: logs show `***` unless this is on.
    pub show_numbers: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: LogLevel::default(),
            show_numbers: false,
        }
    }
}

const ENV_ORIGIN: &str = "the environment";

impl Config {
    /// The sections that differ between `self` and `new` and only take effect after a
    /// restart: everything but `[agents]`, `[calls]` and `[numbers]` (which SIGHUP reloads).
    pub fn sections_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        [
            ("ami", self.ami == new.ami),
            ("agi", self.agi == new.agi),
            ("zammad", self.zammad == new.zammad),
            ("admin", self.admin == new.admin),
            ("state", self.state == new.state),
            ("log", self.log == new.log),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(section, _)| section)
        .collect()
    }

    /// Loads `path`, then applies the `AZB__SECTION__KEY` variables of this process, then
    /// reads the `*_file` secrets.
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
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(name, _)| env_key(name).is_some())
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
        for (name, raw) in &env {
            let Some(key) = env_key(name) else { continue };
            let path: Vec<&str> = key.split('.').collect();
            if keys::shape_at::<Config>(&path) == Shape::List {
                let list: Vec<String> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                builder = builder
                    .set_override(&key, list)
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
        let mut tree =
            config::Source::collect(&built).map_err(|e| ConfigError::Other(e.to_string()))?;
        check_keys(&tree, &mut Vec::new())?;
        write_out_agent_names(&mut tree);
        let tree = config::Value::new(None, config::ValueKind::Table(tree));
        let mut config = Config::deserialize(tree).map_err(value_error)?;
        config.validate()?;
        config.resolve_secret_files()?;
        config.read_tls_ca_file()?;
        Ok(config)
    }

    /// The rules across fields, which no field's type can state: a secret is given inline
    /// or as a file, not both. The loaders run it before they read the `*_file` secrets
    /// (after that, both fields are set: the file says where the secret came from).
    fn validate(&self) -> Result<(), ConfigError> {
        for (inline, file, given_inline, given_file) in [
            (
                "ami.secret",
                "ami.secret_file",
                self.ami.secret.is_some(),
                self.ami.secret_file.is_some(),
            ),
            (
                "zammad.url",
                "zammad.url_file",
                self.zammad.url.is_some(),
                self.zammad.url_file.is_some(),
            ),
            (
                "agi.secret",
                "agi.secret_file",
                self.agi.secret.is_some(),
                self.agi.secret_file.is_some(),
            ),
        ] {
            if given_inline && given_file {
                return Err(ConfigError::SecretConflict { inline, file });
            }
        }
        Ok(())
    }

    /// Replaces `ami.secret_file` and `zammad.url_file` by the content of the file, less
    /// its trailing newline. The `*_file` fields stay set, to say where it came from.
    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.ami.secret_file {
            let secret = read_secret_file(path, "ami.secret_file")?;
            self.ami.secret = Some(Secret::from(secret));
        }
        if let Some(path) = &self.zammad.url_file {
            let url = read_secret_file(path, "zammad.url_file")?;
            self.zammad.url = Some(
                url.parse()
                    .map_err(|message| ConfigError::invalid("zammad.url_file", message))?,
            );
        }
        if let Some(path) = &self.agi.secret_file {
            let secret = read_secret_file(path, "agi.secret_file")?;
            self.agi.secret = Some(
                secret
                    .parse()
                    .map_err(|message| ConfigError::invalid("agi.secret_file", message))?,
            );
        }
        Ok(())
    }

    /// Reads `ami.tls_ca_file` (PEM) into `ami.tls_ca_certs`: it must hold a certificate.
    fn read_tls_ca_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.ami.tls_ca_file else {
            return Ok(());
        };
        let key = "ami.tls_ca_file";
        let bytes = std::fs::read(path).map_err(|source| ConfigError::SecretFile {
            key,
            path: path.clone(),
            source,
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ConfigError::invalid(key, format!("{} is not valid PEM: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
                    path.display()
                ),
            ));
        }
        self.ami.tls_ca_certs = certs;
        Ok(())
    }

    /// For `run` and `check`: a secret that neither the file nor the environment gives is
    /// read from systemd's credential of that name (`$CREDENTIALS_DIRECTORY/ami-secret`,
    /// `.../zammad-url`), else from the file the shipped unit loads it from
    /// ([`CREDENTIAL_DIR`]`/ami-secret`, `.../zammad-url`); `dirs` are those directories in
    /// that order ([`credential_dirs`]). The `*_file` key then names the file found.
    pub fn find_credentials(&mut self, dirs: &[PathBuf]) -> Result<(), ConfigError> {
        if self.ami.secret.is_none()
            && let Some(path) = first_existing(dirs, AMI_SECRET_CREDENTIAL)
        {
            let secret = read_found_credential(&path, "ami.secret")?;
            self.ami.secret = Some(Secret::from(secret));
            self.ami.secret_file = Some(path);
        }
        if self.zammad.url.is_none()
            && let Some(path) = first_existing(dirs, ZAMMAD_URL_CREDENTIAL)
        {
            let url = read_found_credential(&path, "zammad.url")?;
            self.zammad.url = Some(url.parse().map_err(|message| {
                ConfigError::invalid(
                    "zammad.url",
                    format!("{} (from {})", message, path.display()),
                )
            })?);
            self.zammad.url_file = Some(path);
        }
        Ok(())
    }

    /// For `run` and `check`: everything the daemon needs to run, so that a setting it
    /// cannot run with stops it here, with exit 78 (which systemd does not restart), not
    /// later in a restart loop: the AMI secret and the Zammad URL known and not the
    /// examples' placeholders, a `state.dir` that can be a directory, listen ports the
    /// unprivileged service can bind. (The TLS set-up is checked by `ami::tls`, which
    /// `main` asks too.) `replay` and `demo` do without.
    pub fn require_connections(&self) -> Result<(), ConfigError> {
        self.require_ami()?;
        self.require_zammad()?;
        self.require_usable_state_dir(std::env::var("STATE_DIRECTORY").ok().as_deref())?;
        self.require_unprivileged_ports(unprivileged_port_start())
    }

    /// The AMI secret is known and not the examples' placeholder (`run`, `check`,
    /// `record`).
    pub fn require_ami(&self) -> Result<(), ConfigError> {
        let Some(secret) = self
            .ami
            .secret
            .as_ref()
            .filter(|s| !s.expose_secret().is_empty())
        else {
            return Err(ConfigError::Missing {
                key: "ami.secret",
                file_key: "ami.secret_file",
                env: "AZB__AMI__SECRET",
            });
        };
        if secret.expose_secret() == PLACEHOLDER_SECRET {
            return Err(ConfigError::Placeholder {
                key: given_as(&self.ami.secret_file, "ami.secret"),
                placeholder: PLACEHOLDER_SECRET,
                hint: "set the secret of the AMI user in manager.conf",
            });
        }
        Ok(())
    }

    /// The Zammad URL is known and not the examples' placeholder.
    fn require_zammad(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.zammad.url else {
            return Err(ConfigError::Missing {
                key: "zammad.url",
                file_key: "zammad.url_file",
                env: "AZB__ZAMMAD__URL",
            });
        };
        let token = url.expose_secret().rsplit('/').next();
        if token == Some(PLACEHOLDER_TOKEN) {
            return Err(ConfigError::Placeholder {
                key: given_as(&self.zammad.url_file, "zammad.url"),
                placeholder: "…/TOKEN",
                hint: "copy the endpoint (with its token) that Zammad shows under Admin > \
                       Integrations > CTI (generic)",
            });
        }
        Ok(())
    }

    /// `state.dir`, or the nearest of its parents that exists, is a directory; and under
    /// systemd (`state_directories`: `$STATE_DIRECTORY`, the unit's `StateDirectory=`, `:`
    /// between several) it lies in one of them, the only place the service may write.
    fn require_usable_state_dir(&self, state_directories: Option<&str>) -> Result<(), ConfigError> {
        let dir = &self.state.dir;
        if let Some(allowed) = state_directories.filter(|d| !d.is_empty())
            && !allowed.split(':').any(|d| dir.starts_with(d))
        {
            return Err(ConfigError::invalid(
                "state.dir",
                format!(
                    "{} is outside the unit's StateDirectory= ({allowed}), the only place \
                     the service may write: leave state.dir at its default, or change \
                     StateDirectory= in a drop-in (systemctl edit asterisk-zammad-bridge)",
                    dir.display()
                ),
            ));
        }
        if let Some(existing) = dir.ancestors().find(|p| p.exists())
            && !existing.is_dir()
        {
            return Err(ConfigError::invalid(
                "state.dir",
                format!(
                    "{} cannot be a directory: {} is not one",
                    dir.display(),
                    existing.display()
                ),
            ));
        }
        Ok(())
    }

    /// The listeners' ports are at least `start` (`net.ipv4.ip_unprivileged_port_start`):
    /// the service runs without capabilities (the unit's `CapabilityBoundingSet=`), so a
    /// lower port could never be bound.
    fn require_unprivileged_ports(&self, start: u16) -> Result<(), ConfigError> {
        for (key, port) in [
            ("agi.listen", self.agi.listen.port()),
            ("admin.listen", self.admin.listen.port()),
        ] {
            if let Some(port) = port.filter(|p| *p != 0 && *p < start) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "port {port} is privileged (below {start}, \
                         net.ipv4.ip_unprivileged_port_start) and the service has no \
                         capabilities to bind it: choose a port from {start} up"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Warnings about legal but odd settings, to log once logging is up.
    pub fn check(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.agi.listen.is_loopback() && self.agi.secret.is_none() {
            warnings.push(format!(
                "agi.listen = {:?} is not a loopback address and agi.secret is not set: \
                 anyone who reaches it can open FastAGI sessions; set agi.secret (and \
                 ?secret= in the dialplan's AGI URL) and firewall it to the Asterisk host",
                self.agi.listen
            ));
        }
        if !self.ami.tls && !self.ami.address.is_loopback() {
            warnings.push(format!(
                "ami.address = {:?} is not a loopback address and ami.tls = false: the AMI \
                 secret and every call's numbers cross the network in clear text",
                self.ami.address
            ));
        }
        if !self.ami.tls && (self.ami.tls_ca_file.is_some() || self.ami.tls_server_name.is_some()) {
            warnings.push(
                "ami.tls_ca_file or ami.tls_server_name is set but ami.tls = false: they are \
                 not used"
                    .to_string(),
            );
        }
        if self.ami.plain_login {
            warnings.push(
                "ami.plain_login = true: when Asterisk refuses the MD5 challenge, the AMI \
                 secret is sent in clear text, to whoever answers on ami.address"
                    .to_string(),
            );
        }
        if self
            .zammad
            .url
            .as_ref()
            .is_some_and(ZammadUrl::is_clear_text_to_remote)
        {
            warnings.push(
                "zammad.url is plain http:// to a host that is not this one: the CTI token \
                 and every call's numbers cross the network in clear text; use https://"
                    .to_string(),
            );
        }
        if !self.admin.listen.is_loopback() {
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
        if self.agi.listen.is_off() && self.calls.inbound_contexts.is_empty() {
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

/// `calls.inbound_contexts` for `AZB__CALLS__INBOUND_CONTEXTS` (any case); `None` for a
/// name without the `AZB__` prefix.
fn env_key(name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let prefix = format!("{ENV_PREFIX}__").to_ascii_lowercase();
    Some(name.strip_prefix(&prefix)?.replace("__", "."))
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

/// Rejects every key the structs do not have (the table at `path` of the tree), before
/// serde reads the values: so that an unknown key is reported first, by its full name, with
/// the key that was probably meant. The top level holds only sections, which are tables.
fn check_keys<'a>(
    table: &'a config::Map<String, config::Value>,
    path: &mut Vec<&'a str>,
) -> Result<(), ConfigError> {
    let known = match keys::shape_at::<Config>(path) {
        Shape::Table(fields) => Some(fields),
        _ => None,
    };
    let prefix: String = path.iter().map(|p| format!("{p}.")).collect();
    for (key, value) in sorted(table) {
        let full = format!("{prefix}{key}");
        if let Some(fields) = known.filter(|fields| !fields.contains(&key.as_str())) {
            let candidates: Vec<String> = fields.iter().map(|f| format!("{prefix}{f}")).collect();
            return Err(unknown_key(&full, &candidates, value));
        }
        match &value.kind {
            config::ValueKind::Table(inner) => {
                path.push(key);
                check_keys(inner, path)?;
                path.pop();
            }
            _ if path.is_empty() => {
                return Err(ConfigError::invalid(
                    full,
                    format!("expected a table [{key}]"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `"201" = "Alice"` is short for `"201" = { name = "Alice" }`: written out before serde
/// reads the tree, so that a blank name is reported as `agents.201.name` in both forms.
fn write_out_agent_names(tree: &mut config::Map<String, config::Value>) {
    let Some(config::Value {
        kind: config::ValueKind::Table(agents),
        ..
    }) = tree.get_mut("agents")
    else {
        return;
    };
    for entry in agents.values_mut() {
        if let config::ValueKind::String(name) = &entry.kind {
            let origin = entry.origin().map(str::to_string);
            let name = config::Value::new(origin.as_ref(), name.clone());
            let table = config::Map::from([("name".to_string(), name)]);
            *entry = config::Value::new(origin.as_ref(), config::ValueKind::Table(table));
        }
    }
}

fn unknown_key(key: &str, candidates: &[String], value: &config::Value) -> ConfigError {
    let mut hint = String::new();
    if let Some(best) = candidates
        .iter()
        .map(|c| (edit_distance(key, c), c))
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

/// A serde error of the `config` crate as one that names the key. The message is the
/// field's type's own ([`values`]), or the `config` crate's for a wrong type; neither
/// quotes a secret.
fn value_error(error: config::ConfigError) -> ConfigError {
    match split_key(error) {
        (Some(key), message) => ConfigError::Invalid { key, message },
        (None, message) => ConfigError::Other(message),
    }
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

/// The content of a `*_file` secret, less its trailing newline; not empty.
fn read_secret_file(path: &Path, key: &'static str) -> Result<String, ConfigError> {
    let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key,
        path: path.to_owned(),
        source,
    })?;
    let content = content.trim_end_matches(['\n', '\r']);
    if content.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(content.to_string())
}

#[cfg(test)]
mod tests;
