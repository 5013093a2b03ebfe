//! Logging shared by both binaries: the log format (`--log-format json|text`), the subscriber
//! set-up, and [`Repeats`], which turns a condition that fails at every attempt into one log
//! line when it appears or changes and then one a minute.

use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// The values `--log-format` takes, for `--help` and error messages.
pub const LOG_FORMATS: &str = "json|text";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// Parses `json` or `text` (case and surrounding blanks ignored); the error says what is
    /// accepted.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            _ => Err(format!("{raw:?} is neither json nor text")),
        }
    }

    /// The format from `--log-format` (flag or variable, `explicit`) and the older
    /// `--log-json` switch (`json_alias`): an explicit format wins, else `--log-json` means
    /// JSON, else text.
    pub fn resolve(explicit: Option<Self>, json_alias: bool) -> Self {
        match explicit {
            Some(f) => f,
            None if json_alias => Self::Json,
            None => Self::Text,
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Whether log lines may carry colour codes: only when stderr is a terminal and `NO_COLOR` is
/// not set (<https://no-color.org>), never into a log file or a pipe.
pub fn ansi_allowed(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs a `tracing` subscriber writing to stderr in `format`, filtered by `RUST_LOG`
/// (default `info`). Colour codes only as [`ansi_allowed`] says; field values never carry the
/// escape bytes of a remote answer either (the formatter escapes control characters). Calling
/// it twice is harmless.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let no_color = std::env::var("NO_COLOR").ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi_allowed(
            std::io::stderr().is_terminal(),
            no_color.as_deref(),
        ))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// How often a condition that keeps failing the same way is logged again.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// One failing condition, logged when it first appears or changes and then at most once per
/// [`REPEAT_LOG_EVERY`] with how often it repeated, not at every attempt (a revoked RBAC rule
/// retried every 500 ms must not write 80 lines in 40 s).
#[derive(Debug, Default)]
pub struct Repeats {
    text: Option<String>,
    count: u64,
    logged_at: Option<Instant>,
}

impl Repeats {
    /// Records one occurrence of `text` at `now`: `Some(occurrences since the last line)` when
    /// a line is due (the condition is new or changed, or [`REPEAT_LOG_EVERY`] has passed).
    pub fn note(&mut self, text: &str, now: Instant) -> Option<u64> {
        self.count += 1;
        let changed = self.text.as_deref() != Some(text);
        let due = self
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= REPEAT_LOG_EVERY);
        if changed || due {
            self.text = Some(text.to_owned());
            self.logged_at = Some(now);
            return Some(std::mem::take(&mut self.count));
        }
        None
    }

    /// The condition ended: `Some(occurrences not yet logged)` when there was one, so the
    /// recovery can be logged once.
    pub fn clear(&mut self) -> Option<u64> {
        let had = self.text.take().is_some();
        let n = std::mem::take(&mut self.count);
        self.logged_at = None;
        had.then_some(n)
    }
}

/// Prefix of every agent metric: `vault_dr_agent_<thing>_<unit>`.
pub const AGENT_METRICS_PREFIX: &str = "vault_dr_agent_";
/// Prefix of every coordinator metric: `vault_dr_coordinator_<thing>_<unit>`.
pub const COORDINATOR_METRICS_PREFIX: &str = "vault_dr_coordinator_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_format_is_json_or_text_and_names_the_bad_value() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(" TEXT "), Ok(LogFormat::Text));
        let e = LogFormat::parse("xml").unwrap_err();
        assert!(e.contains("\"xml\"") && e.contains("json"), "{e}");
    }

    #[test]
    fn an_explicit_format_wins_over_the_old_json_switch() {
        assert_eq!(LogFormat::resolve(None, false), LogFormat::Text);
        assert_eq!(LogFormat::resolve(None, true), LogFormat::Json);
        assert_eq!(
            LogFormat::resolve(Some(LogFormat::Text), true),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::resolve(Some(LogFormat::Json), false),
            LogFormat::Json
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(ansi_allowed(true, None));
        assert!(ansi_allowed(true, Some("")));
        assert!(!ansi_allowed(true, Some("1")));
        assert!(!ansi_allowed(false, None));
    }

    #[test]
    fn a_repeated_failure_is_logged_once_then_once_a_minute_and_a_new_one_at_once() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        assert_eq!(r.note("403 forbidden", t0), Some(1));
        for i in 1..80 {
            // every 500 ms for 40 s: nothing more is logged
            assert_eq!(
                r.note("403 forbidden", t0 + Duration::from_millis(500 * i)),
                None
            );
        }
        assert_eq!(
            r.note("403 forbidden", t0 + Duration::from_secs(60)),
            Some(80)
        );
        assert_eq!(r.note("timeout", t0 + Duration::from_secs(61)), Some(1));
        assert_eq!(r.clear(), Some(0));
        assert_eq!(r.clear(), None);
    }
}
