//! `StepUpProxy` must delegate every method of Pingora's `ProxyHttp`: a method that a Pingora
//! release adds, and the wrapper does not forward, would silently replace the inner proxy's
//! override with the default. This test reads the trait from the pinned `pingora-proxy`
//! source (the version in `Cargo.lock`, in cargo's registry) and fails naming any method
//! `src/pingora/delegate.rs` does not implement.
#![cfg(feature = "pingora")]

use std::path::{Path, PathBuf};

/// The methods a source file defines at one indentation level (`    fn x` / `    async fn x`).
fn methods(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("    ")?;
            let rest = rest.strip_prefix("async ").unwrap_or(rest);
            let name = rest.strip_prefix("fn ")?;
            let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
            Some(name[..end].to_owned())
        })
        .collect()
}

/// The `pingora-proxy` version `Cargo.lock` pins.
fn pinned_version(root: &Path) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"pingora-proxy\"" {
            let version = lines.next().expect("a version line");
            return version
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_owned();
        }
    }
    panic!("pingora-proxy is not in Cargo.lock");
}

/// `proxy_trait.rs` of that version, in cargo's registry sources.
fn trait_source(version: &str) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registries = cargo_home.join("registry").join("src");
    std::fs::read_dir(&registries)
        .unwrap_or_else(|e| panic!("{}: {e}", registries.display()))
        .filter_map(Result::ok)
        .map(|index| {
            index
                .path()
                .join(format!("pingora-proxy-{version}/src/proxy_trait.rs"))
        })
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("pingora-proxy {version} sources not found under {registries:?}"))
}

#[test]
fn step_up_proxy_delegates_every_proxy_http_method() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let version = pinned_version(root);
    let trait_file = std::fs::read_to_string(trait_source(&version)).unwrap();
    let start = trait_file
        .find("pub trait ProxyHttp")
        .expect("the ProxyHttp trait");
    let body = &trait_file[start..];
    let end = body.find("\n}\n").expect("the end of the trait");
    let wanted = methods(&body[..end]);
    assert!(
        wanted.len() >= 40,
        "read {} methods: {wanted:?}",
        wanted.len()
    );
    let delegated =
        methods(&std::fs::read_to_string(root.join("src/pingora/delegate.rs")).unwrap());
    let missing: Vec<&String> = wanted.iter().filter(|m| !delegated.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "StepUpProxy does not delegate these ProxyHttp methods of pingora-proxy {version}: \
         {missing:?} (add them to src/pingora/delegate.rs)"
    );
}
