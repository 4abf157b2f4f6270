//! The feature table of the adapters guide (`docs/adapters.md`) says what `Cargo.toml` says: one row per feature, `(default)`
//! exactly on the default ones, and every optional dependency a row claims to pull in is
//! one its feature enables (the codecs flate2, brotli and zstd named wherever enabled).

use std::collections::{BTreeMap, BTreeSet};

const CODECS: [&str; 3] = ["flate2", "brotli", "zstd"];

struct Manifest {
    features: BTreeMap<String, Vec<String>>,
    optional: BTreeSet<String>,
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let features = doc["features"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let list = v.as_array().unwrap();
            let list = list.iter().map(|s| s.as_str().unwrap().to_owned());
            (k.clone(), list.collect())
        })
        .collect();
    let optional = doc["dependencies"]
        .as_table()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("optional").and_then(|o| o.as_bool()) == Some(true))
        .map(|(k, _)| k.clone())
        .collect();
    Manifest { features, optional }
}

/// The optional dependencies `feature` enables, through the features it enables (bounded by
/// the number of features: each is visited once).
fn enabled_deps(m: &Manifest, feature: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![feature.to_owned()];
    let mut deps = BTreeSet::new();
    while let Some(f) = todo.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        for entry in m.features.get(&f).into_iter().flatten() {
            if let Some(dep) = entry.strip_prefix("dep:") {
                deps.insert(dep.to_owned());
            } else if let Some((dep, _)) = entry.split_once('/') {
                deps.insert(dep.trim_end_matches('?').to_owned());
            } else if m.features.contains_key(entry) {
                todo.push(entry.clone());
            } else {
                deps.insert(entry.clone());
            }
        }
    }
    deps
}

/// The rows of the guide's feature table: (feature, marked default, what it pulls in).
fn table() -> Vec<(String, bool, String)> {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/adapters.md")).unwrap();
    let start = guide
        .find("| feature | what you get | what it pulls in |")
        .expect("the feature table");
    guide[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let first = cells[1];
            let name = first
                .split('`')
                .nth(1)
                .expect("a `feature` in the first cell");
            (
                name.to_owned(),
                first.contains("(default)"),
                cells[3].to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_feature_table_matches_the_manifest() {
    let m = manifest();
    let rows = table();
    let documented: BTreeSet<&str> = rows.iter().map(|(n, ..)| n.as_str()).collect();
    let declared: BTreeSet<&str> = m
        .features
        .keys()
        .map(String::as_str)
        .filter(|f| *f != "default")
        .collect();
    assert_eq!(documented, declared, "one row per feature of Cargo.toml");
    let defaults: BTreeSet<&str> = m.features["default"].iter().map(String::as_str).collect();
    for (name, default, pulls) in &rows {
        assert_eq!(
            *default,
            defaults.contains(name.as_str()),
            "{name}: (default)"
        );
        let deps = enabled_deps(&m, name);
        let named: BTreeSet<&str> = pulls
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| m.optional.contains(*w))
            .collect();
        for dep in &named {
            assert!(
                deps.contains(*dep),
                "{name}: the guide says it pulls in {dep}; it does not"
            );
        }
        for codec in CODECS {
            assert_eq!(
                deps.contains(codec),
                named.contains(codec),
                "{name}: enables {codec} in Cargo.toml, the guide must say so (and only then)"
            );
        }
    }
}

#[test]
fn the_pingora_feature_decodes_what_the_default_build_decodes() {
    let m = manifest();
    let default: BTreeSet<String> = CODECS.iter().map(|c| c.to_string()).collect();
    let pingora = enabled_deps(&m, "pingora");
    assert!(default.is_subset(&pingora), "pingora enables {pingora:?}");
    assert!(m.features["pingora"]
        .iter()
        .any(|f| f == "decompression-full"));
}
