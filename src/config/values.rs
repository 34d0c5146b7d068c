//! The value types of the config: each is read once, from the string (or number) the file or
//! the environment gives, and is valid from then on, so that nothing downstream checks or
//! parses it again.
//!
//! A refusal is a message about the value ("digits only, got \"+49\""); the loader puts the
//! key in front of it. A message never repeats a secret ([`Secret`], [`ZammadUrl`]).
//!
//! Values of a standard type with a bound (a positive duration, a count of at least 1, a
//! non-empty string or path) keep that type, so that callers and hand-built configs use them
//! as they are; the bound is the field's deserialiser (`#[serde(deserialize_with = ...)]`).

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Reads a value that is written as a string. A number or a boolean counts as its text, as
/// the `config` crate converts it for a `String` (`country_code = 49` is `"49"`); a table or
/// a list is refused with "expected {expected}", in our words and without the value.
fn text<'de, D: Deserializer<'de>>(d: D, expected: &'static str) -> Result<String, D::Error> {
    d.deserialize_any(Text(expected))
}

struct Text(&'static str);

impl<'de> Visitor<'de> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(expected(self.0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(expected(self.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(expected(self.0))
    }
}

fn expected<E: de::Error>(what: &str) -> E {
    E::custom(format_args!("expected {what}"))
}

/// A string through `FromStr`, its refusal as the message.
fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// `Deref` to `str`, `Display` and `Debug` as the string, comparison with `&str`.
macro_rules! string_value {
    ($type:ident $(<const $param:ident: $param_type:ty>)?) => {
        impl$(<const $param: $param_type>)? Deref for $type$(<$param>)? {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl$(<const $param: $param_type>)? fmt::Display for $type$(<$param>)? {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl$(<const $param: $param_type>)? fmt::Debug for $type$(<$param>)? {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl$(<const $param: $param_type>)? PartialEq<&str> for $type$(<$param>)? {
            fn eq(&self, other: &&str) -> bool {
                *self.0 == **other
            }
        }

        impl$(<const $param: $param_type>)? PartialEq<$type$(<$param>)?> for &str {
            fn eq(&self, other: &$type$(<$param>)?) -> bool {
                **self == *other.0
            }
        }

        impl$(<const $param: $param_type>)? From<$type$(<$param>)?> for String {
            fn from(value: $type$(<$param>)?) -> String {
                value.0
            }
        }

        impl<'de, $(const $param: $param_type)?> Deserialize<'de> for $type$(<$param>)? {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parsed(d)
            }
        }
    };
}

/// `host:port`, `ip:port` or `[ipv6]:port`; `None` for anything else.
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

/// A loopback IP, or the host name `localhost`.
fn is_loopback(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => {
            parse_host_port(address).is_some_and(|(h, _)| h.eq_ignore_ascii_case("localhost"))
        }
    }
}

/// Where to connect: `host:port`, `ip:port` or `[ipv6]:port`, port 1 to 65535 (`ami.address`).
#[derive(Clone, PartialEq, Eq)]
pub struct HostPort(String);

string_value!(HostPort);

impl HostPort {
    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.0)
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_host_port(s) {
            Some((_, port)) if port != 0 => Ok(HostPort(s.to_string())),
            _ => Err(format!("expected host:port, got {s:?}")),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        HostPort(addr.to_string())
    }
}

/// Where to listen: `host:port` (port 0 lets the system choose), or `""` for not at all
/// (`agi.listen`, `admin.listen`). `DEFAULT_PORT` is the port of the default,
/// `127.0.0.1:DEFAULT_PORT`, which the refusal shows as an example.
#[derive(Clone, PartialEq, Eq)]
pub struct ListenAddr<const DEFAULT_PORT: u16>(String);

string_value!(ListenAddr<const DEFAULT_PORT: u16>);

impl<const DEFAULT_PORT: u16> ListenAddr<DEFAULT_PORT> {
    /// `""`: the listener is off.
    pub fn off() -> Self {
        ListenAddr(String::new())
    }

    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    /// Off, or on a loopback address (`127.0.0.1`, `[::1]`, `localhost`).
    pub fn is_loopback(&self) -> bool {
        self.is_off() || is_loopback(&self.0)
    }

    /// The port; `None` when off.
    pub fn port(&self) -> Option<u16> {
        parse_host_port(&self.0).map(|(_, port)| port)
    }
}

impl<const DEFAULT_PORT: u16> Default for ListenAddr<DEFAULT_PORT> {
    fn default() -> Self {
        ListenAddr(format!("127.0.0.1:{DEFAULT_PORT}"))
    }
}

impl<const DEFAULT_PORT: u16> FromStr for ListenAddr<DEFAULT_PORT> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || parse_host_port(s).is_some() {
            return Ok(ListenAddr(s.to_string()));
        }
        Err(format!(
            "expected an address such as 127.0.0.1:{DEFAULT_PORT}, or \"\" to disable it, got {s:?}"
        ))
    }
}

impl<const DEFAULT_PORT: u16> From<SocketAddr> for ListenAddr<DEFAULT_PORT> {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr(addr.to_string())
    }
}

/// A secret (`ami.secret`): `Debug` hides it, no message shows it; two are equal when their
/// text is (for the reload's comparison).
#[derive(Clone)]
pub struct Secret(SecretString);

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s.into())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.into())
    }
}

impl From<Secret> for SecretString {
    fn from(secret: Secret) -> SecretString {
        secret.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a string").map(Secret::from)
    }
}

/// Zammad's CTI endpoint, `http[s]://host/api/v1/cti/TOKEN` (`zammad.url`): a [`Secret`],
/// since its path holds the token; an absolute `http` or `https` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ZammadUrl(Secret);

impl ExposeSecret<str> for ZammadUrl {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ZammadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ZammadUrl([REDACTED])")
    }
}

impl FromStr for ZammadUrl {
    type Err = String;

    /// The refusal never contains the URL.
    fn from_str(url: &str) -> Result<Self, String> {
        let scheme = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if !(scheme.starts_with("http://") || scheme.starts_with("https://")) {
            return Err("must start with http:// or https://".to_string());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".to_string());
        }
        // The token is the last segment: `…/api/v1/cti/TOKEN`, no slash after it.
        if parsed.path().rsplit('/').next().is_none_or(str::is_empty) {
            return Err(
                "the path must end in the CTI token (https://HOST/api/v1/cti/TOKEN, no / after it)"
                    .to_string(),
            );
        }
        Ok(ZammadUrl(Secret::from(url)))
    }
}

impl From<ZammadUrl> for SecretString {
    fn from(url: ZammadUrl) -> SecretString {
        url.0.into()
    }
}

impl<'de> Deserialize<'de> for ZammadUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a string")?.parse().map_err(de::Error::custom)
    }
}

impl ZammadUrl {
    /// A plain `http://` URL to a host other than loopback or `localhost`: the token and
    /// every call's numbers would cross the network in clear text.
    pub fn is_clear_text_to_remote(&self) -> bool {
        let Ok(url) = reqwest::Url::parse(self.expose_secret()) else {
            return false;
        };
        url.scheme() == "http" && !url_host_is_local(&url)
    }
}

/// The URL's host is a loopback address or `localhost` (or a name under `.localhost`).
fn url_host_is_local(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// A secret the dialplan writes into a URL (`agi.secret`, `AGI(agi://…/newcall?secret=…)`):
/// at least [`UrlSecret::MIN_LEN`] characters of `A-Z a-z 0-9 . _ ~ -`, which need no
/// quoting in a URL or the dialplan (a `,` would split the AGI's arguments). `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlSecret(Secret);

impl UrlSecret {
    pub const MIN_LEN: usize = 16;

    /// Whether `given` is this secret; takes as long for every `given` of the same length.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.expose_secret().as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl ExposeSecret<str> for UrlSecret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for UrlSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlSecret([REDACTED])")
    }
}

impl FromStr for UrlSecret {
    type Err = String;

    /// The refusal never contains the secret.
    fn from_str(s: &str) -> Result<Self, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
        if !s.chars().all(allowed) {
            return Err(
                "only A-Z, a-z, 0-9 and . _ ~ - (it goes into the AGI URL as it is)".to_string(),
            );
        }
        if s.len() < Self::MIN_LEN {
            return Err(format!(
                "at least {} characters (e.g. `openssl rand -hex 16`), got {}",
                Self::MIN_LEN,
                s.len()
            ));
        }
        Ok(UrlSecret(Secret::from(s)))
    }
}

impl<'de> Deserialize<'de> for UrlSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d, "a string")?.parse().map_err(de::Error::custom)
    }
}

/// The HTTP proxy to reach Zammad through (`zammad.proxy`): `http://` or `https://`, with
/// a host, optionally `user:password@`. Kept as a [`Secret`] (its password); `Display`
/// shows `scheme://host:port` only. Without it the client uses no proxy at all, whatever
/// `HTTP_PROXY` and friends say.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    url: Secret,
    shown: String,
}

impl ProxyUrl {
    /// For the optional key: `""` is the same as not set.
    pub fn unset_if_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProxyUrl>, D::Error> {
        let url = text(d, "a string")?;
        if url.is_empty() {
            return Ok(None);
        }
        url.parse().map(Some).map_err(de::Error::custom)
    }
}

impl ExposeSecret<str> for ProxyUrl {
    fn expose_secret(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({:?})", self.shown)
    }
}

impl FromStr for ProxyUrl {
    type Err = String;

    /// The refusal never contains the URL (it may hold a password).
    fn from_str(s: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(s).map_err(|e| format!("not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must start with http:// or https://".to_string());
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("the URL has no host".to_string());
        };
        let shown = match url.port_or_known_default() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        Ok(ProxyUrl {
            url: Secret::from(s),
            shown,
        })
    }
}

/// The name an AMI TLS certificate must carry (`ami.tls_server_name`): a DNS name or an
/// IP address, as rustls checks it against the certificate's subjectAltName.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsServerName(String);

string_value!(TlsServerName);

impl TlsServerName {
    /// For the optional key: `""` is the same as not set.
    pub fn unset_if_empty<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<TlsServerName>, D::Error> {
        let name = text(d, "a string")?;
        if name.is_empty() {
            return Ok(None);
        }
        name.parse().map(Some).map_err(de::Error::custom)
    }
}

impl FromStr for TlsServerName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        rustls_pki_types::ServerName::try_from(s)
            .map(|_| TlsServerName(s.to_string()))
            .map_err(|_| format!("{s:?} is neither a DNS name nor an IP address"))
    }
}

/// One digit or more (`numbers.country_code`).
#[derive(Clone, PartialEq, Eq)]
pub struct Digits(String);

string_value!(Digits);

impl FromStr for Digits {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match DigitsOrEmpty::from_str(s)? {
            DigitsOrEmpty(d) if !d.is_empty() => Ok(Digits(d)),
            _ => Err(format!("digits only, got {s:?}")),
        }
    }
}

/// Digits, or `""` for none (`numbers.national_prefix`, `numbers.international_prefix`).
#[derive(Clone, PartialEq, Eq)]
pub struct DigitsOrEmpty(String);

string_value!(DigitsOrEmpty);

impl FromStr for DigitsOrEmpty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.chars().all(|c| c.is_ascii_digit()) {
            Ok(DigitsOrEmpty(s.to_string()))
        } else {
            Err(format!("digits only, got {s:?}"))
        }
    }
}

/// Dialplan context names, none of them blank (`calls.inbound_contexts`,
/// `calls.outbound_contexts`). In the environment, a comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contexts(Vec<String>);

impl Deref for Contexts {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for Contexts {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        if names.iter().any(|c| c.trim().is_empty()) {
            return Err("a context name is empty".to_string());
        }
        Ok(Contexts(names))
    }
}

impl<'de> Deserialize<'de> for Contexts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d)?
            .try_into()
            .map_err(de::Error::custom)
    }
}

/// A regex, compiled (`calls.extension_pattern`; `calls.trunk_channel`, where `""` is unset:
/// [`Pattern::unset_if_empty`]). Two are equal when their source is.
#[derive(Clone)]
pub struct Pattern(Regex);

impl Pattern {
    pub fn regex(&self) -> &Regex {
        &self.0
    }

    /// For an optional pattern: `""` is the same as not set.
    pub fn unset_if_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Pattern>, D::Error> {
        let source = String::deserialize(d)?;
        if source.is_empty() {
            return Ok(None);
        }
        source.parse().map(Some).map_err(de::Error::custom)
    }
}

impl Deref for Pattern {
    type Target = Regex;

    fn deref(&self) -> &Regex {
        &self.0
    }
}

impl From<Pattern> for Regex {
    fn from(pattern: Pattern) -> Regex {
        pattern.0
    }
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Regex::new(s)
            .map(Pattern)
            .map_err(|e| format!("invalid regex: {e}"))
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d)
    }
}

/// A level (`trace` … `error`, `off`) or a tracing filter
/// (`info,asterisk_zammad_bridge=debug`) that `EnvFilter` accepts (`log.level`).
#[derive(Clone, PartialEq, Eq)]
pub struct LogLevel(String);

string_value!(LogLevel);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel("info".to_string())
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(level: &str) -> Result<Self, String> {
        const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
        if !level.contains(['=', ',', '[']) {
            if LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
                return Ok(LogLevel(level.to_string()));
            }
            return Err(format!(
                "expected trace, debug, info, warn, error, off or a tracing filter such as \
                 \"info,asterisk_zammad_bridge=debug\", got {level:?}"
            ));
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map(|_| LogLevel(level.to_string()))
            .map_err(|e| format!("invalid tracing filter {level:?}: {e}"))
    }
}

/// What the bridge does with a caller Zammad blocks (`agi.reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectMode {
    /// Hang the channel up with cause 17 (busy).
    Hangup,
    /// Only set `ZAMMAD_ACTION`; the dialplan decides.
    Variable,
}

impl<'de> Deserialize<'de> for RejectMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = r#""hangup" or "variable""#;
        match text(d, EXPECTED)?.as_str() {
            "hangup" => Ok(RejectMode::Hangup),
            "variable" => Ok(RejectMode::Variable),
            other => Err(de::Error::custom(format_args!(
                "expected {EXPECTED}, got {other:?}"
            ))),
        }
    }
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = r#""text" or "json""#;
        match text(d, EXPECTED)?.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(de::Error::custom(format_args!(
                "expected {EXPECTED}, got {other:?}"
            ))),
        }
    }
}

/// `[agents]`: `"201" = "Alice"` or `"203" = { name = "Carol", number = "4930123456203" }`.
///
/// The name must not be blank and the number, if given, not empty. The loader writes the
/// short form out as `{ name = "Alice" }` before reading it (so that a blank name is reported
/// as `agents.201.name`): what it loads is always [`AgentEntry::Full`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEntry {
    Name(String),
    Full {
        name: String,
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

const AGENT_EXPECTED: &str = r#"a name, or a table { name = "...", number = "..." }"#;

/// The table form of an [`AgentEntry`]; `name` is an `Option` so that a table without one
/// gets the entry's message rather than serde's "missing field".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentTable {
    #[serde(default)]
    name: Option<AgentName>,
    #[serde(default)]
    number: Option<AgentNumber>,
}

/// Not blank.
struct AgentName(String);

impl<'de> Deserialize<'de> for AgentName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        non_empty(d).map(AgentName)
    }
}

/// Not empty: leave the key out instead.
struct AgentNumber(String);

impl<'de> Deserialize<'de> for AgentNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let number = String::deserialize(d)?;
        if number.trim().is_empty() {
            return Err(de::Error::custom(
                "must not be empty (leave it out instead)",
            ));
        }
        Ok(AgentNumber(number))
    }
}

struct AgentVisitor;

impl<'de> Visitor<'de> for AgentVisitor {
    type Value = AgentEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(AGENT_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<AgentEntry, E> {
        if v.trim().is_empty() {
            return Err(E::custom("must not be empty"));
        }
        Ok(AgentEntry::Name(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AgentEntry, A::Error> {
        let table = AgentTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let Some(AgentName(name)) = table.name else {
            return Err(expected(AGENT_EXPECTED));
        };
        Ok(AgentEntry::Full {
            name,
            number: table.number.map(|AgentNumber(n)| n),
        })
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<AgentEntry, E> {
        Err(expected(AGENT_EXPECTED))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<AgentEntry, E> {
        Err(expected(AGENT_EXPECTED))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<AgentEntry, E> {
        Err(expected(AGENT_EXPECTED))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<AgentEntry, E> {
        Err(expected(AGENT_EXPECTED))
    }

    fn visit_unit<E: de::Error>(self) -> Result<AgentEntry, E> {
        Err(expected(AGENT_EXPECTED))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<AgentEntry, A::Error> {
        Err(expected(AGENT_EXPECTED))
    }
}

impl<'de> Deserialize<'de> for AgentEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AgentVisitor)
    }
}

/// An `[agents]` key: not blank.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Extension(String);

impl<'de> Deserialize<'de> for Extension {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let extension = String::deserialize(d)?;
        if extension.trim().is_empty() {
            return Err(de::Error::custom("an extension is empty"));
        }
        Ok(Extension(extension))
    }
}

/// `[agents]`: extension → who answers there; no extension blank.
pub fn agents<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, AgentEntry>, D::Error> {
    let agents = BTreeMap::<Extension, AgentEntry>::deserialize(d)?;
    Ok(agents.into_iter().map(|(k, v)| (k.0, v)).collect())
}

/// The longest duration the config takes: every duration here becomes a deadline or a timer
/// period (`Instant + duration`), and a longer one would overflow that (`500000000000y`).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration such as `"2s"`, `"500ms"` or `"1h 30m"` (humantime), greater than zero and at
/// most [`MAX_DURATION`]. For `#[serde(deserialize_with = "...")]`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = text(d, r#"a duration such as "2s" or "500ms""#)?;
    let duration = humantime::parse_duration(&raw)
        .map_err(|e| de::Error::custom(format_args!("invalid duration {raw:?} ({e})")))?;
    if duration.is_zero() {
        return Err(de::Error::custom("must be greater than zero"));
    }
    if duration > MAX_DURATION {
        return Err(de::Error::custom(format_args!(
            "must be at most {}, got {raw:?}",
            humantime::format_duration(MAX_DURATION)
        )));
    }
    Ok(duration)
}

/// A count of at least 1 (`state.max_outbox`).
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    at_least_one_or(d, "")
}

/// `agi.max_sessions`: a count of at least 1; off is `agi.listen = ""`.
pub fn sessions<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    at_least_one_or(d, r#" (use agi.listen = "" to turn FastAGI off)"#)
}

fn at_least_one_or<'de, D: Deserializer<'de>>(d: D, hint: &str) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(de::Error::custom(format_args!("must be at least 1{hint}"))),
        n => Ok(n),
    }
}

/// A string that is not blank (`ami.username`).
pub fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(s)
}

/// A path that is not empty (`state.dir`).
pub fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if path.as_os_str().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{Error, StrDeserializer};

    /// `input` read by `read` as the config reads a string; a refusal as its message.
    fn read<T>(
        read: fn(StrDeserializer<'static, Error>) -> Result<T, Error>,
        input: &'static str,
    ) -> Result<T, String> {
        read(StrDeserializer::new(input)).map_err(|e| e.to_string())
    }

    /// Each case: the input, and `Ok(what it reads as, by `show`)` or `Err(the message)`.
    /// A message ending in `…` is a prefix (the rest is another crate's wording).
    fn check<T>(
        name: &str,
        reader: fn(StrDeserializer<'static, Error>) -> Result<T, Error>,
        show: fn(&T) -> String,
        cases: &[(&'static str, Result<&str, &str>)],
    ) {
        for (input, want) in cases {
            let got = read(reader, input);
            match (&got, want) {
                (Ok(value), Ok(want)) => assert_eq!(show(value), *want, "{name} {input:?}"),
                (Err(message), Err(want)) => match want.strip_suffix('…') {
                    Some(prefix) => {
                        assert!(message.starts_with(prefix), "{name} {input:?}: {message}")
                    }
                    None => assert_eq!(message, want, "{name} {input:?}"),
                },
                _ => panic!(
                    "{name} {input:?}: got {:?}, want {want:?}",
                    got.as_ref().map(show)
                ),
            }
        }
    }

    fn shown<T: fmt::Display>(value: &T) -> String {
        value.to_string()
    }

    #[test]
    fn host_port() {
        check(
            "HostPort",
            HostPort::deserialize,
            shown,
            &[
                ("127.0.0.1:5038", Ok("127.0.0.1:5038")),
                ("pbx.example:5038", Ok("pbx.example:5038")),
                ("[::1]:5038", Ok("[::1]:5038")),
                ("pbx_1:65535", Ok("pbx_1:65535")),
                ("localhost", Err(r#"expected host:port, got "localhost""#)),
                ("pbx:99999", Err(r#"expected host:port, got "pbx:99999""#)),
                ("pbx:0", Err(r#"expected host:port, got "pbx:0""#)),
                ("*:5038", Err(r#"expected host:port, got "*:5038""#)),
                (":5038", Err(r#"expected host:port, got ":5038""#)),
                ("", Err(r#"expected host:port, got """#)),
            ],
        );
    }

    #[test]
    fn listen_addr() {
        check(
            "ListenAddr<4573>",
            ListenAddr::<4573>::deserialize,
            |a| format!("{a} off={}", a.is_off()),
            &[
                ("", Ok(" off=true")),
                ("127.0.0.1:4573", Ok("127.0.0.1:4573 off=false")),
                ("127.0.0.1:0", Ok("127.0.0.1:0 off=false")),
                ("localhost:4573", Ok("localhost:4573 off=false")),
                ("[::]:4573", Ok("[::]:4573 off=false")),
                (
                    "4573",
                    Err(
                        r#"expected an address such as 127.0.0.1:4573, or "" to disable it, got "4573""#,
                    ),
                ),
            ],
        );
        check(
            "ListenAddr<9137>",
            ListenAddr::<9137>::deserialize,
            shown,
            &[(
                "*:9137",
                Err(
                    r#"expected an address such as 127.0.0.1:9137, or "" to disable it, got "*:9137""#,
                ),
            )],
        );
        assert_eq!(ListenAddr::<9137>::default(), "127.0.0.1:9137");
    }

    #[test]
    fn loopback_addresses() {
        for (address, loopback) in [
            ("127.0.0.1:1", true),
            ("127.1.2.3:1", true),
            ("[::1]:1", true),
            ("localhost:1", true),
            ("LocalHost:1", true),
            ("0.0.0.0:1", false),
            ("10.0.0.1:1", false),
            ("pbx.example:1", false),
            ("localhost.example:1", false),
        ] {
            let host: HostPort = address.parse().unwrap();
            let listen: ListenAddr<1> = address.parse().unwrap();
            assert_eq!(host.is_loopback(), loopback, "{address}");
            assert_eq!(listen.is_loopback(), loopback, "{address}");
        }
        assert!(ListenAddr::<1>::off().is_loopback(), "off listens nowhere");
    }

    #[test]
    fn digits() {
        check(
            "Digits",
            Digits::deserialize,
            shown,
            &[
                ("49", Ok("49")),
                ("1", Ok("1")),
                ("", Err(r#"digits only, got """#)),
                ("+49", Err(r#"digits only, got "+49""#)),
                ("4 9", Err(r#"digits only, got "4 9""#)),
                ("٤٩", Err(r#"digits only, got "٤٩""#)),
            ],
        );
        check(
            "DigitsOrEmpty",
            DigitsOrEmpty::deserialize,
            shown,
            &[
                ("", Ok("")),
                ("00", Ok("00")),
                ("011", Ok("011")),
                ("0x", Err(r#"digits only, got "0x""#)),
                ("-", Err(r#"digits only, got "-""#)),
            ],
        );
    }

    #[test]
    fn contexts() {
        let cases: &[(&[&str], Result<(), &str>)] = &[
            (&[], Ok(())),
            (&["from-trunk", "from-pstn"], Ok(())),
            (&["from-trunk", ""], Err("a context name is empty")),
            (&[" "], Err("a context name is empty")),
        ];
        for (names, want) in cases {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let got = Contexts::try_from(names.clone());
            match (got, want) {
                (Ok(contexts), Ok(())) => assert_eq!(&*contexts, names.as_slice()),
                (Err(message), Err(want)) => assert_eq!(message, *want),
                (got, want) => panic!("{names:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn patterns() {
        check(
            "Pattern",
            Pattern::deserialize,
            |p| format!("{p:?}"),
            &[
                ("^[0-9]{2,5}$", Ok(r#""^[0-9]{2,5}$""#)),
                ("", Ok(r#""""#)),
                ("[0-9", Err("invalid regex: regex parse error:…")),
            ],
        );
        // `calls.trunk_channel`: "" is unset, decided here once.
        check(
            "Option<Pattern>",
            Pattern::unset_if_empty,
            |p| format!("{p:?}"),
            &[
                ("", Ok("None")),
                ("^PJSIP/trunk-", Ok(r#"Some("^PJSIP/trunk-")"#)),
                ("(", Err("invalid regex: regex parse error:…")),
            ],
        );
        let a: Pattern = "^1$".parse().unwrap();
        assert_eq!(a, "^1$".parse().unwrap());
        assert_ne!(a, "^2$".parse().unwrap());
        assert!(a.is_match("1") && !a.is_match("12"));
    }

    #[test]
    fn log_levels() {
        check(
            "LogLevel",
            LogLevel::deserialize,
            shown,
            &[
                ("info", Ok("info")),
                ("WARN", Ok("WARN")),
                ("off", Ok("off")),
                (
                    "warn,asterisk_zammad_bridge=debug",
                    Ok("warn,asterisk_zammad_bridge=debug"),
                ),
                (
                    "verbose",
                    Err(
                        r#"expected trace, debug, info, warn, error, off or a tracing filter such as "info,asterisk_zammad_bridge=debug", got "verbose""#,
                    ),
                ),
                (
                    "info,x=loud",
                    Err(r#"invalid tracing filter "info,x=loud": …"#),
                ),
            ],
        );
    }

    #[test]
    fn zammad_urls_and_secrets_never_show() {
        check(
            "ZammadUrl",
            ZammadUrl::deserialize,
            |u| format!("{} {u:?}", u.expose_secret()),
            &[
                (
                    "https://z.example/api/v1/cti/SECRETTOKEN",
                    Ok("https://z.example/api/v1/cti/SECRETTOKEN ZammadUrl([REDACTED])"),
                ),
                (
                    "HTTP://z/SECRETTOKEN",
                    Ok("HTTP://z/SECRETTOKEN ZammadUrl([REDACTED])"),
                ),
                (
                    "ftp://z.example/SECRETTOKEN",
                    Err("must start with http:// or https://"),
                ),
                (
                    "z.example/SECRETTOKEN",
                    Err("must start with http:// or https://"),
                ),
                ("https://", Err("not a valid URL (…")),
                ("https://[SECRETTOKEN/", Err("not a valid URL (…")),
            ],
        );
        for input in [
            "ftp://z/SECRETTOKEN",
            "https://[SECRETTOKEN/",
            "SECRETTOKEN",
        ] {
            let message = read(ZammadUrl::deserialize, input).unwrap_err();
            assert!(!message.contains("SECRETTOKEN"), "{message}");
        }
        check(
            "Secret",
            Secret::deserialize,
            |s| format!("{} {s:?}", s.expose_secret()),
            &[
                ("hunter2", Ok("hunter2 Secret([REDACTED])")),
                ("", Ok(" Secret([REDACTED])")),
            ],
        );
        assert_eq!(Secret::from("a"), Secret::from("a"));
        assert_ne!(Secret::from("a"), Secret::from("b"));
    }

    #[test]
    fn enums() {
        check(
            "RejectMode",
            RejectMode::deserialize,
            |m| format!("{m:?}"),
            &[
                ("hangup", Ok("Hangup")),
                ("variable", Ok("Variable")),
                (
                    "drop",
                    Err(r#"expected "hangup" or "variable", got "drop""#),
                ),
                (
                    "Hangup",
                    Err(r#"expected "hangup" or "variable", got "Hangup""#),
                ),
            ],
        );
        check(
            "LogFormat",
            LogFormat::deserialize,
            |f| format!("{f:?}"),
            &[
                ("text", Ok("Text")),
                ("json", Ok("Json")),
                ("xml", Err(r#"expected "text" or "json", got "xml""#)),
            ],
        );
    }

    #[test]
    fn durations_are_positive_and_bounded() {
        check(
            "duration",
            duration,
            |d| humantime::format_duration(*d).to_string(),
            &[
                ("2s", Ok("2s")),
                ("500ms", Ok("500ms")),
                ("1h 30m", Ok("1h 30m")),
                ("12h", Ok("12h")),
                ("100years", Ok("100years")),
                ("0s", Err("must be greater than zero")),
                ("0ms", Err("must be greater than zero")),
                (
                    "15",
                    Err(r#"invalid duration "15" (time unit needed, for example 15sec or 15ms)"#),
                ),
                ("2 parsecs", Err(r#"invalid duration "2 parsecs" (…"#)),
                ("", Err(r#"invalid duration "" (…"#)),
                // Parses, but `Instant::now() + it` would overflow.
                (
                    "500000000000y",
                    Err(r#"must be at most 100years, got "500000000000y""#),
                ),
                ("101y", Err(r#"must be at most 100years, got "101y""#)),
                // Does not even parse.
                (
                    "50000000000000y",
                    Err(r#"invalid duration "50000000000000y" (…"#),
                ),
            ],
        );
    }

    #[test]
    fn bounded_standard_values() {
        check(
            "non_empty",
            non_empty,
            |s| s.clone(),
            &[
                ("zammad", Ok("zammad")),
                ("", Err("must not be empty")),
                (" ", Err("must not be empty")),
            ],
        );
        check(
            "non_empty_path",
            non_empty_path,
            |p| p.display().to_string(),
            &[("/tmp/azb", Ok("/tmp/azb")), ("", Err("must not be empty"))],
        );
    }
}
