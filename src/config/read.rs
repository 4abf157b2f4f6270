//! Reading TOML into configuration types with errors as cargo gives them: the full key of
//! every wrong value (`server.listen`, `routes[1].path`), every one of them (not only the
//! first), and where it is in the file (line and column).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::ConfigError;

/// What [`deserialize_lenient`] read: the value with every wrong key taken out (defaults in
/// their place), and the keys whose values were wrong.
pub struct Lenient<T> {
    /// The value, unless the table could not be read at all (a required key missing from
    /// it, or a value that is not a table).
    pub value: Option<T>,
    /// The keys whose values were wrong (of the wrong type, or missing a required key):
    /// their defaults stand in for them, so checks that read them say nothing true.
    /// Misspelt keys are not among them: a key that is not read changes nothing.
    pub unchecked: Vec<String>,
    /// Array elements taken out, by the array's key: their original indices, ascending.
    removed: HashMap<String, Vec<usize>>,
}

impl<T> Lenient<T> {
    /// `key` (of an error found in [`value`](Self::value)) as it is in the file: array
    /// indices counted with the elements taken out.
    pub fn original_key(&self, key: &str) -> String {
        original(&self.removed, key)
    }

    /// Adds the errors of checks made on [`value`](Self::value) to `errors`, each under its
    /// key in the file, leaving out those [`checkable`] finds unsound.
    pub fn add_checked(
        &self,
        checked: impl IntoIterator<Item = ConfigError>,
        reads: &[(&str, &[&str])],
        errors: &mut Vec<ConfigError>,
    ) {
        for mut e in checked {
            e.key = self.original_key(&e.key);
            if checkable(&e.key, &self.unchecked, reads) {
                errors.push(e);
            }
        }
    }
}

/// Deserializes `value` (the table at `prefix`, e.g. `server`; empty for the whole file) into
/// `T`, only if it has no error. Every wrong key is reported: see [`deserialize_lenient`].
pub fn deserialize_all<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let before = errors.len();
    let read = deserialize_lenient(value, prefix, errors);
    read.value.filter(|_| errors.len() == before)
}

/// Deserializes `value` (the table at `prefix`, e.g. `server`; empty for the whole file) into
/// `T` as far as it can: after each error the offending key is taken out (for a missing
/// required key, the table or array element that lacks it) and the rest read again, so one
/// file shows all its mistakes at once, and the value read without them can still be
/// checked (see [`checkable`]).
pub fn deserialize_lenient<T: DeserializeOwned>(
    mut value: toml::Value,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Lenient<T> {
    let mut read = Lenient {
        value: None,
        unchecked: Vec::new(),
        removed: HashMap::new(),
    };
    let before = errors.len();
    // Bounded: each round removes one key or element, and a file has few.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => {
                read.value = Some(t);
                return read;
            }
            Err(e) => e,
        };
        let mut path: Vec<Segment> = e.path().iter().cloned().collect();
        let message = e.inner().message().trim().to_owned();
        // An unknown or missing field is reported at its parent: name it.
        let named =
            field_in(&message, "unknown field `").or_else(|| field_in(&message, "missing field `"));
        let unknown = message.starts_with("unknown field `");
        let missing = message.starts_with("missing field `");
        if let Some(name) = named {
            if path
                .last()
                .is_none_or(|s| !matches!(s, Segment::Map { key } if key == name))
            {
                path.push(Segment::Map {
                    key: name.to_owned(),
                });
            }
        }
        let key = read.original_key(&join(prefix, &path));
        // A required key taken out for being wrong is not also missing.
        if !(missing && errors[before..].iter().any(|e| e.key == key)) {
            errors.push(ConfigError::new(key.clone(), message));
        }
        // A missing key: the table or element without it goes (the whole value when it is
        // the top one); any other wrong key goes itself.
        let gone = if missing {
            path.pop();
            if path.is_empty() {
                return read;
            }
            read.original_key(&join(prefix, &path))
        } else {
            key
        };
        if !remove(&mut value, &path) {
            return read;
        }
        if let Some(Segment::Seq { .. }) = path.last() {
            if let Some((array, index)) = gone.rsplit_once('[') {
                if let Ok(i) = index.trim_end_matches(']').parse::<usize>() {
                    let list = read.removed.entry(array.to_owned()).or_default();
                    let at = list.partition_point(|&r| r < i);
                    list.insert(at, i);
                }
            }
        }
        if !unknown {
            read.unchecked.push(gone);
        }
    }
    read
}

/// Whether an error a check found at `key` is sound though the values at `unchecked` were
/// wrong (their defaults stood in for them): not when `key` is, holds or lies within one of
/// them, nor when the check also reads one of them. `reads` lists the checks that read
/// keys besides their own: an error key (or the table holding it) and the keys (or tables)
/// its check reads.
pub fn checkable(key: &str, unchecked: &[String], reads: &[(&str, &[&str])]) -> bool {
    unchecked.iter().all(|wrong| {
        !within(key, wrong)
            && !within(wrong, key)
            && !reads
                .iter()
                .any(|(at, read)| within(key, at) && read.iter().any(|r| within(wrong, r)))
    })
}

/// Whether `key` is `table` or lies within it (`a.b`, `a[1]` within `a`).
fn within(key: &str, table: &str) -> bool {
    key.strip_prefix(table)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// `key` with every array index counted as in the file, given the elements `removed`.
fn original(removed: &HashMap<String, Vec<usize>>, key: &str) -> String {
    if removed.is_empty() {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len());
    let mut rest = key;
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            let end = rest.find('[').unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        };
        let Some((index, after)) = inner.split_once(']') else {
            out.push_str(rest);
            break;
        };
        match index.parse::<usize>() {
            Ok(mut i) => {
                for &gone in removed.get(&out).map_or(&[][..], Vec::as_slice) {
                    if gone <= i {
                        i += 1;
                    }
                }
                out.push_str(&format!("[{i}]"));
            }
            Err(_) => {
                out.push('[');
                out.push_str(index);
                out.push(']');
            }
        }
        rest = after;
    }
    out
}

/// Reads the step-up keys of `table` (a whole file, or what is left of it without the
/// tables of others, such as the proxy's `[server]`) into a [`StepUp`](crate::StepUp) and
/// checks them; every error found goes to `errors`, misspelt keys, wrong values and failed
/// checks together (but those the wrong values make unsound: see [`checkable`]).
pub fn step_up(table: toml::Value, errors: &mut Vec<ConfigError>) -> Option<crate::StepUp> {
    let before = errors.len();
    let read = deserialize_lenient::<super::StepUpConfig>(table, "", errors);
    match crate::StepUp::new(read.value.clone()?) {
        Ok(step_up) => (errors.len() == before).then_some(step_up),
        Err(checked) => {
            read.add_checked(checked.0, crate::engine::CROSS_KEY_CHECKS, errors);
            None
        }
    }
}

/// Every key a configuration reader takes under the table `root` (`""` for the whole file),
/// found by asking it: `parse` reads a TOML text and gives its errors. Each table is asked
/// for an unknown key, whose error lists the table's keys; each key is then asked whether it
/// is a table or an array of tables. Keys are dotted, an array of tables without its index
/// (`partners.entries.id`): the form the configuration reference uses, and
/// [`keys_set`] gives.
pub fn accepted_keys(
    parse: &dyn Fn(&str) -> Vec<ConfigError>,
    root: &str,
) -> std::collections::BTreeSet<String> {
    const PROBE: &str = "zz_probe";
    /// The keys a probe's error lists, if the probe went into a table of `path`.
    fn listed(
        parse: &dyn Fn(&str) -> Vec<ConfigError>,
        path: &[(String, bool)],
        array: bool,
    ) -> Option<Vec<String>> {
        let mut text = String::new();
        for (i, (_, is_array)) in path.iter().enumerate() {
            let name = path[..=i]
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(".");
            let last = i + 1 == path.len();
            if last && array || !last && *is_array {
                text.push_str(&format!("[[{name}]]\n"));
            } else if last {
                text.push_str(&format!("[{name}]\n"));
            }
        }
        text.push_str(&format!("{PROBE} = 1\n"));
        // Probing `a.b`, the error must be of `a.b.zz_probe` (or `a.b[0].zz_probe`), not of
        // `a.zz_probe` (when `b` is no table).
        let want = path
            .iter()
            .map(|(n, _)| format!("{n}."))
            .chain([PROBE.to_owned()])
            .collect::<String>();
        let lead = format!("unknown field `{PROBE}`");
        let error = parse(&text)
            .into_iter()
            .find(|e| e.reason.starts_with(&lead) && without_indices(&e.key) == want)?;
        let expected = error.reason.split_once("expected")?.1;
        Some(
            expected
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect(),
        )
    }
    /// `a.b[0].c[1]` without its indices.
    fn without_indices(key: &str) -> String {
        let mut out = String::new();
        let mut depth = 0;
        for c in key.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                c if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    }
    fn walk(
        parse: &dyn Fn(&str) -> Vec<ConfigError>,
        path: &mut Vec<(String, bool)>,
        array: bool,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        let Some(fields) = listed(parse, path, array) else {
            return;
        };
        if let Some(last) = path.last_mut() {
            last.1 = array;
        }
        for field in fields {
            path.push((field, false));
            // Bounded: configuration types nest a few tables deep.
            if path.len() <= 8 && listed(parse, path, false).is_some() {
                walk(parse, path, false, out);
            } else if path.len() <= 8 && listed(parse, path, true).is_some() {
                walk(parse, path, true, out);
            } else {
                out.insert(
                    path.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join("."),
                );
            }
            path.pop();
        }
    }
    let mut out = std::collections::BTreeSet::new();
    let mut path: Vec<(String, bool)> = root
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| (s.to_owned(), false))
        .collect();
    walk(parse, &mut path, false, &mut out);
    out
}

/// The keys a configuration reference in markdown names, in the form of [`accepted_keys`]: a
/// heading naming a table in code (`` ## `[partners]` ``, `` ### `[[partners.entries]]` ``)
/// or the top level (`## Top-level keys`) starts a table, whose keys are the table rows
/// beginning with a key in code (`` | `header` | … ``); any other heading ends it.
pub fn documented_keys(markdown: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut table: Option<String> = None;
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        if line.starts_with('#') {
            table = if line.contains("Top-level keys") {
                Some(String::new())
            } else {
                line.split('`')
                    .nth(1)
                    .filter(|t| t.starts_with('['))
                    .map(|t| t.trim_matches(['[', ']']).to_owned())
            };
        } else if let (Some(table), Some(row)) = (&table, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or("");
            out.insert(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    out
}

/// The keys `value` (a TOML document) sets, in the form of [`accepted_keys`]: dotted, an
/// array of tables without its index.
pub fn keys_set(value: &toml::Value) -> std::collections::BTreeSet<String> {
    fn walk(value: &toml::Value, key: &str, out: &mut std::collections::BTreeSet<String>) {
        let join = |k: &str| {
            if key.is_empty() {
                k.to_owned()
            } else {
                format!("{key}.{k}")
            }
        };
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(v, &join(k), out);
                }
            }
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table) => {
                for v in a {
                    walk(v, key, out);
                }
            }
            _ => {
                out.insert(key.to_owned());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(value, "", &mut out);
    out
}

/// The field named in a serde message such as "unknown field `x`, expected …".
fn field_in<'m>(message: &'m str, lead: &str) -> Option<&'m str> {
    message.strip_prefix(lead)?.split('`').next()
}

/// `prefix` and `path` as one key: `server.upstream[1]`.
fn join(prefix: &str, path: &[Segment]) -> String {
    let mut key = prefix.to_owned();
    for seg in path {
        match seg {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// Removes what `path` names from `value`; false when there is nothing to remove.
fn remove(value: &mut toml::Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for seg in parents {
        let next = match (seg, at) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key),
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        at = next;
    }
    match (last, at) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key).is_some(),
        (Segment::Seq { index }, toml::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

/// Line and column (1-based) of `key` (`a.b[1].c`) in the TOML `text`: of the key itself,
/// or of the table header or array element the key leads to; for a key not in the text, of
/// the nearest table or element that holds it.
pub(crate) fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    use toml_edit::{Item, Table, TableLike, Value};
    enum At<'a> {
        Item(&'a Item),
        Table(&'a Table),
        Value(&'a Value),
    }
    fn table_like<'a>(at: &At<'a>) -> Option<&'a dyn TableLike> {
        match *at {
            At::Item(i) => i.as_table_like(),
            At::Table(t) => Some(t),
            At::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut at = At::Table(doc.as_table());
    let mut span = None;
    // A key not in the text (a missing one) is placed at the table or element that lacks it.
    'parts: for part in key.split('.') {
        let (name, indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            let Some((k, next)) = table_like(&at).and_then(|t| t.get_key_value(name)) else {
                break;
            };
            span = k.span().or_else(|| next.span()).or(span);
            at = At::Item(next);
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            let Ok(i) = index.parse::<usize>() else {
                break 'parts;
            };
            at = match at {
                At::Item(item) => match item.as_array_of_tables() {
                    Some(tables) => {
                        let Some(table) = tables.get(i) else {
                            break 'parts;
                        };
                        span = table.span().or(span);
                        At::Table(table)
                    }
                    None => {
                        let Some(value) = item.as_array().and_then(|a| a.get(i)) else {
                            break 'parts;
                        };
                        span = value.span().or(span);
                        At::Value(value)
                    }
                },
                At::Value(v) => {
                    let Some(value) = v.as_array().and_then(|a| a.get(i)) else {
                        break 'parts;
                    };
                    span = value.span().or(span);
                    At::Value(value)
                }
                At::Table(_) => break 'parts,
            };
        }
    }
    let offset = span?.start;
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_where_they_are_written() {
        let text = "body_limit = \"1MB\"\n[server]\nlisten = 8080\nupstream = [\"a:1\", 2]\n\
                    [[routes]]\nmethod = \"POST\"\npath = \"/a\"\n[[routes]]\nmethod = 5\n";
        assert_eq!(locate(text, "body_limit"), Some((1, 1)));
        assert_eq!(locate(text, "server.listen"), Some((3, 1)));
        assert_eq!(locate(text, "server.upstream[1]"), Some((4, 20)));
        assert_eq!(locate(text, "routes[1].method"), Some((9, 1)));
        assert_eq!(locate(text, "routes[1]"), Some((8, 1)));
        assert_eq!(locate(text, "nope"), None);
        assert_eq!(locate(text, "routes[1].path"), Some((8, 1)));
        assert_eq!(locate(text, "server.tls.cert"), Some((2, 2)));
    }

    /// One misspelt key, wrong values and failed checks: every error in one round, each
    /// under its key in the file, but the checks that read a wrong value.
    const MANY_ERRORS: &str = include_str!("many-errors.toml");

    /// The keys of [`MANY_ERRORS`]'s errors, as `StepUp::from_toml` reports them.
    const MANY_ERRORS_KEYS: &[&str] = &[
        "return_url_policy.max_lenght",
        "return_url_policy.max_length",
        "routes[1].method",
        "webhooks.enabled",
        "body_limit",
        "routes[0].method",
        "routes[2].path",
        "inject_at",
        "return_url_policy.schemes[0]",
        "defaults.interaction_expiry",
        "partner_response.pending",
        "partner_response.redirect_url",
        "partner_response.placement",
    ];

    #[test]
    fn every_error_in_one_round() {
        let err = crate::StepUp::from_toml(MANY_ERRORS).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, MANY_ERRORS_KEYS, "{err}");
        // Each is placed in the file, the route after the one taken out under its own index.
        assert!(err.0.iter().all(|e| e.location.is_some()), "{err}");
        let route = err.0.iter().find(|e| e.key == "routes[2].path").unwrap();
        assert_eq!(route.location, Some((11, 1)), "{err}");
        // Not reported: the default return URL's check reads the policy, whose max_length is
        // wrong; the webhooks (on or off?) are not checked at all.
        assert!(!keys.contains(&"defaults.return_url"), "{err}");
        assert!(
            !keys.iter().any(|k| k.starts_with("webhooks.path")),
            "{err}"
        );
        // The configuration alone (its types): the same first four.
        let typed = crate::StepUpConfig::from_toml(MANY_ERRORS).unwrap_err();
        let keys: Vec<_> = typed.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, MANY_ERRORS_KEYS[..4], "{typed}");
    }

    #[test]
    fn soundness_of_checks() {
        let wrong = ["a.b".to_owned(), "list[1]".to_owned()];
        let reads: &[(&str, &[&str])] = &[("c.d", &["a"])];
        assert!(!checkable("a.b", &wrong, reads));
        assert!(!checkable("a.b.c", &wrong, reads));
        assert!(!checkable("a", &wrong, reads));
        assert!(!checkable("list", &wrong, reads));
        assert!(!checkable("c.d[0]", &wrong, reads));
        assert!(checkable("a.bc", &wrong, reads));
        assert!(checkable("list[0]", &wrong, reads));
        assert!(checkable("c.e", &wrong, reads));
        let removed = HashMap::from([("r".to_owned(), vec![0, 2])]);
        assert_eq!(original(&removed, "r[0].x"), "r[1].x");
        assert_eq!(original(&removed, "r[1]"), "r[3]");
        assert_eq!(original(&removed, "s[0]"), "s[0]");
    }
}
