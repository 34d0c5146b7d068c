//! `check` without `--offline`: log in to AMI once and ask Zammad once, without touching
//! a call, and say in one plain line per probe what was found (docs/commands.md).
//!
//! - AMI: one connection and login as the configured user (no reconnect), then the two
//!   kinds of action the daemon sends: `CoreShowChannels` (write class `reporting`) and
//!   `Setvar` on a channel that cannot exist (write class `call`, as `Hangup` needs too;
//!   with a `Channel` header it sets nothing). `Permission denied` to either fails the
//!   probe. The read classes (`call`, `agent`) cannot be checked without a call, so the
//!   line says so.
//! - Zammad: [`ZammadClient::probe`], a request Zammad refuses after its token check and
//!   before it stores anything.
//!
//! Neither the AMI secret nor the Zammad token is ever printed: the URL is shown through
//! [`ZammadClient::redacted_url`].

use crate::ami::AmiMessage;
use crate::ami::client::{self, AmiError, AmiSettings};
use crate::config::Config;
use crate::zammad::{ZammadClient, ZammadError};
use secrecy::ExposeSecret;
use std::io::Write;
use tokio_util::sync::CancellationToken;

/// A channel name no Asterisk channel has (no technology prefix, no regex slashes).
const NO_SUCH_CHANNEL: &str = "azb-check-no-such-channel";

/// The outcome of one probe: whether it passed, and its line (`ami: ok (...)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    pub line: String,
}

impl Probe {
    fn ok(name: &str, detail: String) -> Probe {
        Probe {
            ok: true,
            line: format!("{name}: ok ({detail})"),
        }
    }

    fn failed(name: &str, detail: String) -> Probe {
        Probe {
            ok: false,
            line: format!("{name}: {detail}"),
        }
    }
}

/// Runs both probes on a fresh runtime, prints one line each on `out`; true if both
/// passed.
pub fn run(config: &Config, out: &mut dyn Write) -> std::io::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let probes = runtime.block_on(async { tokio::join!(probe_ami(config), probe_zammad(config)) });
    let mut ok = true;
    for probe in [probes.0, probes.1] {
        writeln!(out, "{}", probe.line)?;
        ok &= probe.ok;
    }
    Ok(ok)
}

/// Logs in to AMI once and tries the actions the daemon needs.
pub async fn probe_ami(config: &Config) -> Probe {
    let address = &config.ami.address;
    let user = &config.ami.username;
    let Some(secret) = config.ami.secret.clone() else {
        return Probe::failed("ami", "ami.secret is not set".into());
    };
    let settings = AmiSettings::from_config(&config.ami, secret);
    let cancel = CancellationToken::new();
    let (ami, task) = match client::connect_once(settings, cancel.clone()).await {
        Ok(connected) => connected,
        Err(error) => {
            return Probe::failed("ami", login_failure(&error, address, user, config.ami.tls));
        }
    };
    let over = match (config.ami.tls, &config.ami.tls_server_name) {
        (false, _) => String::new(),
        (true, Some(name)) => format!(" over TLS (certificate valid for {name})"),
        (true, None) => " over TLS (certificate valid)".to_string(),
    };
    let result = async {
        let channels = ami
            .list_action(AmiMessage::from_pairs([("Action", "CoreShowChannels")]))
            .await
            .map_err(|e| action_failure(&e, "CoreShowChannels", "write = reporting"))?;
        let setvar = AmiMessage::from_pairs([
            ("Action", "Setvar"),
            ("Channel", NO_SUCH_CHANNEL),
            ("Variable", "AZB_CHECK"),
            ("Value", "1"),
        ]);
        match ami.action(setvar).await {
            Ok(_) => {}
            // The channel does not exist: the action was allowed.
            Err(AmiError::Rejected { message, .. }) if !is_permission_denied(&message) => {}
            Err(e) => return Err(action_failure(&e, "Setvar", "write = call")),
        }
        Ok(channels.len())
    }
    .await;
    cancel.cancel();
    let _ = task.await;
    match result {
        Ok(channels) => Probe::ok(
            "ami",
            format!(
                "logged in as {user} at {address}{over}; CoreShowChannels and Setvar/Hangup allowed; \
                 {channels} channel(s) up; read = call,agent cannot be checked without a call"
            ),
        ),
        Err(detail) => Probe::failed(
            "ami",
            format!("logged in as {user} at {address}, but {detail}"),
        ),
    }
}

fn is_permission_denied(message: &str) -> bool {
    message.to_ascii_lowercase().contains("permission denied")
}

fn login_failure(error: &AmiError, address: &str, user: &str, tls: bool) -> String {
    match error {
        AmiError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            format!(
                "connection refused at {address}: is Asterisk running, with enabled = yes and \
                 this port in manager.conf (ami.address)?"
            )
        }
        AmiError::Connect { source, .. } => {
            format!("cannot connect to {address}: {source} (ami.address)")
        }
        AmiError::ConnectTimeout { timeout, .. } => {
            format!("no connection to {address} within {timeout:?}: a firewall? (ami.address)")
        }
        AmiError::AuthFailed { message, .. } => format!(
            "login as {user} at {address} refused ({message}): wrong ami.secret or \
             ami.username, or the user's permit/deny in manager.conf excludes this host"
        ),
        AmiError::Tls { problem, .. } => format!("TLS with {address} failed: {problem}"),
        AmiError::LoginTimeout { .. } | AmiError::Closed { .. } | AmiError::Io { .. } if tls => {
            format!(
                "connected to {address} over TLS, but no AMI login answer ({error}): is \
                 ami.address Asterisk's AMI TLS port (tlsbindaddr)?"
            )
        }
        AmiError::LoginTimeout { .. } | AmiError::Closed { .. } | AmiError::Io { .. } => format!(
            "connected to {address}, but no AMI login answer ({error}): is ami.address an AMI \
             port (not SIP; for Asterisk's TLS port set ami.tls = true)?"
        ),
        other => format!("cannot log in at {address}: {other}"),
    }
}

fn action_failure(error: &AmiError, action: &str, class: &str) -> String {
    match error {
        AmiError::Rejected { message, .. } if is_permission_denied(message) => format!(
            "it may not send {action} (Permission denied): add {class} to the user in \
             manager.conf"
        ),
        other => format!("{action} failed: {other}"),
    }
}

/// Asks Zammad whether it is reachable, knows the token and has the integration on.
pub async fn probe_zammad(config: &Config) -> Probe {
    let Some(url) = config.zammad.url.clone() else {
        return Probe::failed("zammad", "zammad.url is not set".into());
    };
    // The token, to scrub from anything a server echoes back.
    let token = url
        .expose_secret()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let client =
        match ZammadClient::with_proxy(url, config.zammad.timeout, config.zammad.proxy.as_ref()) {
            Ok(client) => client,
            Err(error) => return Probe::failed("zammad", format!("{error} (zammad.url)")),
        };
    let at = client.redacted_url().to_string();
    let line = match client.probe().await {
        Ok(()) => {
            return Probe::ok(
                "zammad",
                format!("reachable at {at}; token accepted; CTI integration on"),
            );
        }
        Err(ZammadError::Unauthorized) => format!(
            "token wrong — check zammad.url (Zammad at {at} answered 401 \"Invalid token\")"
        ),
        Err(ZammadError::Disabled { message }) if message.contains("not configured") => format!(
            "CTI integration not configured — Zammad at {at} answered \"{message}\"; save the \
             Generic CTI settings in Zammad (the token was not checked)"
        ),
        Err(ZammadError::Disabled { message }) => format!(
            "CTI integration disabled — Zammad at {at} answered \"{message}\"; switch on \
             Generic CTI in Zammad's admin settings (the token was not checked)"
        ),
        Err(ZammadError::Connect(error)) => {
            format!(
                "unreachable — cannot connect to {at} ({}); check zammad.url",
                root_cause(&error)
            )
        }
        Err(error @ ZammadError::Timeout { .. }) => format!("unreachable — {at}: {error}"),
        Err(ZammadError::BadReply { status, snippet }) => format!(
            "not Zammad's CTI endpoint — {at} answered http {status} with a page that is not \
             JSON ({snippet:?}); check zammad.url and any proxy in front of Zammad"
        ),
        Err(ZammadError::Rejected { status: 404, .. }) => format!(
            "not Zammad's CTI endpoint — {at} answered 404; the path must be \
             /api/v1/cti/TOKEN (zammad.url)"
        ),
        Err(error) => format!("unexpected answer from {at}: {error}"),
    };
    // A short token would match ordinary words; Zammad does not echo it anyway.
    let line = if token.len() < 6 {
        line
    } else {
        line.replace(&token, "***")
    };
    Probe::failed("zammad", line)
}

/// The innermost error, e.g. "Connection refused (os error 111)".
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut last = error;
    while let Some(cause) = last.source() {
        last = cause;
    }
    last.to_string()
}
