//! The guide: one page per topic, beside the API reference. The same pages are the markdown
//! files under `docs/` in the repository.
//!
//! - [`partner_contract`]: what a partner sends, what it gets back, and every error code.
//! - [`payment_api`]: what the payment API behind the layer answers, and what it gets: the
//!   acquirer return's notification and Klarna's verified webhooks.
//! - [`configuration`]: every key of the configuration file, and the Rust builder.
//! - [`adapters`]: the tower layer (axum, hyper) and the Pingora adapter in detail.
//! - [`operations`]: running the `klarna-stepup` proxy: logs, metrics, health, stopping,
//!   upgrading, scaling out.
//! - [`security`]: what the layer refuses and why (fail closed), and what it never logs.

/// Link definitions for the pages' reference-style links: on docs.rs they lead to the
/// modules (the first definition of a label wins), on GitHub the pages' own ones to the files.
macro_rules! links {
    () => {
        "[partner_contract]: crate::guide::partner_contract\n\
         [payment_api]: crate::guide::payment_api\n\
         [configuration]: crate::guide::configuration\n\
         [adapters]: crate::guide::adapters\n\
         [operations]: crate::guide::operations\n\
         [security]: crate::guide::security\n\n"
    };
}

#[doc = links!()]
#[doc = include_str!("../docs/partner-contract.md")]
pub mod partner_contract {}

#[doc = links!()]
#[doc = include_str!("../docs/payment-api.md")]
pub mod payment_api {}

#[doc = links!()]
#[doc = include_str!("../docs/configuration.md")]
pub mod configuration {}

#[doc = links!()]
#[doc = include_str!("../docs/adapters.md")]
pub mod adapters {}

#[doc = links!()]
#[doc = include_str!("../docs/operations.md")]
pub mod operations {}

#[doc = links!()]
#[doc = include_str!("../docs/security.md")]
pub mod security {}

#[cfg(test)]
mod tests {
    use crate::config::read::{accepted_keys, documented_keys};

    /// The reference names every key the configuration takes, and no other.
    #[test]
    fn the_configuration_reference_names_every_key() {
        let parse = |text: &str| match crate::StepUp::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        let accepted = accepted_keys(&parse, "");
        assert!(accepted.len() > 50, "{accepted:?}");
        let documented = documented_keys(include_str!("../docs/configuration.md"));
        let library: std::collections::BTreeSet<String> = documented
            .iter()
            .filter(|k| *k != "server" && !k.starts_with("server."))
            .cloned()
            .collect();
        let missing: Vec<_> = accepted.difference(&library).collect();
        let unknown: Vec<_> = library.difference(&accepted).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/configuration.md: keys not in it: {missing:?}; keys it names that the \
             configuration does not take: {unknown:?}"
        );
    }
}
