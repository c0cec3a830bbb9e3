//! Output of the remote commands: text by default, JSON with `--json`. Every gRPC message
//! derives `serde::Serialize` (the proto crate's `serde` feature), so a message is rendered from
//! its own fields, in the message's order: as pretty JSON ([`print_json`]) or as aligned
//! `field: value` lines ([`show`]). Views made for reading (a vault with its usage bar, a policy
//! with its schedule in words) build their own [`Fields`] and print them with [`lines`].
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

/// Fields in display order, printed as `key: value` lines by [`lines`].
pub(crate) type Fields = Vec<(&'static str, Value)>;

/// A message (or any serializable value) as JSON, fields in the message's order.
pub(crate) fn value<T: Serialize>(m: &T) -> Result<Value> {
    Ok(serde_json::to_value(m)?)
}

/// Prints a message as pretty JSON, or as one aligned `field: value` line per field.
pub(crate) fn show<T: Serialize>(m: &T, json: bool) -> Result<()> {
    if json {
        return print_json(m);
    }
    let Value::Object(fields) = value(m)? else {
        bail!("cannot show a value that is not a message");
    };
    print_lines(fields.iter().map(|(k, v)| (k.as_str(), v)));
    Ok(())
}

/// Prints fields as aligned `key: value` lines.
pub(crate) fn lines(f: &Fields) {
    print_lines(f.iter().map(|(k, v)| (*k, v)));
}

fn print_lines<'a>(f: impl Iterator<Item = (&'a str, &'a Value)> + Clone) {
    let w = f.clone().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in f {
        println!("{:<w$} {}", format!("{k}:"), text(v));
    }
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
