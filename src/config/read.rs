//! Reading TOML into configuration types with errors as cargo gives them: the full key of
//! every wrong value (`server.listen`, `routes[1].path`), every one of them (not only the
//! first), and where it is in the file (line and column).

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::ConfigError;

/// Deserializes `value` (the table at `prefix`, e.g. `server`; empty for the whole file) into
/// `T`. On errors, every wrong key is reported: after each error the offending key is taken
/// out and the rest read again, so one file shows all its mistakes at once.
pub fn deserialize_all<T: DeserializeOwned>(
    mut value: toml::Value,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let before = errors.len();
    // Bounded: each round removes one key, and a file has few.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return (errors.len() == before).then_some(t),
            Err(e) => e,
        };
        let mut path: Vec<Segment> = e.path().iter().cloned().collect();
        let message = e.inner().message().trim().to_owned();
        // An unknown or missing field is reported at its parent: name it.
        let named =
            field_in(&message, "unknown field `").or_else(|| field_in(&message, "missing field `"));
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
        let key = join(prefix, &path);
        // A required key taken out for being wrong is not also missing.
        if !(missing && errors[before..].iter().any(|e| e.key == key)) {
            errors.push(ConfigError::new(key, message));
        }
        if missing || !remove(&mut value, &path) {
            return None;
        }
    }
    None
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
/// or of the table header or array element the key leads to.
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
    for part in key.split('.') {
        let (name, indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            let (k, next) = table_like(&at)?.get_key_value(name)?;
            span = k.span().or_else(|| next.span()).or(span);
            at = At::Item(next);
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            let i: usize = index.parse().ok()?;
            at = match at {
                At::Item(item) => match item.as_array_of_tables() {
                    Some(tables) => {
                        let table = tables.get(i)?;
                        span = table.span().or(span);
                        At::Table(table)
                    }
                    None => {
                        let value = item.as_array()?.get(i)?;
                        span = value.span().or(span);
                        At::Value(value)
                    }
                },
                At::Value(v) => {
                    let value = v.as_array()?.get(i)?;
                    span = value.span().or(span);
                    At::Value(value)
                }
                At::Table(_) => return None,
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
    }
}
