//! `LimitLayer`: tower backpressure from the limiter, tokens completed by
//! the response, on tokio's paused clock.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use torque_parallel::limit::{ConcurrencyLimiter, Fixed, LimitLayer, Limiter};
use tower_layer::Layer;
use tower_service::Service;

/// Answers after `delay`; fails on odd requests.
#[derive(Clone)]
struct Slow {
    delay: Duration,
}

impl Service<u32> for Slow {
    type Response = u32;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if request.is_multiple_of(2) {
                Ok(request)
            } else {
                Err("odd")
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_for_a_permit_and_the_response_returns_it() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let layer = LimitLayer::new(limiter.clone());
    let slow = Slow {
        delay: Duration::from_millis(10),
    };
    let mut first = layer.layer(slow.clone());
    let mut second = layer.layer(slow);

    poll_fn(|cx| first.poll_ready(cx)).await.unwrap();
    assert_eq!(limiter.stats().in_flight, 1);
    // The second service cannot get ready while the first holds the permit.
    let blocked = tokio::time::timeout(
        Duration::from_millis(5),
        poll_fn(|cx| second.poll_ready(cx)),
    )
    .await;
    assert!(blocked.is_err());

    assert_eq!(first.call(2).await, Ok(2));
    assert_eq!(limiter.stats().in_flight, 0);
    poll_fn(|cx| second.poll_ready(cx)).await.unwrap();
    assert_eq!(second.call(3).await, Err("odd"), "errors pass through");
    assert_eq!(limiter.stats().in_flight, 0, "an error returns the permit");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_returns_its_permit() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let mut service = LimitLayer::new(limiter.clone()).layer(Slow {
        delay: Duration::from_secs(1),
    });
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let response = service.call(2);
    assert_eq!(limiter.stats().in_flight, 1);
    drop(response);
    assert_eq!(limiter.stats().in_flight, 0);
    assert!(limiter.try_acquire().is_ok());
}

/// `LimiterConfig::build` gives a `ConcurrencyLimiter<Box<dyn Algorithm>>`,
/// whose algorithm is not `Clone`. Layers must be (axum's `Router::layer`
/// asks for `Clone`), and `LimitLayer` derived `Clone`, which required the
/// algorithm and clock to be `Clone` although a clone only shares the
/// limiter: a layer over a limiter from a configuration file did not
/// compile there.
#[tokio::test(start_paused = true)]
async fn regression_a_layer_over_a_config_built_limiter_is_clone() {
    fn assert_clone<T: Clone>(t: &T) -> T {
        t.clone()
    }
    let mut config = torque_parallel::limit::LimiterConfig::default();
    config.algorithm = torque_parallel::limit::AlgorithmKind::Fixed;
    config.initial_limit = Some(1);
    let limiter = config.build().unwrap();
    let layer = LimitLayer::new(limiter.clone());
    let copy = assert_clone(&layer);
    let slow = Slow {
        delay: Duration::from_millis(10),
    };
    let mut first = layer.layer(slow.clone());
    let mut second = copy.layer(slow);
    poll_fn(|cx| first.poll_ready(cx)).await.unwrap();
    // The copy shares the limit.
    let blocked = tokio::time::timeout(
        Duration::from_millis(5),
        poll_fn(|cx| second.poll_ready(cx)),
    )
    .await;
    assert!(blocked.is_err());
    assert_eq!(first.call(2).await, Ok(2));
    poll_fn(|cx| second.poll_ready(cx)).await.unwrap();
    assert_eq!(limiter.stats().in_flight, 1);
}

/// Counts the samples the limiter feeds its algorithm, by outcome.
#[derive(Debug, Clone, Default)]
struct Outcomes(std::sync::Arc<std::sync::Mutex<Vec<torque_parallel::limit::Outcome>>>);

impl torque_parallel::limit::Algorithm for Outcomes {
    fn initial_limit(&self) -> usize {
        1
    }
    fn update(&mut self, sample: &torque_parallel::limit::Sample) -> usize {
        self.0.lock().unwrap().push(sample.outcome);
        1
    }
}

/// What the docs promise of the response: `Ok` is a success sample, `Err`
/// (a timeout layer inside answers one) and a dropped response future (a
/// timeout layer outside drops it) return the permit without a sample —
/// never a success.
#[tokio::test(start_paused = true)]
async fn errors_and_dropped_responses_are_ignored_not_successes() {
    use torque_parallel::limit::Outcome;
    let seen = Outcomes::default();
    let limiter = ConcurrencyLimiter::new(seen.clone());
    let mut service = LimitLayer::new(limiter.clone()).layer(Slow {
        delay: Duration::from_millis(10),
    });
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    assert_eq!(service.call(3).await, Err("odd"));
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let outer_timeout = tokio::time::timeout(Duration::from_millis(5), service.call(2)).await;
    assert!(outer_timeout.is_err());
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    assert_eq!(service.call(2).await, Ok(2));
    assert_eq!(*seen.0.lock().unwrap(), [Outcome::Success]);
    assert_eq!(limiter.stats().in_flight, 0);
}

/// Reads tokio's (paused) clock, so latencies follow the simulated time.
#[derive(Debug, Clone, Copy)]
struct TokioClock;

impl torque_parallel::limit::Clock for TokioClock {
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of tower's `Timeout`, stood in for without the dependency.
#[derive(Debug)]
struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request timed out")
    }
}

impl std::error::Error for Elapsed {}

/// tower's `Timeout` over `Slow`: `Elapsed` (boxed, as tower boxes it) when
/// the backend takes longer than `after`.
#[derive(Clone)]
struct Timeout {
    inner: Slow,
    after: Duration,
}

impl Service<u32> for Timeout {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        let response = self.inner.call(request);
        let after = self.after;
        Box::pin(async move {
            match tokio::time::timeout(after, response).await {
                Ok(answer) => answer.map_err(BoxError::from),
                Err(_) => Err(Elapsed.into()),
            }
        })
    }
}

/// The classifier of a typical stack: a timeout is an overload, another
/// error says nothing, a response is a success.
fn timeouts_overload(result: &Result<u32, BoxError>) -> torque_parallel::limit::Outcome {
    use torque_parallel::limit::Outcome;
    match result {
        Ok(_) => Outcome::Success,
        Err(error) if error.is::<Elapsed>() => Outcome::Overload,
        Err(_) => Outcome::Ignored,
    }
}

/// The default `Adaptive` limiter, on tokio's clock. It starts at the
/// limit of its no-load probe, 4.
fn default_adaptive() -> ConcurrencyLimiter<torque_parallel::limit::Adaptive, TokioClock> {
    ConcurrencyLimiter::with_clock(torque_parallel::limit::Adaptive::default(), TokioClock)
}

/// A timeout layer inside the limit answered `Elapsed`, which the layer
/// ignored like any error: the default `Adaptive` limiter never backed off
/// on timeouts behind the layer, whatever the backend did. A classifier
/// makes them overloads.
#[tokio::test(start_paused = true)]
async fn a_timeout_classified_as_overload_backs_the_adaptive_limit_off() {
    let limiter = default_adaptive();
    assert_eq!(limiter.limit(), 4);
    let layer = LimitLayer::new(limiter.clone()).classify(timeouts_overload);
    let mut service = layer.layer(Timeout {
        inner: Slow {
            delay: Duration::from_secs(1),
        },
        after: Duration::from_millis(100),
    });
    // Still a layer and a service axum's `Router::layer` takes.
    fn assert_shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    assert_shareable(&layer);
    assert_shareable(&service);
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let error = service.call(2).await.unwrap_err();
    assert!(error.is::<Elapsed>());
    assert_eq!(limiter.stats().in_flight, 0);
    assert_eq!(
        limiter.limit(),
        3,
        "4 × the default backoff 0.9, rounded down"
    );
}

/// Without `classify`, errors stay ignored: existing layers see no change.
#[tokio::test(start_paused = true)]
async fn without_a_classifier_a_timeout_leaves_the_limit_alone() {
    let limiter = default_adaptive();
    assert_eq!(limiter.limit(), 4);
    let mut service = LimitLayer::new(limiter.clone()).layer(Timeout {
        inner: Slow {
            delay: Duration::from_secs(1),
        },
        after: Duration::from_millis(100),
    });
    for _ in 0..3 {
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        let error = service.call(2).await.unwrap_err();
        assert!(error.is::<Elapsed>());
    }
    assert_eq!(limiter.stats().in_flight, 0);
    assert_eq!(limiter.limit(), 4);
}

/// Each outcome the classifier gives reaches the algorithm as such, an
/// `Ok` included (say a 503 answered as a response), and `Ignored` feeds it
/// nothing. A dropped response future is still ignored: the classifier
/// has no result to look at.
#[tokio::test(start_paused = true)]
async fn the_classifier_decides_each_responses_outcome() {
    use torque_parallel::limit::Outcome;
    let seen = Outcomes::default();
    let limiter = ConcurrencyLimiter::with_clock(seen.clone(), TokioClock);
    let mut service = LimitLayer::new(limiter.clone())
        .classify(|result: &Result<u32, &'static str>| match result {
            Ok(100) => Outcome::Overload,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Ignored,
        })
        .layer(Slow {
            delay: Duration::from_millis(10),
        });
    for (request, answer) in [(2, Ok(2)), (100, Ok(100)), (3, Err("odd"))] {
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        assert_eq!(service.call(request).await, answer);
    }
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let outer_timeout = tokio::time::timeout(Duration::from_millis(5), service.call(100)).await;
    assert!(outer_timeout.is_err());
    assert_eq!(
        *seen.0.lock().unwrap(),
        [Outcome::Success, Outcome::Overload]
    );
    assert_eq!(limiter.stats().in_flight, 0);
}

/// Counts the requests that reach it; answers after 10 ms, as `Slow`.
#[derive(Clone)]
struct Counted {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    inner: Slow,
}

impl Service<u32> for Counted {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(BoxError::from) })
    }
}

/// `LimitLayer` only queued: an open loop that sheds at the limit had to
/// put tower's `LoadShed` outside it, and the limiter never heard of the
/// refusals (the default `Adaptive` sizes its burst allowance from them).
#[tokio::test(start_paused = true)]
async fn a_shedding_layer_refuses_at_the_limit_and_the_limiter_counts_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use torque_parallel::limit::Rejected;
    let limiter = ConcurrencyLimiter::new(Fixed::new(2));
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let mut service = LimitLayer::new(limiter.clone()).shed().layer(Counted {
        calls: calls.clone(),
        inner: Slow {
            delay: Duration::from_millis(10),
        },
    });
    let mut running = Vec::new();
    for request in [2, 4] {
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        running.push(service.call(request));
    }
    assert_eq!(limiter.stats().in_flight, 2);
    // At the limit: refused at once, the backend not called.
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let refused = service.call(6).await.unwrap_err();
    let rejected = refused.downcast_ref::<Rejected>().expect("a Rejected");
    assert_eq!((rejected.limit, rejected.in_flight), (2, 2));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    let stats = limiter.stats();
    assert_eq!((stats.rejected, stats.in_flight, stats.waiting), (1, 2, 0));
    // The admitted requests answer and give their permits back.
    for response in running {
        assert!(response.await.is_ok());
    }
    assert_eq!(limiter.stats().in_flight, 0);
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    assert_eq!(service.call(8).await.unwrap(), 8);
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}
