//! [`KlarnaStepUpLayer`]: the configuration, applied to a service.

use tower_layer::Layer;

use super::mount::Mount;
use super::KlarnaStepUp;
use crate::observe::{Observer, Record};
use crate::StepUp;

/// Applies Klarna step-up to a service: see [the module docs](crate::tower).
///
/// ```
/// use http_body_util::Full;
/// use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
/// use klarna_stepup::StepUp;
/// use tower::ServiceBuilder;
///
/// let step_up = StepUp::from_toml(r#"
///     [return_url_policy]
///     allowed_hosts = ["*.partner.example"]
/// "#)?;
/// let layer = KlarnaStepUpLayer::new(step_up)
///     .observe(|record| tracing::debug!(outcome = record.outcome().label(), "observed"));
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_req: http::Request<StepUpBody<Full<bytes::Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::new())))
///     });
/// # let _: klarna_stepup::tower::KlarnaStepUp<_> = service;
/// # Ok::<(), klarna_stepup::ConfigErrors>(())
/// ```
#[derive(Clone)]
pub struct KlarnaStepUpLayer {
    step_up: StepUp,
    observer: Option<Observer>,
    budget: crate::BufferBudget,
    mount: Mount,
}

impl std::fmt::Debug for KlarnaStepUpLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlarnaStepUpLayer")
            .field("step_up", &self.step_up)
            .finish_non_exhaustive()
    }
}

impl KlarnaStepUpLayer {
    /// A layer that runs `step_up` in front of the wrapped service.
    pub fn new(step_up: StepUp) -> Self {
        KlarnaStepUpLayer {
            step_up,
            observer: None,
            budget: crate::BufferBudget::default(),
            mount: Mount::default(),
        }
    }

    /// The path prefix the wrapped service is mounted under (`"/api"` for an axum
    /// `Router::nest("/api", ..)` this layer wraps from outside): step-up's routes are read
    /// under it. See [`KlarnaStepUp::mounted_at`].
    pub fn mounted_at(mut self, prefix: &str) -> Self {
        self.mount = Mount::new(prefix);
        self
    }

    /// The process-wide budget of buffered candidate bytes (default 64 MiB), shared by every
    /// service this layer makes: past it, new candidates get 503 JSON `overloaded` with
    /// `Retry-After`. See [`KlarnaStepUp::buffer_budget`].
    pub fn buffer_budget(mut self, budget: crate::BufferBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Calls `observer` once per request with step-up's [`Record`] of it (outcome, body
    /// sizes, engine time): the place for metrics. See [`KlarnaStepUp::observe`].
    pub fn observe(mut self, observer: impl Fn(&Record) + Send + Sync + 'static) -> Self {
        self.observer = Some(std::sync::Arc::new(observer));
        self
    }
}

impl<S> Layer<S> for KlarnaStepUpLayer {
    type Service = KlarnaStepUp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KlarnaStepUp::new(inner, self.step_up.clone())
            .with_observer(self.observer.clone())
            .buffer_budget(self.budget.clone())
            .with_mount(self.mount.clone())
    }
}
