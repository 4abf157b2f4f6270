//! Borrowed views of JSON objects and byte splicing, so that rewrites keep every byte they
//! do not own.
//!
//! serde_json validates the whole document and hands back each member's raw value as a
//! sub-slice of the input; offsets are recovered from the slices, so an edit is a byte range
//! and a replacement, applied in one pass.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One member of a JSON object: its (unescaped) key and its raw value.
pub(crate) struct Member<'a> {
    pub key: Cow<'a, str>,
    pub value: &'a RawValue,
}

/// The members of one JSON object, in document order, duplicates included.
pub(crate) struct Object<'a> {
    /// The whole object, `{` through `}`.
    pub raw: &'a [u8],
    pub members: Vec<Member<'a>>,
}

impl<'a> Object<'a> {
    /// Parses `src` as one JSON object (surrounding whitespace allowed). `None` when it is
    /// not valid JSON or not an object. One pass over the bytes.
    pub fn parse(src: &'a [u8]) -> Option<Self> {
        let MembersOf(members) = serde_json::from_slice(src).ok()?;
        let start = src.iter().position(|b| !b.is_ascii_whitespace())?;
        let end = src.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
        Some(Object {
            raw: &src[start..end],
            members,
        })
    }

    /// The members of a raw value that is an object; `None` for any other JSON value.
    pub fn from_raw(raw: &'a RawValue) -> Option<Self> {
        let text = raw.get();
        if !text.starts_with('{') {
            return None;
        }
        let MembersOf(members) = serde_json::from_str(text).ok()?;
        Some(Object {
            raw: text.as_bytes(),
            members,
        })
    }

    /// The value of `key`. With duplicate keys the last one wins, as in most JSON parsers
    /// (and so, most likely, in the payment API behind us).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|m| m.key == key)
            .map(|m| m.value)
    }

    /// The value of `key` when it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(as_str)
    }
}

/// A raw value as a string, when it is a JSON string.
pub(crate) fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    let BorrowedStr(s) = serde_json::from_str(raw.get()).ok()?;
    Some(s)
}

/// The byte range of `part` inside `root`; `part` must be a sub-slice of `root`.
pub(crate) fn span(root: &[u8], part: impl AsRef<[u8]>) -> Range<usize> {
    let part = part.as_ref();
    let start = part.as_ptr() as usize - root.as_ptr() as usize;
    debug_assert!(start + part.len() <= root.len());
    start..start + part.len()
}

/// A set of byte edits over one buffer: replacements of ranges, insertions at positions.
#[derive(Default)]
pub(crate) struct Edits {
    edits: Vec<(Range<usize>, Vec<u8>)>,
}

impl Edits {
    pub fn replace(&mut self, range: Range<usize>, with: Vec<u8>) {
        self.edits.push((range, with));
    }

    pub fn insert(&mut self, at: usize, with: Vec<u8>) {
        self.edits.push((at..at, with));
    }

    /// Applies the edits to `src`. Edits must not overlap (insertions may touch a range).
    pub fn apply(mut self, src: &[u8]) -> Vec<u8> {
        self.edits.sort_by_key(|(r, _)| (r.start, r.end));
        let added: usize = self.edits.iter().map(|(_, w)| w.len()).sum();
        let mut out = Vec::with_capacity(src.len() + added);
        let mut at = 0;
        for (range, with) in self.edits {
            debug_assert!(range.start >= at, "overlapping edits");
            out.extend_from_slice(&src[at..range.start]);
            out.extend_from_slice(&with);
            at = range.end;
        }
        out.extend_from_slice(&src[at..]);
        out
    }
}

/// Removes the members of `obj` whose indices are in `remove` (sorted, unique), commas and
/// all, as edits over `root`. Whitespace around the survivors stays as it was.
pub(crate) fn remove_members(root: &[u8], obj: &Object<'_>, remove: &[usize], edits: &mut Edits) {
    let obj_span = span(root, obj.raw);
    let value_end = |i: usize| span(root, obj.members[i].value.get()).end;
    let mut i = 0;
    while i < remove.len() {
        // A run of consecutive indices is removed as one range, so ranges never overlap.
        let first = remove[i];
        let mut last = first;
        while i + 1 < remove.len() && remove[i + 1] == last + 1 {
            i += 1;
            last = remove[i];
        }
        i += 1;
        if first > 0 {
            // From the end of the previous value: its comma, then the run.
            edits.replace(value_end(first - 1)..value_end(last), Vec::new());
        } else if last + 1 == obj.members.len() {
            edits.replace(obj_span.start + 1..value_end(last), Vec::new());
        } else {
            // From just after `{` through the comma that follows the run.
            let after = value_end(last);
            let comma = root[after..]
                .iter()
                .position(|&b| b == b',')
                .map_or(after, |p| after + p + 1);
            edits.replace(obj_span.start + 1..comma, Vec::new());
        }
    }
}

/// Appends serialized members (`"key":value` texts, already comma-joined) at the end of
/// `obj`, as an edit over `root`.
pub(crate) fn append_members(
    root: &[u8],
    obj_raw: &[u8],
    has_members: bool,
    members: &[u8],
    edits: &mut Edits,
) {
    let close = span(root, obj_raw).end - 1;
    let mut with = Vec::with_capacity(members.len() + 1);
    if has_members {
        with.push(b',');
    }
    with.extend_from_slice(members);
    edits.insert(close, with);
}

/// Writes `"key":` followed by `value` serialized as JSON.
pub(crate) fn write_member<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, key: &str, value: &T) {
    if !out.is_empty() {
        out.push(b',');
    }
    // Serializing a &str or a plain struct into a Vec cannot fail.
    serde_json::to_writer(&mut *out, key).expect("serialize key");
    out.push(b':');
    serde_json::to_writer(&mut *out, value).expect("serialize value");
}

struct MembersOf<'a>(Vec<Member<'a>>);

impl<'de> Deserialize<'de> for MembersOf<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MembersOf<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((BorrowedStr(key), value)) =
                    map.next_entry::<BorrowedStr<'de>, &'de RawValue>()?
                {
                    members.push(Member { key, value });
                }
                Ok(MembersOf(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the input unless it had escapes.
pub(crate) struct BorrowedStr<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(src: &str, remove: &[usize]) -> String {
        let obj = Object::parse(src.as_bytes()).unwrap();
        let mut edits = Edits::default();
        remove_members(src.as_bytes(), &obj, remove, &mut edits);
        let out = String::from_utf8(edits.apply(src.as_bytes())).unwrap();
        serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
        out
    }

    #[test]
    fn parses_members_with_escaped_keys_and_duplicates() {
        let src = br#" {"a":1, "\u0062":{"x":[1,2]}, "a" : "two"} "#;
        let obj = Object::parse(src).unwrap();
        assert_eq!(obj.members.len(), 3);
        assert_eq!(obj.members[1].key, "b");
        assert_eq!(obj.get("b").unwrap().get(), r#"{"x":[1,2]}"#);
        assert_eq!(obj.get_str("a").unwrap(), "two");
        assert_eq!(span(src, obj.get("b").unwrap().get()), 18..29);
    }

    #[test]
    fn rejects_non_objects_and_invalid_json() {
        for src in ["[1]", "\"x\"", "{", "{\"a\":}", "", "{} x", "1"] {
            assert!(Object::parse(src.as_bytes()).is_none(), "{src}");
        }
    }

    #[test]
    fn removes_member_runs_anywhere() {
        let src = r#"{ "a": 1, "b": 2, "c": 3, "d": 4 }"#;
        assert_eq!(strip(src, &[0]), r#"{ "b": 2, "c": 3, "d": 4 }"#);
        assert_eq!(strip(src, &[0, 1]), r#"{ "c": 3, "d": 4 }"#);
        assert_eq!(strip(src, &[1, 2]), r#"{ "a": 1, "d": 4 }"#);
        assert_eq!(strip(src, &[3]), r#"{ "a": 1, "b": 2, "c": 3 }"#);
        assert_eq!(strip(src, &[0, 3]), r#"{ "b": 2, "c": 3 }"#);
        assert_eq!(strip(src, &[0, 1, 2, 3]), r#"{ }"#);
        assert_eq!(strip(src, &[0, 2]), r#"{ "b": 2, "d": 4 }"#);
    }

    #[test]
    fn appends_members() {
        let src = br#"{"a":1} "#;
        let obj = Object::parse(src).unwrap();
        let mut edits = Edits::default();
        append_members(src, obj.raw, true, br#""b":2"#, &mut edits);
        assert_eq!(edits.apply(src), br#"{"a":1,"b":2} "#);
        let src = b"{ }";
        let obj = Object::parse(src).unwrap();
        let mut edits = Edits::default();
        append_members(src, obj.raw, false, br#""b":2"#, &mut edits);
        assert_eq!(edits.apply(src), br#"{ "b":2}"#);
    }
}
