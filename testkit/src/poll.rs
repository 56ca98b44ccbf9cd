//! Waiting for a condition with a deadline, instead of sleeping: [`eventually`] panics at the
//! deadline (tests), [`poll_until`] returns an error (the bench). Its counterpart,
//! [`always`], checks that a condition keeps holding through a window (state a background
//! loop could undo), instead of one look after a sleep.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What a check returns: done (with a value), or not yet (with what it saw, for the message
/// at the deadline).
pub trait Check {
    type Output;
    fn done(self) -> Result<Self::Output, Option<String>>;
}

impl Check for bool {
    type Output = ();
    fn done(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Check for Option<T> {
    type Output = T;
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: fmt::Display> Check for Result<T, E> {
    type Output = T;
    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:#}")))
    }
}

/// A condition that did not hold by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {within:?} waiting for {what}{}", last.as_deref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
pub struct TimedOut {
    pub what: String,
    pub within: Duration,
    /// The last error the check returned, if it returns `Result`s.
    pub last: Option<String>,
}

/// Runs `check` until it is done (`true`, `Some`, `Ok`) and returns its value, or fails after
/// `within`. Pauses between tries start at 10 ms and grow to 200 ms.
pub async fn poll_until<C, F, Fut>(
    what: &str,
    within: Duration,
    mut check: F,
) -> Result<C::Output, TimedOut>
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match check().await.done() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                within,
                last,
            });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// [`poll_until`] for tests: panics with `what` (and the check's last error) at the deadline.
pub async fn eventually<C, F, Fut>(what: &str, within: Duration, check: F) -> C::Output
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    poll_until(what, within, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The pause between two looks of [`always`].
const ALWAYS_PAUSE: Duration = Duration::from_millis(100);

/// The counterpart of [`eventually`]: runs `check` again and again for `within` (every
/// 100 ms, the last time at the end of the window) and panics with `what` (and the check's
/// last error) the first time it is not done (`false`, `None`, `Err`).
pub async fn always<C, F, Fut>(what: &str, within: Duration, mut check: F)
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let start = Instant::now();
    let deadline = start + within;
    loop {
        if let Err(last) = check().await.done() {
            panic!(
                "{what} stopped holding after {:?} of {within:?}{}",
                start.elapsed(),
                last.map(|l| format!(" (last: {l})")).unwrap_or_default()
            );
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(ALWAYS_PAUSE.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_done() {
        let mut n = 0;
        let got = eventually("the third try", Duration::from_secs(10), || {
            n += 1;
            let n = n;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, 3);
        eventually("a bool", Duration::from_secs(1), || async { true }).await;
    }

    #[tokio::test]
    async fn times_out_with_the_last_error() {
        let err = poll_until("ready", Duration::from_millis(50), || async {
            Err::<(), _>("503 draining")
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 50ms waiting for ready (last: 503 draining)"
        );
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 20ms waiting for never")]
    async fn eventually_panics_at_the_deadline() {
        eventually("never", Duration::from_millis(20), || async { false }).await;
    }

    #[tokio::test]
    async fn always_looks_through_the_whole_window() {
        let start = Instant::now();
        let mut tries = 0;
        always("a bool", Duration::from_millis(300), || {
            tries += 1;
            async { true }
        })
        .await;
        assert!(start.elapsed() >= Duration::from_millis(300));
        // One look at the start, one at the end, and some between.
        assert!(tries >= 3, "{tries} tries");
    }

    #[tokio::test]
    async fn always_panics_at_the_first_miss_with_the_last_error() {
        let start = Instant::now();
        let mut n = 0;
        let failed = tokio::spawn(async move {
            always("the first two tries", Duration::from_secs(30), || {
                n += 1;
                let n = n;
                async move {
                    if n <= 2 {
                        Ok(())
                    } else {
                        Err("gone")
                    }
                }
            })
            .await
        })
        .await
        .unwrap_err();
        // Well before the end of the window.
        assert!(start.elapsed() < Duration::from_secs(10));
        let message = *failed.into_panic().downcast::<String>().unwrap();
        assert!(
            message.starts_with("the first two tries stopped holding after ")
                && message.ends_with(" of 30s (last: gone)"),
            "{message}"
        );
    }
}
