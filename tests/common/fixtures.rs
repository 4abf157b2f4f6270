//! The shared fixture table: `tests/fixtures/*.json`, one exchange each, run through the
//! engine, the tower adapter and the Pingora adapter alike (and used by the benchmarks).
//!
//! A body in a fixture is either a JSON string (the bytes are its contents) or any other JSON
//! value, whose bytes are exactly its text in the file: whitespace, key order, number formats
//! and escapes included.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

/// One exchange: what the partner sends, what must reach the upstream, what the upstream
/// answers, and what the partner must get.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub config: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub forwarded: Forwarded,
    pub upstream: Option<Upstream>,
    pub expect: Expected,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Forwarded {
    /// The layer answers by itself; the upstream must see nothing.
    None,
    /// The upstream gets the partner's bytes.
    Untouched,
    /// The upstream gets exactly these bytes.
    Body(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Expected {
    pub status: u16,
    /// The `x-klarna-stepup` header, or none at all.
    pub marker: Option<String>,
    pub body: Vec<u8>,
}

impl Fixture {
    /// The bytes the upstream must receive, when it receives anything.
    pub fn forwarded_body(&self) -> Option<&[u8]> {
        match &self.forwarded {
            Forwarded::None => None,
            Forwarded::Untouched => Some(&self.body),
            Forwarded::Body(b) => Some(b),
        }
    }
}

/// `tests/fixtures` of the library, also from the server crate's tests (`server/`, a
/// workspace member in the library's directory).
pub fn dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = here.join("tests/fixtures");
    if fixtures.is_dir() {
        fixtures
    } else {
        here.join("../tests/fixtures")
    }
}

/// Every fixture, sorted by name.
pub fn all() -> Vec<Fixture> {
    let mut paths: Vec<_> = std::fs::read_dir(dir())
        .expect("tests/fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

pub fn by_name(name: &str) -> Fixture {
    load(&dir().join(format!("{name}.json")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File<'a> {
    #[allow(unused)]
    about: String,
    config: String,
    #[serde(borrow)]
    request: Req<'a>,
    #[serde(borrow)]
    forwarded: &'a RawValue,
    #[serde(borrow)]
    upstream: Option<Up<'a>>,
    #[serde(borrow)]
    response: Resp<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Req<'a> {
    method: String,
    path: String,
    headers: std::collections::BTreeMap<String, String>,
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Up<'a> {
    status: u16,
    headers: std::collections::BTreeMap<String, String>,
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resp<'a> {
    status: u16,
    marker: Option<String>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(default)]
    upstream_body: bool,
}

fn bytes(raw: &RawValue) -> Vec<u8> {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => s.into_bytes(),
        Err(_) => raw.get().as_bytes().to_vec(),
    }
}

fn load(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap();
    let f: File<'_> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let forwarded = match f.forwarded.get() {
        r#""none""# => Forwarded::None,
        r#""untouched""# => Forwarded::Untouched,
        _ => {
            #[derive(Deserialize)]
            struct B<'a> {
                #[serde(borrow)]
                body: &'a RawValue,
            }
            let b: B<'_> = serde_json::from_str(f.forwarded.get())
                .expect("forwarded: none, untouched or {body}");
            Forwarded::Body(bytes(b.body))
        }
    };
    let upstream = f.upstream.map(|u| Upstream {
        status: u.status,
        headers: u.headers.into_iter().collect(),
        body: bytes(u.body),
    });
    let body = if f.response.upstream_body {
        upstream
            .as_ref()
            .expect("upstream_body needs an upstream")
            .body
            .clone()
    } else {
        bytes(f.response.body.expect("response.body or upstream_body"))
    };
    Fixture {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        config: f.config,
        method: f.request.method,
        path: f.request.path,
        headers: f.request.headers.into_iter().collect(),
        body: bytes(f.request.body),
        forwarded,
        upstream,
        expect: Expected {
            status: f.response.status,
            marker: f.response.marker,
            body,
        },
    }
}
