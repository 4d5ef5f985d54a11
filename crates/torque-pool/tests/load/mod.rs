//! A closed-loop load of `get()` + `SELECT 1` for the fault tests, recording
//! every call so the test can judge it afterwards.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tokio::time::Instant;
use torque_pool::{Manager, PgConnection, Pool};

/// One `get()` and its query.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the `get()` started, since the load began.
    pub at: Duration,
    /// How long the `get()` took.
    pub get_took: Duration,
    /// How long the get and its query took together.
    pub total: Duration,
    /// `None` if the get and the query succeeded; else what failed.
    pub error: Option<String>,
}

/// Runs `tasks` loops of `get()` + `SELECT 1` (bounded by `query_timeout`)
/// until `run_for` has passed since `t0`.
pub async fn run<M: Manager<Connection = PgConnection>>(
    pool: &Pool<M>,
    tasks: usize,
    t0: Instant,
    run_for: Duration,
    query_timeout: Duration,
) -> Vec<Call> {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            while t0.elapsed() < run_for {
                let start = Instant::now();
                let got = pool.get().await;
                let get_took = start.elapsed();
                let error = match got {
                    Err(e) => Some(format!(
                        "get: {e} ({:?})",
                        std::error::Error::source(&e).map(|s| s.to_string())
                    )),
                    Ok(conn) => {
                        match tokio::time::timeout(query_timeout, conn.simple_query("SELECT 1"))
                            .await
                        {
                            Ok(Ok(_)) => None,
                            Ok(Err(e)) => Some(format!("query: {e}")),
                            Err(_) => Some("query: timed out".to_string()),
                        }
                    }
                };
                let failed = error.is_some();
                calls.push(Call {
                    at: start - t0,
                    get_took,
                    total: start.elapsed(),
                    error,
                });
                if failed {
                    // Errors come back fast by design; do not spin on them.
                    tokio::task::yield_now().await;
                }
            }
            calls
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("load task"));
    }
    all.sort_by_key(|c| c.at);
    all
}

/// Successful calls per `bucket`, from `from` to `to`.
pub fn rate(calls: &[Call], from: Duration, to: Duration, bucket: Duration) -> Vec<usize> {
    let n = ((to - from).as_nanos() / bucket.as_nanos()) as usize;
    let mut out = vec![0; n];
    for c in calls
        .iter()
        .filter(|c| c.error.is_none() && c.at >= from && c.at < to)
    {
        let i = ((c.at - from).as_nanos() / bucket.as_nanos()) as usize;
        if i < n {
            out[i] += 1;
        }
    }
    out
}

/// How long after `back` the pool was serving at 80% of `baseline`
/// (successes per 100 ms) again: the end of the first `window` starting at
/// or after `back` in which successful calls completed at that rate, if
/// one did before `end`. A short window (20 ms) resolves the recovery
/// better than a 100 ms one, at the price of noise.
pub fn recovery(
    calls: &[Call],
    back: Duration,
    end: Duration,
    baseline: f64,
    window: Duration,
) -> Option<Duration> {
    let step = Duration::from_millis(1);
    let wanted = 0.8 * baseline * window.as_secs_f64() / 0.1;
    let mut t = back;
    while t + window <= end {
        let n = calls
            .iter()
            .filter(|c| c.error.is_none() && c.at + c.total >= t && c.at + c.total < t + window)
            .count();
        if n as f64 >= wanted {
            return Some(t + window - back);
        }
        t += step;
    }
    None
}
