#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod budget;
pub mod config;
pub mod engine;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_logic;
pub mod observe;
#[cfg(feature = "pingora")]
pub mod pingora;
#[cfg(feature = "cli")]
pub mod server;
#[cfg(feature = "tower")]
pub mod tower;

pub use budget::BufferBudget;
pub use config::{ConfigError, ConfigErrors, StepUpConfig};
pub use engine::{
    AuthorizeResult, Candidate, Exchange, HeadRefusal, KeepReason, Refusal, RefusalCode,
    RequestVerdict, ResponsePlan, ResponseVerdict, ReturnRedirect, Route, StepUp, WebhookEvent,
};
pub use observe::{Outcome, Record};
