//! Every error of a configuration file in one pass, in plain words. The file is parsed once
//! into a spanned document (every syntax error at once, as the parser recovers); then it is
//! deserialized again and again, each time with the entry that was wrong taken out, so that
//! one run reports each unknown key (with the key it most likely meant), each wrong type
//! and each missing key — with its path (`entity[2].stop_timeout`), line and column.

use serde::de::DeserializeOwned;
use toml::de::{DeArray, DeTable, DeValue};

use super::*;

/// At most this many errors are reported (the rest would be noise).
const MAX_ERRORS: usize = 32;

/// Deserializes the whole file, or every error found in it.
pub(super) fn deserialize<T: DeserializeOwned>(ctx: &Ctx) -> Result<T, Vec<ConfigError>> {
    let (doc, syntax) = DeTable::parse_recoverable(ctx.text);
    if !syntax.is_empty() {
        return Err(syntax.into_iter().map(|e| de_error(ctx, e)).collect());
    }
    let mut doc = doc.into_inner();
    let mut index = Index::new();
    index_tables(&doc, &mut index);
    let mut errors = Vec::new();
    while errors.len() < MAX_ERRORS {
        let de = toml::de::Deserializer::from(toml::Spanned::new(0..ctx.text.len(), doc.clone()));
        match T::deserialize(de) {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) => break,
            Err(e) => {
                let span = e.span();
                let removed = span
                    .as_ref()
                    .and_then(|s| take_out(&mut doc, s, "", &index));
                let key = removed
                    .clone()
                    .or_else(|| span.clone().and_then(|s| key_at(ctx.text, s.start)));
                errors.push(ctx.err(span, key, plain(e.message())));
                if removed.is_none() {
                    break; // nothing more can be told apart
                }
            }
        }
    }
    Err(errors)
}

/// Takes out of `table` the entry the error at `span` is about: the innermost key, or the
/// table of an array of tables (a table's span is its header's: a missing key points
/// there). Returns its path.
fn take_out(
    table: &mut DeTable,
    span: &std::ops::Range<usize>,
    prefix: &str,
    index: &Index,
) -> Option<String> {
    let at = span.start;
    let keys: Vec<_> = table.keys().cloned().collect();
    for key in keys {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let here = key.span().contains(&at);
        let value = table.get_mut(AsRef::<str>::as_ref(key.get_ref()))?;
        let on_value = value.span().contains(&at);
        let found = match value.get_mut() {
            DeValue::Table(t) => take_out(t, span, &path, index).map(Some),
            DeValue::Array(a) => take_out_of_array(a, span, &path, index),
            _ => None,
        };
        match found {
            Some(Some(p)) => return Some(p),
            Some(None) => {}
            None if here || on_value => {}
            None => continue,
        }
        table.remove(AsRef::<str>::as_ref(key.get_ref()));
        return Some(path);
    }
    None
}

/// As [`take_out`], within an array: `Some(Some(path))` when taken out inside it (an
/// element table or an entry of one), `Some(None)` when a scalar element holds the error
/// (the whole key is wrong), `None` when the error is not in it.
fn take_out_of_array(
    array: &mut DeArray,
    span: &std::ops::Range<usize>,
    path: &str,
    index: &Index,
) -> Option<Option<String>> {
    let at = span.start;
    let items: &mut [toml::Spanned<DeValue>] = array;
    let mut hit = None;
    for (i, item) in items.iter_mut().enumerate() {
        // Its index in the file, not in what is left of the list.
        let n = index.get(&item.span().start).copied().unwrap_or(i);
        let here = format!("{path}[{n}]");
        let on_item = item.span().contains(&at);
        match item.get_mut() {
            DeValue::Table(t) => {
                if let Some(p) = take_out(t, span, &here, index) {
                    return Some(Some(p));
                }
                if on_item {
                    hit = Some(i);
                    break;
                }
            }
            _ if on_item => return Some(None),
            _ => {}
        }
    }
    let i = hit?;
    let n = index.get(&array[i].span().start).copied().unwrap_or(i);
    let mut kept = DeArray::new();
    for (j, v) in array.iter().enumerate() {
        if j != i {
            kept.push(v.clone());
        }
    }
    *array = kept;
    Some(Some(format!("{path}[{n}]")))
}

/// Where each table of an array of tables starts in the file → its index in its array.
type Index = std::collections::HashMap<usize, usize>;

fn index_tables(table: &DeTable, into: &mut Index) {
    for v in table.values() {
        match v.get_ref() {
            DeValue::Table(t) => index_tables(t, into),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        into.insert(item.span().start, i);
                        index_tables(t, into);
                    }
                }
            }
            _ => {}
        }
    }
}

/// serde's words for types, in an operator's.
fn kind(serde: &str) -> String {
    let s = serde.trim();
    match s {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "a string" => "text in quotes".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list, like [\"a\", \"b\"]".into(),
        "a map" => "a table".into(),
        _ if s.starts_with("struct ") => "a table".into(),
        _ if s.starts_with("integer `") => format!("the number {}", s[9..].trim_end_matches('`')),
        _ if s.starts_with("string ") => format!("the text {}", &s[7..]),
        _ if s.starts_with("boolean `") => s[9..].trim_end_matches('`').to_owned(),
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        _ => s.to_owned(),
    }
}

/// One of serde's messages in plain words, with the key most likely meant for an unknown one.
pub(super) fn plain(msg: &str) -> String {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        if known.is_empty() {
            return format!("unknown key `{name}`; this table takes no keys");
        }
        return match closest(name, &known) {
            Some(k) => format!("unknown key `{name}`; did you mean `{k}`?"),
            None => format!(
                "unknown key `{name}`; the keys here are {}",
                known.join(", ")
            ),
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        return format!("the key `{name}` is required here and missing");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.split_once(", expected ") {
                let mut s = format!("expected {}, found {}", kind(expected), kind(found));
                if expected == "a string" && found.starts_with("integer") {
                    s.push_str(" (a duration is text with a unit, like \"5s\")");
                }
                return s;
            }
        }
    }
    msg.to_owned()
}

/// The key in `known` nearest to `name` (by edit distance, close enough to be a typo).
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (name.len() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of two neighbours as one edit.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_become_plain_words() {
        assert_eq!(
            plain("unknown field `stop_timout`, expected one of `name`, `stop_timeout`"),
            "unknown key `stop_timout`; did you mean `stop_timeout`?"
        );
        assert_eq!(
            plain("unknown field `zzz`, expected one of `name`, `cwd`"),
            "unknown key `zzz`; the keys here are name, cwd"
        );
        assert_eq!(
            plain("invalid type: integer `5`, expected a string"),
            "expected text in quotes, found the number 5 (a duration is text with a unit, like \"5s\")"
        );
        assert_eq!(
            plain("invalid type: string \"x\", expected u32"),
            "expected a whole number of 0 or more, found the text \"x\""
        );
        assert_eq!(
            plain("invalid value: integer `-1`, expected u32"),
            "expected a whole number of 0 or more, found the number -1"
        );
        assert_eq!(
            plain("missing field `name`"),
            "the key `name` is required here and missing"
        );
    }

    #[test]
    fn typos_are_near_and_other_words_are_not() {
        assert_eq!(distance("restrat", "restart"), 1);
        assert_eq!(closest("comand", &["command", "cwd"]), Some("command"));
        assert_eq!(closest("frobnicate", &["command", "cwd"]), None);
    }
}
