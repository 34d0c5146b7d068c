//! `Config`: the typed tree of the TOML file of DESIGN.md §3, one section per part.
//!
//! Owns loading (file, then `AZB__SECTION__KEY` environment overrides, then `*_file`
//! secrets), rejecting unknown keys and bad values with a message that names the key, and
//! the defaults. Other modules receive their own section, already checked.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ami: AmiConfig,
    pub agi: AgiConfig,
    pub zammad: ZammadConfig,
    pub numbers: NumbersConfig,
    pub calls: CallsConfig,
    pub agents: BTreeMap<String, AgentEntry>,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfig {
    pub address: String,
    pub username: String,
    pub secret: Option<SecretString>,
    pub secret_file: Option<PathBuf>,
    pub tls: bool,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
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
}

impl Default for AgiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4573".into(),
            decision_timeout: Duration::from_secs(2),
            reject: RejectMode::Hangup,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZammadConfig {
    /// The CTI endpoint including its token; a secret.
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub inbound_contexts: Vec<String>,
    pub outbound_contexts: Vec<String>,
    /// Regex of internal extensions; calls between two of them are not reported.
    pub extension_pattern: String,
    /// Optional regex of channel names that are the provider trunk.
    pub trunk_channel: Option<String>,
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
        }
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
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/asterisk-zammad-bridge"),
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
    pub level: String,
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
