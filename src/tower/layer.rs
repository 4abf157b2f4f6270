//! [`KlarnaStepUpLayer`]: the configuration, applied to a service.

use tower_layer::Layer;

use super::KlarnaStepUp;
use crate::StepUp;

/// Applies Klarna step-up to a service: see [the module docs](crate::tower).
#[derive(Debug, Clone)]
pub struct KlarnaStepUpLayer {
    step_up: StepUp,
}

impl KlarnaStepUpLayer {
    /// A layer that runs `step_up` in front of the wrapped service.
    pub fn new(step_up: StepUp) -> Self {
        KlarnaStepUpLayer { step_up }
    }
}

impl<S> Layer<S> for KlarnaStepUpLayer {
    type Service = KlarnaStepUp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KlarnaStepUp::new(inner, self.step_up.clone())
    }
}
