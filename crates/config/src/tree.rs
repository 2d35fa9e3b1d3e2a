//! Walking an untyped YAML tree with key paths: the readers every section is built from.
//!
//! Each reader takes `(value, path, problems)` and returns `None` after recording why the value is
//! unusable, so a section can read all of its keys before giving up and every problem is reported.

use std::collections::HashMap;
use std::hash::Hash;

use serde_yaml_ng::{Mapping, Value};

use crate::error::Problems;

/// Path of `key` inside the mapping at `parent` (`pool` + `size` -> `pool.size`).
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Path of item `index` of the list at `parent` (`users` + 1 -> `users[1]`).
pub(crate) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// What a value is, for "expected X, got Y" messages. Shows scalars so the user can find them.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        other => describe_kind(other).to_owned(),
    }
}

/// Like [`describe`] but never shows the value: for secrets, which must not reach logs.
pub(crate) fn describe_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value (YAML tags are not supported)",
    }
}

/// A mapping being read. It remembers which keys the schema asked for, so [`Table::finish`] can
/// report every other key as unknown and list the expected ones without a second key list to
/// keep in sync.
#[derive(Debug)]
pub(crate) struct Table<'a> {
    path: String,
    map: &'a Mapping,
    asked: Vec<&'static str>,
}

impl<'a> Table<'a> {
    pub(crate) fn open(value: &'a Value, path: &str, problems: &mut Problems) -> Option<Self> {
        match value {
            Value::Mapping(map) => Some(Self {
                path: path.to_owned(),
                map,
                asked: Vec::new(),
            }),
            other => {
                problems.push(path, format!("expected a mapping, got {}", describe(other)));
                None
            }
        }
    }

    /// The value under `key` and its path. An explicit null counts as absent, so a section
    /// whose entries are all commented out (`pool:`) behaves like a missing one.
    fn lookup(&mut self, key: &'static str) -> (Option<&'a Value>, String) {
        self.asked.push(key);
        let value = self.map.get(key).filter(|v| !v.is_null());
        (value, key_path(&self.path, key))
    }

    /// Reads an optional key. `None`: present but invalid; `Some(None)`: absent.
    pub(crate) fn optional<T>(
        &mut self,
        key: &'static str,
        problems: &mut Problems,
        read: impl FnOnce(&'a Value, &str, &mut Problems) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.lookup(key) {
            (Some(value), path) => read(value, &path, problems).map(Some),
            (None, _) => Some(None),
        }
    }

    /// Reads an optional key, substituting `default` when it is absent.
    pub(crate) fn or_default<T>(
        &mut self,
        key: &'static str,
        default: T,
        problems: &mut Problems,
        read: impl FnOnce(&'a Value, &str, &mut Problems) -> Option<T>,
    ) -> Option<T> {
        self.optional(key, problems, read)
            .map(|found| found.unwrap_or(default))
    }

    /// Reads a key that must be present.
    pub(crate) fn required<T>(
        &mut self,
        key: &'static str,
        problems: &mut Problems,
        read: impl FnOnce(&'a Value, &str, &mut Problems) -> Option<T>,
    ) -> Option<T> {
        match self.lookup(key) {
            (Some(value), path) => read(value, &path, problems),
            (None, path) => {
                let message = if self.map.contains_key(key) {
                    format!("required key {key:?} has no value")
                } else {
                    format!("missing required key {key:?}")
                };
                problems.push(&path, message);
                None
            }
        }
    }

    /// Reports every key the schema did not ask for. Call after all keys were read.
    pub(crate) fn finish(self, problems: &mut Problems) {
        for key in self.map.keys() {
            match key {
                Value::String(name) if self.asked.contains(&name.as_str()) => {}
                Value::String(name) => problems.push(
                    &key_path(&self.path, name),
                    format!(
                        "unknown key {name:?} (expected one of: {})",
                        self.asked.join(", ")
                    ),
                ),
                other => problems.push(
                    &self.path,
                    format!("keys must be strings, got {}", describe(other)),
                ),
            }
        }
    }
}

/// Reads a list, giving each item its indexed path. `None` if the value is not a list or any
/// item was invalid; every item is still read so all of their problems are reported.
pub(crate) fn list<'a, T>(
    value: &'a Value,
    path: &str,
    problems: &mut Problems,
    mut read_item: impl FnMut(&'a Value, &str, &mut Problems) -> Option<T>,
) -> Option<Vec<T>> {
    let Value::Sequence(items) = value else {
        problems.push(path, format!("expected a list, got {}", describe(value)));
        return None;
    };
    let mut out = Some(Vec::with_capacity(items.len()));
    for (index, item) in items.iter().enumerate() {
        let read = read_item(item, &index_path(path, index), problems);
        match (out.as_mut(), read) {
            (Some(out), Some(read)) => out.push(read),
            _ => out = None,
        }
    }
    out
}

/// A string; NUL is rejected because every string here ends up in a C string somewhere
/// (the PostgreSQL startup packet, a file path).
pub(crate) fn string(value: &Value, path: &str, problems: &mut Problems) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => {
            problems.push(path, "must not contain NUL characters");
            None
        }
        Value::String(s) => Some(s.clone()),
        other => {
            problems.push(path, format!("expected a string, got {}", describe(other)));
            None
        }
    }
}

/// A string that must not be empty.
pub(crate) fn non_empty_string(
    value: &Value,
    path: &str,
    problems: &mut Problems,
) -> Option<String> {
    let s = string(value, path, problems)?;
    if s.is_empty() {
        problems.push(path, "must not be empty");
        return None;
    }
    Some(s)
}

/// A secret string: like [`string`], but problems never quote the value.
pub(crate) fn secret_string(value: &Value, path: &str, problems: &mut Problems) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => {
            problems.push(path, "must not contain NUL characters");
            None
        }
        Value::String(s) => Some(s.clone()),
        other => {
            problems.push(
                path,
                format!(
                    "expected a string, got {} (put it in quotes)",
                    describe_kind(other)
                ),
            );
            None
        }
    }
}

/// `true` or `false`.
pub(crate) fn boolean(value: &Value, path: &str, problems: &mut Problems) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        other => {
            problems.push(
                path,
                format!("expected true or false, got {}", describe(other)),
            );
            None
        }
    }
}

/// An integer in `min..=max`.
pub(crate) fn integer(
    value: &Value,
    path: &str,
    min: u64,
    max: u64,
    problems: &mut Problems,
) -> Option<u64> {
    let Value::Number(n) = value else {
        problems.push(
            path,
            format!("expected an integer, got {}", describe(value)),
        );
        return None;
    };
    match (n.as_u64(), n.as_i64()) {
        (Some(v), _) if v < min => problems.push(path, format!("must be at least {min}")),
        (Some(v), _) if v > max => problems.push(path, format!("must be at most {max}")),
        (Some(v), _) => return Some(v),
        (None, Some(_)) => problems.push(path, format!("must be at least {min}")),
        (None, None) => problems.push(path, format!("expected an integer, got {n}")),
    }
    None
}

/// One of a fixed set of words, e.g. `transaction | session`.
pub(crate) fn choice<T: Copy>(
    value: &Value,
    path: &str,
    what: &str,
    options: &[(&str, T)],
    problems: &mut Problems,
) -> Option<T> {
    let expected = || {
        options
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Value::String(word) = value else {
        problems.push(
            path,
            format!("expected one of: {}, got {}", expected(), describe(value)),
        );
        return None;
    };
    let found = options.iter().find(|(name, _)| name == word);
    if found.is_none() {
        problems.push(
            path,
            format!("unknown {what} {word:?} (expected one of: {})", expected()),
        );
    }
    found.map(|(_, v)| *v)
}

/// Remembers where each name or address was first seen, to report duplicates with both places.
#[derive(Debug)]
pub(crate) struct Seen<K> {
    what: &'static str,
    first: HashMap<K, String>,
}

impl<K: Eq + Hash + std::fmt::Display> Seen<K> {
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            first: HashMap::new(),
        }
    }

    /// Records `key` at `path`; `false` (with a problem recorded) if it was seen before.
    pub(crate) fn insert(&mut self, key: K, path: &str, problems: &mut Problems) -> bool {
        if let Some(first) = self.first.get(&key) {
            problems.push(
                path,
                format!("duplicate {} \"{key}\" (also at {first})", self.what),
            );
            return false;
        }
        self.first.insert(key, path.to_owned());
        true
    }
}
