//! Output of the remote commands: text by default, JSON with `--json`. prost messages do not
//! implement `Serialize`, so each message type has one function listing its fields in order
//! ([`Fields`]), and both renderings are made from that list here.
use std::collections::HashMap;

use anyhow::Result;
use blockvault_proto::v1::Tag;
use serde_json::{json, Value};

/// A message's fields in display order; rendered as a JSON object or as `key: value` lines.
pub(crate) type Fields = Vec<(&'static str, Value)>;

/// The fields as a JSON object.
pub(crate) fn obj(f: Fields) -> Value {
    Value::Object(f.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A map as a JSON object.
pub(crate) fn map_json(m: &HashMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Tags as JSON, as in the message: `[{"key": k, "value": v}, ...]`.
pub(crate) fn tags_json(t: &[Tag]) -> Value {
    Value::Array(
        t.iter()
            .map(|t| json!({ "key": t.key, "value": t.value }))
            .collect(),
    )
}

/// A JSON value as text: strings bare, null, "", [] and {} as `-`, objects as `k=v, ...`,
/// arrays as their items' texts joined by `, ` (a `{"key", "value"}` item as `key=value`).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(
                |i| match (i.get("key").and_then(Value::as_str), i.get("value")) {
                    (Some(k), Some(v)) if i.as_object().is_some_and(|m| m.len() == 2) => {
                        format!(
                            "{k}={}",
                            v.as_str().map_or_else(|| v.to_string(), Into::into)
                        )
                    }
                    _ => text(i),
                },
            )
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), Into::into)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        v => v.to_string(),
    }
}

/// Prints fields as JSON or as aligned `key: value` lines.
pub(crate) fn show(f: Fields, json: bool) -> Result<()> {
    if json {
        return print_json(&obj(f));
    }
    let w = f.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in &f {
        println!("{:<w$} {}", format!("{k}:"), text(v));
    }
    Ok(())
}

/// An optional string as JSON (null when unset).
pub(crate) fn opt(s: &Option<String>) -> Value {
    s.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

/// Column text: `-` for empty, cut to `w` characters.
pub(crate) fn cell(s: &str, w: usize) -> String {
    if s.is_empty() {
        "-".into()
    } else if s.chars().count() > w {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('~');
        t
    } else {
        s.to_string()
    }
}

/// Prints a value as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Bytes in binary units (`1.5 MiB`).
pub(crate) fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
