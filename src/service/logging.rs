//! Observability: tracing set-up and the redaction of phone numbers in logs.
//!
//! Owns [`init_tracing`] (fmt to stdout, text or JSON per `log.format`, an `EnvFilter` from
//! `RUST_LOG` or else `log.level`) and [`Redact`], the one way a phone number reaches a log
//! line, governed by the process-wide switch that `log.show_numbers` sets. Metrics live in
//! `metrics`, the admin listener in `admin`; what is logged where is each part's business.
//!
//! Values in log lines come from the wire (FastAGI query parameters, AMI headers, Zammad's
//! error bodies): the text format writes them through [`EscapedFields`], which escapes
//! control characters as the JSON format does, so that no value can end a line and forge
//! the next one or put escape codes on the operator's terminal.
//!
//! Under systemd, when the output is the journal's stream (`JOURNAL_STREAM` names its
//! device and inode), each line starts with its syslog priority as sd-daemon(3) prefixes
//! it (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug and trace), which journald takes as
//! the entry's priority (`journalctl -p warning`), and carries no timestamp of its own
//! (the journal has one). Anywhere else the lines stay as they were.

use crate::config::{LogConfig, LogFormat};
use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
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
    let out = std::io::stdout();
    let journal = is_journal_stream(&out);
    init_tracing_to(log, std::io::stdout, out.is_terminal(), journal)
}

/// As [`init_tracing`], writing to stderr: for commands whose stdout is data (`replay`).
pub fn init_tracing_stderr(log: &LogConfig) -> Result<(), tracing_subscriber::util::TryInitError> {
    let err = std::io::stderr();
    let journal = is_journal_stream(&err);
    init_tracing_to(log, std::io::stderr, err.is_terminal(), journal)
}

/// Whether `output` is the journal's stream: systemd sets `JOURNAL_STREAM` to
/// `DEVICE:INODE` of the socket it connects a service's stdout and stderr to; an output
/// redirected elsewhere (a file, a pipe) has another, and keeps the plain format.
pub fn is_journal_stream(output: &impl AsFd) -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = output.as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    journal_stream_matches(&stream.to_string_lossy(), meta.dev(), meta.ino())
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` (decimal) against an output's device and inode.
fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority journald reads from a line's `<N>` prefix (sd-daemon(3)).
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format with the line's priority in front, for the journal.
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn init_tracing_to<W>(
    log: &LogConfig,
    writer: W,
    ansi: bool,
    journal: bool,
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
        .with_ansi(ansi && !journal);
    match (log.format, journal) {
        (LogFormat::Text, false) => builder.fmt_fields(EscapedFields).finish().try_init()?,
        (LogFormat::Text, true) => builder
            .fmt_fields(EscapedFields)
            .event_format(Prioritized(format::format().without_time()))
            .finish()
            .try_init()?,
        (LogFormat::Json, false) => builder.json().flatten_event(true).finish().try_init()?,
        (LogFormat::Json, true) => builder
            .json()
            .event_format(Prioritized(
                format::format().json().flatten_event(true).without_time(),
            ))
            .finish()
            .try_init()?,
    }
    if let Some(error) = bad_rust_log {
        tracing::warn!(%error, level = %log.level, "RUST_LOG is not a valid filter; using log.level");
    }
    Ok(())
}

/// The text format's fields as tracing-subscriber's default writes them (`name=value`, the
/// message bare, strings recorded as such quoted), with every control character escaped as
/// JSON escapes it: `\n`, `\r`, `\t`, others (ESC, C1, DEL) and the Unicode line
/// separators as `\u001b`. A `%value` is written by its `Display`, so a FastAGI query
/// parameter's `%0D%0A` or `%1B` would otherwise reach the log raw.
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if self.writer.has_ansi_escapes() {
                    write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
                } else {
                    write!(self.writer, "{name}=")?;
                }
            }
            Escaping(&mut self.writer).write_fmt(value)
        })();
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(e) = source {
            chain.push_str(": ");
            chain.push_str(&e.to_string());
            source = e.source();
        }
        self.write(field, format_args!("{chain}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Writes through to the inner writer, control characters escaped.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found at a char boundary");
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{:04x}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
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
    fn journal_priorities_and_stream_matching() {
        let levels = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ];
        let got: Vec<u8> = levels.iter().map(priority).collect();
        assert_eq!(got, [3, 4, 6, 7, 7]);
        for (stream, dev, ino, matches) in [
            ("8:12345", 8, 12345, true),
            ("8:12345\n", 8, 12345, true),
            ("8:12346", 8, 12345, false),
            ("9:12345", 8, 12345, false),
            ("", 8, 12345, false),
            ("8", 8, 12345, false),
            ("x:y", 8, 12345, false),
        ] {
            assert_eq!(
                journal_stream_matches(stream, dev, ino),
                matches,
                "{stream:?}"
            );
        }
    }

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

    /// A shared buffer the test subscriber writes to.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_values_cannot_forge_lines_or_write_escape_codes() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        let hostile = "in\r\n2030-01-01T00:00:00.000000Z  INFO forged: ok\x1b[2J\u{9b}\u{2028}\t.";
        tracing::subscriber::with_default(subscriber, || {
            let error = std::io::Error::other(hostile);
            let span = tracing::info_span!("agi", peer = %hostile);
            let _in = span.enter();
            tracing::warn!(
                direction = %hostile,
                parameter = hostile,
                debugged = ?hostile,
                error = &error as &(dyn std::error::Error + 'static),
                "message {hostile}"
            );
            tracing::info!(call_id = "1795596443.48", event = "newCall", "plain");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            !out.contains(['\x1b', '\r', '\u{9b}', '\u{2028}', '\t']),
            "{out:?}"
        );
        let escaped = r"in\r\n2030-01-01T00:00:00.000000Z  INFO forged: ok\u001b[2J\u009b\u2028\t.";
        for want in [
            format!("agi{{peer={escaped}}}"),
            format!("message {escaped} direction={escaped}"),
            format!("error={escaped}"),
        ] {
            assert!(out.contains(&want), "{want}\nnot in\n{out}");
        }
        // Strings recorded as strings are quoted, as by the default formatter.
        assert!(out.contains(r#"parameter="in\r\n2030"#), "{out}");
        assert!(
            out.contains(r#"plain call_id="1795596443.48" event="newCall""#),
            "{out}"
        );
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
