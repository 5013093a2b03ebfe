//! Crash failpoints for the high-availability tests: `VAULT_DR_FAILPOINT=crash-before:<step>`
//! or `crash-after:<step>` makes the coordinator abort (`std::process::abort`, as abrupt as
//! `kill -9`: no lease release, no clean shutdown) right after the journal write of that
//! failover step's start, or right after the step's completion (its topology CAS and journal
//! entry). A test uses it to kill the leader at an exact point of a failover, for example
//! between `Fenced` and `Promoted`, and checks that the next leader finishes the failover with
//! every step exactly once.
//!
//! Several, comma-separated (`crash-after:decided,crash-after:switched`), arm each: a test whose
//! coordinators all carry the same list loses one leader at each of those points of one
//! failover, whoever leads then.
//!
//! **For tests; never set it in production.** The variable is read once, when the coordinator
//! starts ([`arm`]); an invalid value stops the start with a configuration error, so a typo never
//! silently disarms a crash test.
//!
//! The journal goes through the buffered store, whose background writer reaches the store a few
//! milliseconds after the write was queued. Before aborting, a failpoint waits
//! [`JOURNAL_GRACE`] so that the journal write it follows has landed, as it would have for a
//! process killed at that instant by an outside `kill -9`.

use crate::config::Env;
use crate::model::Step;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable arming a failpoint (for tests; never set it in production).
pub const ENV_FAILPOINT: &str = "VAULT_DR_FAILPOINT";

/// How long a failpoint lets the buffered journal writer reach the store before aborting.
pub const JOURNAL_GRACE: Duration = Duration::from_millis(500);

/// Where the coordinator aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Right after the journal write of the step's start, before it runs.
    CrashBefore(Step),
    /// Right after the step completed (topology CAS and journal entry written).
    CrashAfter(Step),
}

impl fmt::Display for Failpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CrashBefore(s) => write!(f, "crash-before:{s}"),
            Self::CrashAfter(s) => write!(f, "crash-after:{s}"),
        }
    }
}

/// A value of [`ENV_FAILPOINT`] that is not a failpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ENV_FAILPOINT}={value:?}: {reason} (expected crash-before:<step> or crash-after:<step>, \
     step one of decided, fenced, promoted, switched, repointed, verified, done)"
)]
pub struct FailpointError {
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a failpoint; an empty (or all-blank) value means none.
pub fn parse(value: &str) -> Result<Option<Failpoint>, FailpointError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let invalid = |reason: &str| FailpointError {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let (kind, step) = trimmed
        .split_once(':')
        .ok_or_else(|| invalid("missing ':'"))?;
    let step = Step::ALL
        .into_iter()
        .find(|s| s.as_str() == step.trim())
        .ok_or_else(|| invalid("unknown step"))?;
    match kind.trim() {
        "crash-before" => Ok(Some(Failpoint::CrashBefore(step))),
        "crash-after" => Ok(Some(Failpoint::CrashAfter(step))),
        _ => Err(invalid("unknown kind")),
    }
}

/// Parses a comma-separated list of failpoints (blank entries ignored).
pub fn parse_list(value: &str) -> Result<Vec<Failpoint>, FailpointError> {
    let mut all = Vec::new();
    for part in value.split(',') {
        if let Some(fp) = parse(part).map_err(|e| FailpointError {
            value: value.to_owned(),
            reason: e.reason,
        })? {
            all.push(fp);
        }
    }
    Ok(all)
}

static ARMED: OnceLock<Vec<Failpoint>> = OnceLock::new();

/// Reads [`ENV_FAILPOINT`] once (later calls return what the first one read). Called when the
/// coordinator starts; logs a loud warning for each failpoint armed.
pub fn arm(env: &dyn Env) -> Result<Vec<Failpoint>, FailpointError> {
    if let Some(armed) = ARMED.get() {
        return Ok(armed.clone());
    }
    let parsed = parse_list(&env.var(ENV_FAILPOINT).unwrap_or_default())?;
    let armed = ARMED.get_or_init(|| parsed).clone();
    for fp in &armed {
        tracing::warn!(
            failpoint = %fp,
            "{ENV_FAILPOINT} is set: this coordinator will abort at {fp} (for tests only)"
        );
    }
    Ok(armed)
}

fn armed(here: Failpoint) -> bool {
    ARMED.get().is_some_and(|a| a.contains(&here))
}

/// Called by the executor right after the journal write of `step`'s start.
pub async fn before(step: Step) {
    hit(Failpoint::CrashBefore(step)).await;
}

/// Called by the executor right after `step` completed (topology CAS and journal entry).
pub async fn after(step: Step) {
    hit(Failpoint::CrashAfter(step)).await;
}

async fn hit(here: Failpoint) {
    if !armed(here) {
        return;
    }
    tracing::error!(failpoint = %here, "failpoint reached: aborting the process");
    tokio::time::sleep(JOURNAL_GRACE).await;
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_before_and_after_name_a_step() {
        assert_eq!(
            parse("crash-before:promoted"),
            Ok(Some(Failpoint::CrashBefore(Step::Promoted)))
        );
        assert_eq!(
            parse("crash-after:fenced"),
            Ok(Some(Failpoint::CrashAfter(Step::Fenced)))
        );
        assert_eq!(
            parse(" crash-after : done "),
            Ok(Some(Failpoint::CrashAfter(Step::Done)))
        );
    }

    #[test]
    fn every_step_can_be_named_both_ways_and_displays_as_parsed() {
        for step in Step::ALL {
            for fp in [Failpoint::CrashBefore(step), Failpoint::CrashAfter(step)] {
                assert_eq!(parse(&fp.to_string()), Ok(Some(fp)));
            }
        }
    }

    #[test]
    fn a_list_arms_each_and_a_typo_in_one_is_an_error_naming_the_whole_value() {
        assert_eq!(
            parse_list("crash-after:decided, crash-before:verified,"),
            Ok(vec![
                Failpoint::CrashAfter(Step::Decided),
                Failpoint::CrashBefore(Step::Verified)
            ])
        );
        assert_eq!(parse_list(""), Ok(vec![]));
        let e = parse_list("crash-after:decided,crash-after:fence").unwrap_err();
        assert_eq!(e.value, "crash-after:decided,crash-after:fence");
        assert_eq!(e.reason, "unknown step");
    }

    #[test]
    fn an_empty_value_arms_nothing() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn a_typo_is_an_error_that_says_what_is_expected() {
        for (value, reason) in [
            ("crash-after", "missing ':'"),
            ("crash-after:fence", "unknown step"),
            ("crash-during:fenced", "unknown kind"),
            ("crash-after:Fenced", "unknown step"),
        ] {
            let e = parse(value).unwrap_err();
            assert_eq!(e.reason, reason, "{value}");
            let text = e.to_string();
            assert!(text.contains(ENV_FAILPOINT), "{text}");
            assert!(text.contains("crash-after:<step>"), "{text}");
        }
    }

    #[tokio::test]
    async fn an_unarmed_failpoint_returns_at_once() {
        // Nothing in the unit tests arms a failpoint, so these must simply return.
        for step in Step::ALL {
            before(step).await;
            after(step).await;
        }
        assert!(ARMED.get().is_none_or(Vec::is_empty));
    }
}
