//! A reconcile loop, generic over what it reconciles: trigger → minimum
//! interval (bursts of events become one pass, with no fixed floor when the
//! loop has been idle) → reconcile → on failure retry with exponential
//! backoff, and a full pass at least every `resync` (drift repair).
//!
//! The mesh runs one; the Services loop runs its own beside it, with its own
//! watch streams, errors and metrics, so an error in one never blocks the
//! other. An error is logged once per distinct message (a node whose own data
//! stays bad does not log every retry); every failure is counted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// One pass of a loop.
pub trait Reconcile {
    type Error: std::fmt::Display + ErrorKind;
    /// Make the world match; returns the change list (empty: up to date).
    /// `full`: read everything back from the kernel and repair drift (the
    /// first pass, every resync, every retry after a failure); otherwise an
    /// event pass, which may apply only what changed since the last pass.
    fn reconcile(&mut self, full: bool) -> impl Future<Output = Result<Vec<String>, Self::Error>>;
}

/// The metric label of an error.
pub trait ErrorKind {
    fn kind(&self) -> &'static str;
}

/// How a loop paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// At most one pass per this interval: events arriving meanwhile are
    /// batched into the next pass. The first event after an idle period
    /// waits only `settle`.
    pub min_interval: Duration,
    /// After the first event of a burst, wait this long for the rest of it
    /// (a relist delivers thousands of events back to back).
    pub settle: Duration,
    /// A pass at least this often, event or not.
    pub resync: Duration,
    /// First retry after a failure; doubled each time, up to `resync`.
    pub backoff: Duration,
    /// A pass that takes longer is abandoned and counted as failed
    /// (`pass_timeout`): every kernel and API round trip inside it is
    /// bounded by this at the latest, whatever its own timeout.
    pub timeout: Duration,
}

impl Pacing {
    pub fn new(resync: Duration) -> Self {
        Pacing {
            min_interval: Duration::from_millis(100),
            settle: Duration::from_millis(20),
            resync,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(120),
        }
    }

    /// The wait after `failures` consecutive failures.
    pub fn retry_after(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(self.resync)
    }
}

/// Run `r` until `stop` resolves: on every `trigger` (batched), after a
/// failure (with backoff), and every `pacing.resync`.
pub async fn run<R: Reconcile>(
    name: &'static str,
    mut r: R,
    trigger: Arc<Notify>,
    pacing: Pacing,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut wait = Duration::ZERO;
    let mut failures = 0u32;
    let mut last_error: Option<String> = None;
    let mut last_pass: Option<Instant> = None;
    loop {
        let mut full = true;
        tokio::select! {
            _ = trigger.notified() => {
                full = failures > 0 || last_pass.is_none();
                // Batch: let the burst land, and keep to the minimum interval.
                let since = last_pass.map(|t| t.elapsed()).unwrap_or(Duration::MAX);
                let hold = pacing.settle.max(pacing.min_interval.saturating_sub(since));
                tokio::time::sleep(hold).await;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => {
                tracing::info!(r#loop = name, "stopping; what it made stays in place");
                return;
            }
        }
        let started = Instant::now();
        last_pass = Some(started);
        let result = match tokio::time::timeout(pacing.timeout, r.reconcile(full)).await {
            Ok(r) => r.map_err(|e| (e.kind(), e.to_string())),
            Err(_) => Err((
                "pass_timeout",
                format!("the pass did not finish within {:?}", pacing.timeout),
            )),
        };
        let took = started.elapsed();
        metrics.observe_loop(name, took, result.is_ok());
        let took_ms = took.as_millis() as u64;
        let took_us = took.as_micros() as u64;
        wait = match result {
            Ok(changes) => {
                if last_error.take().is_some() {
                    tracing::info!(r#loop = name, "recovered");
                }
                failures = 0;
                if changes.is_empty() {
                    tracing::debug!(r#loop = name, took_ms, "up to date");
                } else {
                    for c in &changes {
                        tracing::info!(r#loop = name, change = %c, "applied");
                    }
                    tracing::info!(r#loop = name, took_ms, took_us, count = changes.len(), "reconciled");
                }
                pacing.resync
            }
            Err((kind, text)) => {
                failures += 1;
                metrics.error(kind);
                let retry = pacing.retry_after(failures);
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(r#loop = name, error = %text, kind, retry_ms = retry.as_millis() as u64, "reconcile failed; working state is left as it is");
                    last_error = Some(text);
                } else {
                    tracing::debug!(r#loop = name, error = %text, failures, "still failing");
                }
                retry
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_up_to_resync() {
        let p = Pacing::new(Duration::from_secs(30));
        let waits: Vec<u64> = (1..=8).map(|f| p.retry_after(f).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(p.retry_after(u32::MAX), Duration::from_secs(30));
    }

    struct Counting {
        passes: Arc<AtomicU32>,
        fail_first: u32,
    }

    #[derive(Debug)]
    struct Boom;
    impl std::fmt::Display for Boom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("boom")
        }
    }
    impl ErrorKind for Boom {
        fn kind(&self) -> &'static str {
            "boom"
        }
    }

    impl Reconcile for Counting {
        type Error = Boom;
        async fn reconcile(&mut self, _full: bool) -> Result<Vec<String>, Boom> {
            let n = self.passes.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                Err(Boom)
            } else {
                Ok(vec![])
            }
        }
    }

    struct Stuck;
    impl Reconcile for Stuck {
        type Error = Boom;
        async fn reconcile(&mut self, _full: bool) -> Result<Vec<String>, Boom> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_that_hangs_is_abandoned_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(Notify::new());
        let mut pacing = Pacing::new(Duration::from_secs(30));
        pacing.timeout = Duration::from_secs(5);
        let task = tokio::spawn({
            let (metrics, stop) = (metrics.clone(), stop.clone());
            async move {
                run("stuck", Stuck, Arc::new(Notify::new()), pacing, metrics, async move {
                    stop.notified().await
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(metrics
            .render()
            .contains("weft_agent_reconcile_errors_total{kind=\"pass_timeout\"} 1"));
        stop.notify_one();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_triggers_is_one_pass_and_failures_retry() {
        let passes = Arc::new(AtomicU32::new(0));
        let trigger = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(Notify::new());
        let r = Counting {
            passes: passes.clone(),
            fail_first: 2,
        };
        let pacing = Pacing::new(Duration::from_secs(30));
        let task = tokio::spawn({
            let (trigger, metrics, stop) = (trigger.clone(), metrics.clone(), stop.clone());
            async move {
                run(
                    "test",
                    r,
                    trigger,
                    pacing,
                    metrics,
                    async move { stop.notified().await },
                )
                .await
            }
        });
        // The first pass runs at once and fails; retries at +0.5 s (fails) and +1 s more (works).
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 3);
        // 50 triggers in a burst: one more pass.
        for _ in 0..50 {
            trigger.notify_one();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(passes.load(Ordering::SeqCst) <= 5, "{}", passes.load(Ordering::SeqCst));
        assert!(passes.load(Ordering::SeqCst) >= 4);
        let before = passes.load(Ordering::SeqCst);
        // Nothing happens until the resync.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(passes.load(Ordering::SeqCst), before);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(passes.load(Ordering::SeqCst), before + 1);
        assert!(metrics
            .render()
            .contains("weft_agent_reconcile_errors_total{kind=\"boom\"} 2"));
        stop.notify_one();
        task.await.unwrap();
    }
}
