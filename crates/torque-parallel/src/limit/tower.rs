//! The limiter as a tower middleware (feature `tower`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower_layer::Layer;
use tower_service::Service;

use super::{Acquire, Algorithm, Clock, ConcurrencyLimiter, Token};

/// Applies a [`ConcurrencyLimiter`] to a tower service: `poll_ready` waits
/// for a permit (tower's backpressure), the response completes the token —
/// `Ok` as a success with its latency (measured from `call`, not from
/// `poll_ready`: a service may be kept ready long before a request), `Err`
/// as ignored (an error may be the caller's fault). A timeout is ignored
/// too, whether a timeout layer inside this one answers `Err` or one
/// outside drops the response future: the layer never reports an overload.
/// Where timeouts must back the limit off, call the limiter directly
/// ([`Limiter::acquire`](super::Limiter::acquire), then
/// [`Token::overload`] on a timeout).
///
/// Every service built from one layer shares its limiter.
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
pub struct LimitLayer<A, C> {
    limiter: ConcurrencyLimiter<A, C>,
}

/// A clone shares the limiter, so it needs neither the algorithm nor the
/// clock to be `Clone` (a `LimiterConfig` builds a
/// `ConcurrencyLimiter<Box<dyn Algorithm>>`, and layers must be `Clone` for
/// axum's `Router::layer`).
impl<A, C> Clone for LimitLayer<A, C> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
        }
    }
}

impl<A: Algorithm, C: Clock> LimitLayer<A, C> {
    /// A layer that limits with `limiter`.
    pub fn new(limiter: ConcurrencyLimiter<A, C>) -> Self {
        Self { limiter }
    }
}

impl<S, A: Algorithm, C: Clock> Layer<S> for LimitLayer<A, C> {
    type Service = LimitService<S, A, C>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            limiter: self.limiter.clone(),
            acquiring: None,
            permit: None,
        }
    }
}

impl<A: fmt::Debug, C: fmt::Debug> fmt::Debug for LimitLayer<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitLayer")
            .field("limiter", &self.limiter)
            .finish()
    }
}

/// The service [`LimitLayer`] wraps around `S`.
pub struct LimitService<S, A, C> {
    inner: S,
    limiter: ConcurrencyLimiter<A, C>,
    acquiring: Option<Acquire<A, C>>,
    permit: Option<Token>,
}

impl<S: Clone, A, C> Clone for LimitService<S, A, C> {
    /// A clone has its own readiness: it holds no permit until polled ready.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            acquiring: None,
            permit: None,
        }
    }
}

impl<S, A, C> fmt::Debug for LimitService<S, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitService")
            .field("ready", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Request, A, C> Service<Request> for LimitService<S, A, C>
where
    S: Service<Request>,
    A: Algorithm,
    C: Clock,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

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
            token: Some(token),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`LimitService`]: completes the token when the
    /// inner future resolves (or is dropped: then the token is ignored).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        token: Option<Token>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        if let Some(token) = this.token.take() {
            match &output {
                Ok(_) => token.success(),
                Err(_) => token.ignore(),
            }
        }
        Poll::Ready(output)
    }
}
