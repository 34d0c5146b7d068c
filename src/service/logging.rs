//! Observability: tracing set-up and the redaction of phone numbers in logs.
//!
//! Owns [`init_tracing`] (fmt to stdout, text or JSON per `log.format`, an `EnvFilter` from
//! `RUST_LOG` or else `log.level`) and [`Redact`], the one way a phone number reaches a log
//! line, governed by the process-wide switch that `log.show_numbers` sets. Metrics live in
//! `metrics`, the admin listener in `admin`; what is logged where is each part's business.

use crate::config::{LogConfig, LogFormat};
use std::fmt;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether [`Redact`] shows its value; off until [`set_show_numbers`] turns it on.
static SHOW_NUMBERS: AtomicBool = AtomicBool::new(false);

/// Sets the switch behind [`Redact`]; [`init_tracing`] calls it with `log.show_numbers`.
pub fn set_show_numbers(show: bool) {
    SHOW_NUMBERS.store(show, Ordering::Relaxed);
}

/// Whether phone numbers appear in logs.
pub fn show_numbers() -> bool {
    SHOW_NUMBERS.load(Ordering::Relaxed)
}

/// A value that is personal data (a phone number): `Display` and `Debug` show it only when
/// `log.show_numbers` is on, else `***`.
///
/// `info!(from = %Redact(&number), "call ringing")`
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Redact<T>(pub T);

impl<T: fmt::Display> fmt::Display for Redact<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if show_numbers() {
            self.0.fmt(f)
        } else {
            f.write_str("***")
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Redact<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if show_numbers() {
            self.0.fmt(f)
        } else {
            f.write_str("***")
        }
    }
}

/// Installs the global subscriber writing to stdout (journald reads it; colours only on a
/// terminal), and sets the [`Redact`] switch. Fails if a subscriber is already installed.
pub fn init_tracing(log: &LogConfig) -> Result<(), tracing_subscriber::util::TryInitError> {
    init_tracing_to(log, std::io::stdout, std::io::stdout().is_terminal())
}

/// As [`init_tracing`], writing to stderr: for commands whose stdout is data (`replay`).
pub fn init_tracing_stderr(log: &LogConfig) -> Result<(), tracing_subscriber::util::TryInitError> {
    init_tracing_to(log, std::io::stderr, std::io::stderr().is_terminal())
}

fn init_tracing_to<W>(
    log: &LogConfig,
    writer: W,
    ansi: bool,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    set_show_numbers(log.show_numbers);
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let (filter, bad_rust_log) = env_filter(rust_log.as_deref(), &log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match log.format {
        LogFormat::Text => builder.finish().try_init()?,
        LogFormat::Json => builder.json().flatten_event(true).finish().try_init()?,
    }
    if let Some(error) = bad_rust_log {
        tracing::warn!(%error, level = %log.level, "RUST_LOG is not a valid filter; using log.level");
    }
    Ok(())
}

/// The filter: `RUST_LOG` when set and valid, else `level` (checked at config load; should
/// it fail anyway, `info`). The second value is why `RUST_LOG` was not used, if it was set.
fn env_filter(rust_log: Option<&str>, level: &str) -> (EnvFilter, Option<String>) {
    let from_level = || {
        EnvFilter::builder()
            .parse(level)
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    match rust_log.filter(|s| !s.trim().is_empty()) {
        None => (from_level(), None),
        Some(directives) => match EnvFilter::builder().parse(directives) {
            Ok(filter) => (filter, None),
            Err(error) => (from_level(), Some(error.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_filter_prefers_rust_log_and_falls_back_to_level() {
        let cases: &[(Option<&str>, &str, &str, bool)] = &[
            (None, "info", "info", false),
            (
                None,
                "warn,asterisk_zammad_bridge=debug",
                "asterisk_zammad_bridge=debug,warn",
                false,
            ),
            (Some("debug"), "info", "debug", false),
            (Some(""), "warn", "warn", false),
            (Some("info,x=loud"), "warn", "warn", true),
            (None, "x=loud", "info", false),
        ];
        for (rust_log, level, expected, bad) in cases {
            let (filter, error) = env_filter(*rust_log, level);
            assert_eq!(filter.to_string(), *expected, "{rust_log:?} {level}");
            assert_eq!(error.is_some(), *bad, "{rust_log:?} {level}: {error:?}");
        }
    }

    /// The only test that touches the global switch; it leaves it off, as it found it.
    #[test]
    fn redact_follows_the_switch() {
        let number = "4930123456";
        assert!(!show_numbers(), "off by default");
        assert_eq!(Redact(number).to_string(), "***");
        assert_eq!(format!("{:?}", Redact(number)), "***");
        set_show_numbers(true);
        let shown = (Redact(number).to_string(), format!("{:?}", Redact(number)));
        set_show_numbers(false);
        assert_eq!(shown, (number.to_string(), format!("{number:?}")));
        assert_eq!(Redact(&number).to_string(), "***");
    }
}
