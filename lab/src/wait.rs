//! Waiting on a condition instead of sleeping: [`wait_for`] (and [`try_wait_for`], which returns
//! the timeout instead of panicking) polls a condition until it holds and hands back what it
//! found; on timeout the message names what was awaited, how long, and the last reason the
//! condition gave. [`wait_for_blocking`] is the same for synchronous code. The one deadline loop
//! of the lab and the integration tests.
//!
//! A condition returns `bool`, `Option<T>` (ready with `T`), or `Result<T, E>` (`Err` is "not
//! yet", and its text is kept for the timeout message). To stop early with a failure, return
//! `Some(Err(e))` from an `Option<Result<T, E>>` condition and `?` the value.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(20);
/// The longest pause between two polls.
const MAX_POLL: Duration = Duration::from_millis(200);

/// What one evaluation of a condition says: ready with a value, or not yet (with why, if known).
pub trait Outcome {
    /// The value handed back once the condition holds.
    type Value;
    /// `Ok(value)` when the condition holds, else `Err(why not, if known)`.
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// A condition that did not hold in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: not within {within:?}{}", last.as_ref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub within: Duration,
    /// The last reason the condition gave for not holding, if it gave one.
    pub last: Option<String>,
}

/// Polls `condition` (at once, then after 20 ms, doubling to at most 200 ms) until it holds and
/// returns its value; [`Timeout`] once `within` has passed. The condition is always evaluated at
/// least once, and once more at the deadline.
pub async fn try_wait_for<O, F, Fut>(
    what: &str,
    within: Duration,
    condition: F,
) -> Result<O::Value, Timeout>
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    poll(what, within, None, condition).await
}

/// [`wait_for`] polling every `every` (not backing off): for a test that measures how soon
/// something happens, or checks an invariant on every poll.
pub async fn wait_for_every<O, F, Fut>(
    every: Duration,
    what: &str,
    within: Duration,
    condition: F,
) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    match poll(what, within, Some(every), condition).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// [`try_wait_for`] polling every `every`, like [`wait_for_every`].
pub async fn try_wait_for_every<O, F, Fut>(
    every: Duration,
    what: &str,
    within: Duration,
    condition: F,
) -> Result<O::Value, Timeout>
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    poll(what, within, Some(every), condition).await
}

/// The loop behind the async waits: a fixed pause of `every`, or the backoff when `None`.
async fn poll<O, F, Fut>(
    what: &str,
    within: Duration,
    every: Option<Duration>,
    mut condition: F,
) -> Result<O::Value, Timeout>
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    // tokio's clock, so a test with a paused clock waits in virtual time.
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = every.unwrap_or(FIRST_POLL);
    loop {
        let last = match condition().await.ready() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                within,
                last,
            });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        if every.is_none() {
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}

/// [`try_wait_for`] for tests: panics with the [`Timeout`] message (a timeout is a failed test).
pub async fn wait_for<O, F, Fut>(what: &str, within: Duration, condition: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    match try_wait_for(what, within, condition).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// [`try_wait_for`] for synchronous code (it blocks the thread between polls).
pub fn try_wait_for_blocking<O: Outcome>(
    what: &str,
    within: Duration,
    mut condition: impl FnMut() -> O,
) -> Result<O::Value, Timeout> {
    let deadline = Instant::now() + within;
    let mut pause = FIRST_POLL;
    loop {
        let last = match condition().ready() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                within,
                last,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// [`try_wait_for_blocking`] for tests: panics with the [`Timeout`] message.
pub fn wait_for_blocking<O: Outcome>(
    what: &str,
    within: Duration,
    condition: impl FnMut() -> O,
) -> O::Value {
    match try_wait_for_blocking(what, within, condition) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_value_is_handed_back_once_the_condition_holds() {
        let mut n = 0;
        let v = try_wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(v, Ok(3));
    }

    #[tokio::test]
    async fn a_timeout_names_what_how_long_and_the_last_reason() {
        let started = Instant::now();
        let err = try_wait_for("the leader", Duration::from_millis(300), || async {
            Err::<(), _>("c2 is a follower")
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the leader: not within 300ms (last: c2 is a follower)"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_bool_condition_is_polled_until_true() {
        let mut polls = 0;
        try_wait_for("three polls", Duration::from_secs(5), || {
            polls += 1;
            let p = polls;
            async move { p == 3 }
        })
        .await
        .unwrap();
        assert_eq!(polls, 3);
    }

    #[test]
    fn the_blocking_variant_times_out_with_the_same_message() {
        let err =
            try_wait_for_blocking("nothing", Duration::from_millis(50), || false).unwrap_err();
        assert_eq!(err.to_string(), "nothing: not within 50ms");
        assert_eq!(wait_for_blocking("at once", Duration::ZERO, || Some(7)), 7);
    }
}
