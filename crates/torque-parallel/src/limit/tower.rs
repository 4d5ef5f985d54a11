//! The limiter as a tower middleware (feature `tower`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower_layer::Layer;
use tower_service::Service;

use super::{Acquire, Algorithm, Clock, ConcurrencyLimiter, Limiter, Outcome, Rejected, Token};

/// Applies a [`ConcurrencyLimiter`] to a tower service: `poll_ready` waits
/// for a permit (tower's backpressure), the response completes the token.
/// The latency is measured from `call`, not from `poll_ready`: a service
/// may be kept ready long before a request.
///
/// How a response completes its token is up to the layer's classifier
/// ([`Classify`]). By default ([`IgnoreErrors`]) `Ok` is a success with its latency and `Err`
/// is ignored (an error may be the caller's fault), so the layer never
/// reports an overload. Where a timeout or an overload answer must back the
/// limit off, as the default [`Adaptive`](super::Adaptive) algorithm does
/// on an [`Outcome::Overload`], say so with
/// [`classify`](LimitLayer::classify); put the timeout layer inside this
/// one, so that its `Err` is a result this layer sees. A response
/// future dropped before it completes (by a timeout layer outside this one,
/// or a caller that gave up) has no result to classify: its permit is
/// returned without a sample.
///
/// Every service built from one layer shares its limiter.
///
/// The layer queues; it never refuses. To refuse at the limit instead (an
/// open loop that sheds what it cannot serve), use
/// [`shed`](LimitLayer::shed): the limiter then sees each refusal, which
/// the default [`Adaptive`](super::Adaptive) algorithm needs to size its
/// burst allowance. Tower's `LoadShed` outside this layer sheds too, but
/// the limiter hears nothing of its refusals, and a shed service keeps its
/// place in the queue until it is polled again or dropped.
/// docs/parallel.md has the details.
///
/// # Example
/// ```
/// use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, LimitLayer};
/// use tower_layer::Layer;
///
/// # #[derive(Clone)] struct Backend;
/// let layer = LimitLayer::new(ConcurrencyLimiter::new(Adaptive::default()));
/// let service = layer.layer(Backend);
/// # let _ = service;
/// ```
pub struct LimitLayer<A, C, K = IgnoreErrors> {
    limiter: ConcurrencyLimiter<A, C>,
    classifier: K,
}

/// A clone shares the limiter, so it needs neither the algorithm nor the
/// clock to be `Clone` (a `LimiterConfig` builds a
/// `ConcurrencyLimiter<Box<dyn Algorithm>>`, and layers must be `Clone` for
/// axum's `Router::layer`). The classifier is cloned: the default and a
/// closure over `Clone` captures are.
impl<A, C, K: Clone> Clone for LimitLayer<A, C, K> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<A: Algorithm, C: Clock> LimitLayer<A, C> {
    /// A layer that limits with `limiter`; `Ok` is a success and `Err` is
    /// ignored until [`classify`](Self::classify) says otherwise.
    pub fn new(limiter: ConcurrencyLimiter<A, C>) -> Self {
        Self {
            limiter,
            classifier: IgnoreErrors,
        }
    }
}

impl<A, C, K> LimitLayer<A, C, K> {
    /// Completes each response's token with the [`Outcome`] `classifier`
    /// gives its result, instead of the default's success for `Ok` and
    /// ignore for `Err`: [`Outcome::Success`] feeds the algorithm the
    /// latency, [`Outcome::Overload`] tells it to back off (a timeout, a
    /// "too busy" answer, even one that arrives as an `Ok` response), and
    /// [`Outcome::Ignored`] returns the permit without a sample.
    ///
    /// `classifier` is a closure `Fn(&Result<Response, Error>) -> Outcome`
    /// (annotate its argument: the layer does not know the service's types
    /// until it wraps one) or any [`Classify`] implementation. A response
    /// future dropped before it completes is still ignored.
    ///
    /// # Example
    /// A timeout layer inside the limit answers `Elapsed` errors; making
    /// them overloads backs the default [`Adaptive`](super::Adaptive)
    /// limit off.
    /// ```
    /// use std::future::{Ready, poll_fn, ready};
    /// use std::task::{Context, Poll};
    /// use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, LimitLayer, Outcome};
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// type BoxError = Box<dyn std::error::Error + Send + Sync>;
    ///
    /// # #[derive(Debug)] struct Elapsed;
    /// # impl std::fmt::Display for Elapsed {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    /// #         f.write_str("request timed out")
    /// #     }
    /// # }
    /// # impl std::error::Error for Elapsed {}
    /// /// Stands for a backend behind tower's `Timeout`, which timed out.
    /// #[derive(Clone)]
    /// struct TimedOut;
    ///
    /// impl Service<&'static str> for TimedOut {
    ///     type Response = &'static str;
    ///     type Error = BoxError;
    ///     type Future = Ready<Result<&'static str, BoxError>>;
    ///
    ///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///
    ///     fn call(&mut self, _: &'static str) -> Self::Future {
    ///         // tower's `tower::timeout::error::Elapsed`, boxed as tower does.
    ///         ready(Err(Elapsed.into()))
    ///     }
    /// }
    ///
    /// # fn main() {
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let limiter = ConcurrencyLimiter::new(Adaptive::default());
    /// let layer = LimitLayer::new(limiter.clone()).classify(
    ///     |result: &Result<&'static str, BoxError>| match result {
    ///         Ok(_) => Outcome::Success,
    ///         Err(error) if error.is::<Elapsed>() => Outcome::Overload,
    ///         Err(_) => Outcome::Ignored,
    ///     },
    /// );
    /// let mut service = layer.layer(TimedOut);
    ///
    /// let before = limiter.limit();
    /// poll_fn(|cx| service.poll_ready(cx)).await?;
    /// assert!(service.call("GET /").await.is_err());
    /// assert!(limiter.limit() < before, "the timeout backed the limit off");
    /// # Ok::<(), BoxError>(())
    /// # }).unwrap();
    /// # }
    /// ```
    pub fn classify<F>(self, classifier: F) -> LimitLayer<A, C, F> {
        LimitLayer {
            limiter: self.limiter,
            classifier,
        }
    }

    /// Refuses requests at the limit instead of queueing them: the service
    /// is ready whenever the inner one is, and `call` takes a permit with
    /// [`try_acquire`](Limiter::try_acquire) or answers at once with the
    /// [`Rejected`] error, converted into the service's error type (a
    /// `BoxError` takes it as is). The inner service is not called for a
    /// refused request. Every refusal reaches the limiter (its `rejected`
    /// count and [`Algorithm::rejected`]), so the default
    /// [`Adaptive`](super::Adaptive) algorithm can allow for bursts as it
    /// does for any caller of `try_acquire`. The classifier applies to the
    /// requests admitted.
    ///
    /// # Example
    /// ```
    /// use std::future::{Pending, pending, poll_fn};
    /// use std::task::{Context, Poll};
    /// use torque_parallel::limit::{ConcurrencyLimiter, Fixed, LimitLayer, Limiter, Rejected};
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// type BoxError = Box<dyn std::error::Error + Send + Sync>;
    ///
    /// /// A backend that never answers: its requests hold their permits.
    /// #[derive(Clone)]
    /// struct Stuck;
    ///
    /// impl Service<()> for Stuck {
    ///     type Response = ();
    ///     type Error = BoxError;
    ///     type Future = Pending<Result<(), BoxError>>;
    ///
    ///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///
    ///     fn call(&mut self, _: ()) -> Self::Future {
    ///         pending()
    ///     }
    /// }
    ///
    /// # fn main() {
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    /// let mut service = LimitLayer::new(limiter.clone()).shed().layer(Stuck);
    ///
    /// poll_fn(|cx| service.poll_ready(cx)).await?;
    /// let _running = service.call(()); // takes the one permit
    /// poll_fn(|cx| service.poll_ready(cx)).await?;
    /// let refused = service.call(()).await.unwrap_err();
    /// assert!(refused.is::<Rejected>());
    /// assert_eq!(limiter.stats().rejected, 1);
    /// # Ok::<(), BoxError>(())
    /// # }).unwrap();
    /// # }
    /// ```
    pub fn shed(self) -> ShedLayer<A, C, K> {
        ShedLayer {
            limiter: self.limiter,
            classifier: self.classifier,
        }
    }
}

impl<S, A: Algorithm, C: Clock, K: Clone> Layer<S> for LimitLayer<A, C, K> {
    type Service = LimitService<S, A, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
            acquiring: None,
            permit: None,
        }
    }
}

impl<A: fmt::Debug, C: fmt::Debug, K> fmt::Debug for LimitLayer<A, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitLayer")
            .field("limiter", &self.limiter)
            .field("classifier", &std::any::type_name::<K>())
            .finish()
    }
}

/// How a [`LimitLayer`] completes a response's token: the [`Outcome`] of the
/// service's result.
///
/// Implemented by every `Fn(&Result<T, E>) -> Outcome` closure, and by
/// [`IgnoreErrors`], the default. Implement it on a type of your own where
/// the classifier must be named (a struct field of the layer's type).
pub trait Classify<T, E> {
    /// The outcome of a request that ended with `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default [`Classify`]: `Ok` is a success, `Err` is ignored (an error
/// may be the caller's fault, and says nothing of the backend's load).
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreErrors;

impl<T, E> Classify<T, E> for IgnoreErrors {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Ignored,
        }
    }
}

/// The service [`LimitLayer`] wraps around `S`.
pub struct LimitService<S, A, C, K = IgnoreErrors> {
    inner: S,
    limiter: ConcurrencyLimiter<A, C>,
    classifier: K,
    acquiring: Option<Acquire<A, C>>,
    permit: Option<Token>,
}

impl<S: Clone, A, C, K: Clone> Clone for LimitService<S, A, C, K> {
    /// A clone has its own readiness: it holds no permit until polled ready.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
            acquiring: None,
            permit: None,
        }
    }
}

impl<S, A, C, K> fmt::Debug for LimitService<S, A, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitService")
            .field("ready", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Request, A, C, K> Service<Request> for LimitService<S, A, C, K>
where
    S: Service<Request>,
    A: Algorithm,
    C: Clock,
    K: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.permit.is_none() {
            let limiter = &self.limiter;
            let acquiring = self
                .acquiring
                .get_or_insert_with(|| limiter.acquire_owned());
            let token = ready!(Pin::new(acquiring).poll(cx));
            self.acquiring = None;
            self.permit = Some(token);
        }
        self.inner.poll_ready(cx)
    }

    /// # Panics
    /// If `poll_ready` did not return `Ready(Ok(()))` first (the tower
    /// contract).
    fn call(&mut self, request: Request) -> Self::Future {
        let mut token = self
            .permit
            .take()
            .expect("LimitService::call without poll_ready returning Ready");
        // The permit may have been held since `poll_ready` (a service kept
        // ready by `Buffer` or `Balance`): the latency is the request's.
        token.restart();
        ResponseFuture {
            inner: self.inner.call(request),
            classifier: self.classifier.clone(),
            token: Some(token),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`LimitService`]: completes the token with
    /// the classifier's outcome when the inner future resolves (or is
    /// dropped: then the token is ignored).
    pub struct ResponseFuture<F, K = IgnoreErrors> {
        #[pin]
        inner: F,
        classifier: K,
        token: Option<Token>,
    }
}

impl<F, K> fmt::Debug for ResponseFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl<F, K, T, E> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<T, E>>,
    K: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        if let Some(token) = this.token.take() {
            // A classifier that panics drops the token: ignored, the permit
            // returned.
            token.complete(this.classifier.classify(&output));
        }
        Poll::Ready(output)
    }
}

/// A [`LimitLayer`] that refuses at the limit instead of queueing; made by
/// [`LimitLayer::shed`].
pub struct ShedLayer<A, C, K = IgnoreErrors> {
    limiter: ConcurrencyLimiter<A, C>,
    classifier: K,
}

/// A clone shares the limiter, as [`LimitLayer`]'s does.
impl<A, C, K: Clone> Clone for ShedLayer<A, C, K> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<A: fmt::Debug, C: fmt::Debug, K> fmt::Debug for ShedLayer<A, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedLayer")
            .field("limiter", &self.limiter)
            .field("classifier", &std::any::type_name::<K>())
            .finish()
    }
}

impl<S, A: Algorithm, C: Clock, K: Clone> Layer<S> for ShedLayer<A, C, K> {
    type Service = ShedService<S, A, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service [`ShedLayer`] wraps around `S`.
pub struct ShedService<S, A, C, K = IgnoreErrors> {
    inner: S,
    limiter: ConcurrencyLimiter<A, C>,
    classifier: K,
}

impl<S: Clone, A, C, K: Clone> Clone for ShedService<S, A, C, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, A, C, K> fmt::Debug for ShedService<S, A, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedService").finish_non_exhaustive()
    }
}

impl<S, Request, A, C, K> Service<Request> for ShedService<S, A, C, K>
where
    S: Service<Request>,
    S::Error: From<Rejected>,
    A: Algorithm,
    C: Clock,
    K: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ShedFuture<S::Future, K>;

    /// Ready when the inner service is: the limit is checked in `call`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.limiter.try_acquire() {
            Ok(token) => ShedFuture {
                admitted: Some(ResponseFuture {
                    inner: self.inner.call(request),
                    classifier: self.classifier.clone(),
                    token: Some(token),
                }),
                refused: None,
            },
            Err(rejected) => ShedFuture {
                admitted: None,
                refused: Some(rejected),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ShedService`]: the inner response of an
    /// admitted request (its token completed as [`ResponseFuture`]'s), or
    /// the [`Rejected`] error of a refused one, at once.
    pub struct ShedFuture<F, K = IgnoreErrors> {
        #[pin]
        admitted: Option<ResponseFuture<F, K>>,
        refused: Option<Rejected>,
    }
}

impl<F, K> fmt::Debug for ShedFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedFuture")
            .field("admitted", &self.admitted)
            .field("refused", &self.refused)
            .finish()
    }
}

impl<F, K, T, E> Future for ShedFuture<F, K>
where
    F: Future<Output = Result<T, E>>,
    K: Classify<T, E>,
    E: From<Rejected>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(rejected) = this.refused.take() {
            return Poll::Ready(Err(rejected.into()));
        }
        match this.admitted.as_pin_mut() {
            Some(admitted) => admitted.poll(cx),
            // Polled again after it answered a refusal.
            None => panic!("ShedFuture polled after completion"),
        }
    }
}
