//! Borrowed views of JSON objects and byte splicing, so that rewrites keep every byte they
//! do not own.
//!
//! [`Object::parse`] validates the whole document (RFC 8259) in one pass and hands back each
//! top-level member's raw value as a sub-slice of the input; offsets are recovered from the
//! slices, so an edit is a byte range and a replacement, applied in one pass. Values are
//! skipped, not built: the scan is a table-driven loop over bytes with no allocation but the
//! member list, about twice as fast as serde_json's `RawValue` parse on payment-shaped
//! bodies (many short strings). serde_json stays the reference: a property test and the
//! `request` fuzz target check that both accept exactly the same documents.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, Visitor};

/// One member of a JSON object: its (unescaped) key and its raw JSON value.
pub(crate) struct Member<'a> {
    pub key: Cow<'a, str>,
    pub value: &'a str,
    /// Whether the key is all ASCII (then only a key as long as a name can name it).
    ascii: bool,
}

impl Member<'_> {
    /// Whether this member's key names `name` (ASCII), as [`same_name`] compares; the key's
    /// ASCII-ness is known from the scan, not looked up again for each name.
    #[inline]
    pub fn names(&self, name: &str) -> bool {
        names_as(&self.key, self.ascii, name)
    }
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
        // JSON text is UTF-8 (RFC 8259); once that is known, the scan only looks at ASCII.
        let text = std::str::from_utf8(src).ok()?;
        let mut s = Scanner::new(text);
        s.ws();
        let start = s.at;
        let members = s.object_members()?;
        let end = s.at;
        s.ws();
        (s.at == text.len()).then_some(())?;
        Some(Object {
            raw: &src[start..end],
            members,
        })
    }

    /// The members of a raw value that is an object; `None` for any other JSON value.
    /// `raw` must be a value this module handed out (so already validated).
    pub fn from_raw(raw: &'a str) -> Option<Self> {
        if !raw.starts_with('{') {
            return None;
        }
        let mut s = Scanner::new(raw);
        let members = s.object_members()?;
        Some(Object {
            raw: raw.as_bytes(),
            members,
        })
    }

    /// The value of `key` (an ASCII name), matched as [`same_name`] matches: the way the
    /// most lenient common decoder (Go's `encoding/json`) would. With duplicate keys the
    /// last one wins, as in most JSON parsers; the request side refuses duplicates of the
    /// keys it reads, so there it is the only one.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.members
            .iter()
            .rev()
            .find(|m| m.names(key))
            .map(|m| m.value)
    }

    /// The value of `key` when it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(as_str)
    }
}

/// Whether the member name `key`, as sent, names `name` (ASCII) for some common decoder: the
/// same up to ASCII case, and with the non-ASCII letters that Go's `encoding/json` folds onto
/// ASCII ones read as those (`ſ` U+017F as `s`, the Kelvin sign U+212A as `k`, `İ` U+0130
/// and `ı` U+0131 as `i`). Go matches a JSON name to a struct field this way, so a payment
/// API written in Go reads `Return_Url` or `ſtep_up_config` as the field the layer checks.
#[inline]
pub(crate) fn same_name(key: &str, name: &str) -> bool {
    names_as(key, false, name)
}

/// [`same_name`], told whether `key` is known to be all ASCII (then only a key as long as
/// the name can name it). A key of another length is told apart here, inline: most of
/// the keys a body is searched through for a name.
#[inline(always)]
fn names_as(key: &str, ascii: bool, name: &str) -> bool {
    if key.len() < name.len() || ascii && key.len() != name.len() {
        return false;
    }
    names_as_same_or_longer(key, name)
}

/// [`names_as`] for a key as long as the name, or longer and not all ASCII.
fn names_as_same_or_longer(key: &str, name: &str) -> bool {
    if key.len() == name.len() {
        // All ASCII, or not equal (a folded letter is longer than the ASCII it reads as).
        return key.eq_ignore_ascii_case(name);
    }
    // Longer: equal only through folded letters (longer than the ASCII they read as).
    same_name_folded(key, name)
}

/// [`same_name`] for a key longer than the name: equal only through folded letters.
fn same_name_folded(key: &str, name: &str) -> bool {
    if key.is_ascii() {
        return false;
    }
    let mut names = name.bytes();
    key.chars().all(|c| {
        let folded = match c {
            '\u{17F}' => b's',
            '\u{212A}' => b'k',
            '\u{130}' | '\u{131}' => b'i',
            c if c.is_ascii() => c as u8,
            _ => return false,
        };
        names
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case(&folded))
    }) && names.next().is_none()
}

/// Byte classes for the scan.
const PLAIN: u8 = 0; // inside a string: taken as it is
const QUOTE: u8 = 1;
const ESCAPE: u8 = 2;
const CONTROL: u8 = 3; // below 0x20: never raw inside a string
const CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = CONTROL;
        b += 1;
    }
    t[b'"' as usize] = QUOTE;
    t[b'\\' as usize] = ESCAPE;
    t
};

/// The end of the run of [`PLAIN`] bytes at `i`: eight bytes at a time (SWAR: each test
/// flags the lowest matching byte exactly; a false flag can only sit above a true one), then
/// one at a time.
#[inline(always)]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = w ^ (ONES * b'"' as u64);
        let escape = w ^ (ONES * b'\\' as u64);
        let flags = ((quote.wrapping_sub(ONES) & !quote)
            | (escape.wrapping_sub(ONES) & !escape)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| CLASS[c as usize] == PLAIN) {
        i += 1;
    }
    i
}

/// A validating cursor over JSON text. Every method leaves `at` just past what it read and
/// answers `None` for anything that is not JSON.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
    /// The kind (`{` or `[`) of each container the cursor is in, below the top level. Any
    /// depth is taken, as serde_json takes it in a value it skips.
    open: Vec<u8>,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            at: 0,
            open: Vec::new(),
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// `{` … `}` at the cursor: its members, each value validated.
    fn object_members(&mut self) -> Option<Vec<Member<'a>>> {
        self.eat(b'{')?;
        let mut members = Vec::with_capacity(16);
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(members);
        }
        loop {
            let key = self.key()?;
            self.ws();
            let start = self.at;
            self.value()?;
            members.push(Member {
                ascii: key.is_ascii(),
                key,
                value: &self.text[start..self.at],
            });
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(members);
                }
                _ => return None,
            }
        }
    }

    /// `"key":`, the key unescaped.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        let start = self.at;
        let escaped = self.string()?;
        let raw = &self.text[start..self.at];
        self.eat(b':')?;
        Some(if escaped {
            // Rare: let serde_json unescape (it also refuses lone surrogates in keys).
            let BorrowedStr(s) = serde_json::from_str(raw).ok()?;
            Cow::Owned(s.into_owned())
        } else {
            Cow::Borrowed(&raw[1..raw.len() - 1])
        })
    }

    /// A string at the cursor; whether it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let b = self.bytes();
        (self.peek()? == b'"').then_some(())?;
        let mut i = self.at + 1;
        let mut escaped = false;
        loop {
            i = plain_run(b, i);
            match CLASS[*b.get(i)? as usize] {
                QUOTE => break,
                ESCAPE => {
                    escaped = true;
                    i += match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    };
                }
                _ => return None,
            }
        }
        self.at = i + 1;
        Some(escaped)
    }

    fn digits(&mut self) -> usize {
        let b = self.bytes();
        let start = self.at;
        let mut i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        self.at = i;
        i - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    #[inline(always)]
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes()[self.at..].starts_with(word).then_some(())?;
        self.at += word.len();
        Some(())
    }

    /// One value at the cursor, skipped and validated.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' | b'[' => self.container(),
            _ => self.scalar(),
        }
    }

    /// A value that is not an object or array at the cursor, skipped and validated.
    #[inline(always)]
    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// A nested key, `"…":`, validated but not unescaped.
    #[inline(always)]
    fn nested_key(&mut self) -> Option<()> {
        self.ws();
        self.string()?;
        self.eat(b':')
    }

    /// An object or array at the cursor, nested ones included, without recursion.
    fn container(&mut self) -> Option<()> {
        debug_assert!(self.open.is_empty());
        loop {
            // At the start of a value.
            self.ws();
            match self.peek()? {
                kind @ (b'{' | b'[') => {
                    self.at += 1;
                    self.ws();
                    let close = if kind == b'{' { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.at += 1;
                    } else {
                        self.open.push(kind);
                        if kind == b'{' {
                            self.nested_key()?;
                        }
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // After a value: close what ends here, then find the next value.
            loop {
                let Some(&kind) = self.open.last() else {
                    return Some(());
                };
                self.ws();
                match (self.peek()?, kind) {
                    (b',', _) => {
                        self.at += 1;
                        if kind == b'{' {
                            self.nested_key()?;
                        }
                        break;
                    }
                    (b'}', b'{') | (b']', b'[') => {
                        self.at += 1;
                        self.open.pop();
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// A raw value as a string, when it is a JSON string.
pub(crate) fn as_str(text: &str) -> Option<Cow<'_, str>> {
    if !text.starts_with('"') {
        return None;
    }
    if !text.contains('\\') {
        // A valid JSON string without escapes is its own contents between the quotes.
        return Some(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    let BorrowedStr(s) = serde_json::from_str(text).ok()?;
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
    let value_end = |i: usize| span(root, obj.members[i].value).end;
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

/// Writes `s` as a JSON string. The text is copied as is when it needs no escape (the
/// usual case for URLs and references); serde_json escapes the rest.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Eight bytes at a time, as the scan reads strings.
    if plain_run(s.as_bytes(), 0) == s.len() {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serializing a &str into a Vec cannot fail.
        serde_json::to_writer(&mut *out, s).expect("serialize a string");
    }
}

/// Writes `"key":raw` (after a comma when `out` already holds members); `raw` is JSON text.
pub(crate) fn write_raw_member(out: &mut Vec<u8>, key: &str, raw: &[u8]) {
    out.reserve(key.len() + raw.len() + 4);
    if !out.is_empty() {
        out.push(b',');
    }
    write_str(out, key);
    out.push(b':');
    out.extend_from_slice(raw);
}

/// Writes `"key":{members}` (after a comma when `out` already holds members).
pub(crate) fn write_object_member(out: &mut Vec<u8>, key: &str, members: &[u8]) {
    out.reserve(key.len() + members.len() + 6);
    write_raw_member(out, key, b"{");
    out.extend_from_slice(members);
    out.push(b'}');
}

/// Writes `"key":"value"` (after a comma when `out` already holds members).
pub(crate) fn write_member(out: &mut Vec<u8>, key: &str, value: &str) {
    write_raw_member(out, key, b"");
    write_str(out, value);
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

/// The reference for [`Object::parse`]: serde_json's view of `src` as an object, its
/// members as (key, raw value) pairs. Used by the property test and the `request` fuzz target
/// to check that the scanner accepts exactly what serde_json accepts, with the same spans.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn serde_members(src: &[u8]) -> Option<Vec<(String, String)>> {
    use serde::de::MapAccess;
    use serde_json::value::RawValue;

    struct Members(Vec<(String, String)>);
    impl<'de> Deserialize<'de> for Members {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Members;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                    let mut members = Vec::new();
                    while let Some((BorrowedStr(k), v)) =
                        map.next_entry::<BorrowedStr<'de>, &'de RawValue>()?
                    {
                        members.push((k.into_owned(), v.get().to_owned()));
                    }
                    Ok(Members(members))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Members>(src).ok().map(|m| m.0)
}

/// Checks [`Object::parse`] against [`serde_members`] on `src`; panics on any difference.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn assert_parses_as_serde(src: &[u8]) {
    let ours = Object::parse(src).map(|o| {
        o.members
            .iter()
            .map(|m| (m.key.clone().into_owned(), m.value.to_owned()))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        ours,
        serde_members(src),
        "{:?}",
        String::from_utf8_lossy(src)
    );
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        /// `write_str` writes what serde_json writes, whether it copies or escapes.
        #[test]
        fn write_str_is_serde_json(s in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f/é])*") {
            let mut out = Vec::new();
            super::write_str(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{:?}", s);
        }
    }

    proptest::proptest! {
        /// `same_name` against Go's folding written plainly: every character folded onto
        /// ASCII (the four non-ASCII ones Go folds, ASCII lower-cased), then compared.
        #[test]
        fn same_name_is_go_folding(
            key in proptest::collection::vec(
                proptest::sample::select(vec!['s', 'S', 'k', 'K', 'i', 'I', '_', 'e',
                    '\u{17F}', '\u{212A}', '\u{130}', '\u{131}', '\u{e9}']),
                0..8,
            ),
            name in proptest::sample::select(vec!["", "s", "k", "i", "sk", "is", "ski",
                "kiss", "e_s", "skies", "sssssss", "kkkkkkk", "iiiiiiii"]),
        ) {
            let key: String = key.into_iter().collect();
            let folded: Option<String> = key
                .chars()
                .map(|c| match c {
                    '\u{17F}' => Some('s'),
                    '\u{212A}' => Some('k'),
                    '\u{130}' | '\u{131}' => Some('i'),
                    c if c.is_ascii() => Some(c.to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            proptest::prop_assert_eq!(
                super::same_name(&key, name),
                folded.as_deref() == Some(name),
                "{:?} as {:?}", key, name
            );
            // A member of a parsed object compares as `same_name` does.
            let doc = serde_json::json!({ key.clone(): 0 }).to_string();
            let obj = super::Object::parse(doc.as_bytes()).expect("an object");
            proptest::prop_assert_eq!(
                obj.members[0].names(name),
                super::same_name(&key, name),
                "member {:?} as {:?}", key, name
            );
        }
    }

    use super::*;
    use proptest::prelude::*;

    /// Bytes that matter to a JSON scanner, control and non-ASCII ones included.
    const ALPHABET: &[u8] = b"{}[]\":,\\/ \t\n\r0123456789-+.eEabfnrtux\x00\x1f\x7f";

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
            r#""(\\u[0-9a-fA-F]{4}|\\[nrtbf/"\\]|[a-z é])*""#,
        ];
        let value = leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(" , "))),
                prop::collection::vec(("[a-z\\\\\"]{0,6}", inner), 0..6).prop_map(|m| {
                    let m: Vec<_> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", m.join(","))
                }),
            ]
        });
        prop::collection::vec(("[a-z_]{0,8}", value), 0..8).prop_map(|m| {
            let m: Vec<_> = m.iter().map(|(k, v)| format!(" \"{k}\" :\n{v}")).collect();
            format!(" {{{}}} ", m.join(","))
        })
    }

    /// Valid objects, then the same with a few bytes deleted, inserted or replaced.
    fn json_ish() -> impl Strategy<Value = Vec<u8>> {
        let edit = (
            any::<prop::sample::Index>(),
            0..3u8,
            prop::sample::select(ALPHABET),
        );
        (json_text(), prop::collection::vec(edit, 0..4)).prop_map(|(text, edits)| {
            let mut b = text.into_bytes();
            for (at, op, byte) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 if i < b.len() => {
                        b.remove(i);
                    }
                    1 => b.insert(i, byte),
                    _ if i < b.len() => b[i] = byte,
                    _ => {}
                }
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn scanner_agrees_with_serde_json(src in json_ish()) {
            assert_parses_as_serde(&src);
        }
    }

    #[test]
    fn scanner_agrees_with_serde_json_on_edge_cases() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(300), "]".repeat(300));
        for src in [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":01}"#,
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            r#"{"a":.5}"#,
            r#"{"a":-0.0e+00}"#,
            r#"{"a":7e6576666666,"b":-1e-99999,"c":123456789012345678901234567890}"#,
            r#"{"a":tru}"#,
            r#"{"a":nulll}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12zz"}"#,
            r#"{"a":"\u00e9\uD83D\uDE00"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"\ud800":1}"#,
            r#"{"\ud800\udc00":1}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\t\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{1:2}}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"{"a" "b"}"#,
            r#"{,}"#,
            "{\"a\":1}\u{a0}",
            &deep,
        ] {
            assert_parses_as_serde(src.as_bytes());
        }
        assert_parses_as_serde(b"{\"a\":\"\xff\"}");
    }

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
        assert_eq!(obj.get("b").unwrap(), r#"{"x":[1,2]}"#);
        assert_eq!(obj.get_str("a").unwrap(), "two");
        assert_eq!(span(src, obj.get("b").unwrap()), 18..29);
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
