// The README's reference-style links lead to files on GitHub; on docs.rs these definitions,
// read first (the first definition of a label wins), lead to the guide's modules instead.
#![doc = "[partner_contract]: crate::guide::partner_contract\n\
          [payment_api]: crate::guide::payment_api\n\
          [configuration]: crate::guide::configuration\n\
          [adapters]: crate::guide::adapters\n\
          [operations]: crate::guide::operations\n\
          [security]: crate::guide::security\n"]
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod budget;
pub mod config;
pub mod driver;
pub mod engine;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_logic;
pub mod guide;
pub mod observe;
#[cfg(feature = "pingora")]
pub mod pingora;
#[cfg(feature = "tower")]
pub mod tower;

pub use budget::BufferBudget;
pub use config::{ConfigError, ConfigErrors, StepUpConfig};
pub use engine::{
    AuthorizeResult, Candidate, Exchange, HeadRefusal, KeepReason, Refusal, RefusalCode,
    RequestVerdict, ResponsePlan, ResponseVerdict, ReturnRedirect, Route, StepUp, WebhookEvent,
};
pub use observe::{Outcome, Record};
