//! Rules on single fields of a request, shared by every resource: ids, names, lengths,
//! metadata, tags, paths. Each refusal names the field.
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest name or description (characters).
pub const MAX_NAME: usize = 255;
/// Most metadata entries on a backup.
pub const MAX_METADATA: usize = 64;
/// Longest metadata key or value (characters).
pub const MAX_METADATA_ITEM: usize = 255;

/// Parses a UUID argument.
pub fn parse_uuid(field: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s.trim())
        .map_err(|_| Error::invalid_argument(format!("{field}: {s:?} is not a UUID")))
}

/// Refuses a name or description longer than [`MAX_NAME`] characters.
pub fn check_len(field: &str, s: &str) -> Result<()> {
    max_chars(field, s, MAX_NAME)
}

/// Checks a backup's metadata: entry count and key and value lengths.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<()> {
    if m.len() > MAX_METADATA {
        return Err(Error::invalid_argument(format!(
            "metadata: {} entries; at most {MAX_METADATA} are allowed",
            m.len()
        )));
    }
    for (k, v) in m {
        let kn = k.chars().count();
        if kn == 0 || kn > MAX_METADATA_ITEM {
            return Err(Error::invalid_argument(format!(
                "metadata: keys must have 1 to {MAX_METADATA_ITEM} characters ({kn} given)"
            )));
        }
        if v.chars().count() > MAX_METADATA_ITEM {
            return Err(Error::invalid_argument(format!(
                "metadata: the value of {k:?} is longer than {MAX_METADATA_ITEM} characters"
            )));
        }
    }
    Ok(())
}

/// Checks a volume path's bytes (not yet where it leads: see `hostpath.rs`).
pub fn check_path(path: &[u8]) -> Result<&Path> {
    if path.is_empty() {
        return Err(Error::invalid_argument("path: empty"));
    }
    if path.contains(&0) {
        return Err(Error::invalid_argument("path: contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(Error::invalid_argument("path: longer than 4096 bytes"));
    }
    Ok(Path::new(OsStr::from_bytes(path)))
}

/// Refuses a value outside `allowed`.
pub fn one_of(field: &str, v: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{v:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// Refuses characters other than `[A-Za-z0-9_-]` and `extra`.
pub fn charset(field: &str, s: &str, extra: &[char]) -> Result<()> {
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || extra.contains(c)))
    {
        None => Ok(()),
        Some(c) => Err(Error::invalid(
            field,
            format!("character {c:?} is not allowed in {s:?}"),
        )),
    }
}

/// Refuses more than `max` characters.
pub fn max_chars(field: &str, s: &str, max: usize) -> Result<()> {
    let n = s.chars().count();
    if n > max {
        return Err(Error::invalid(
            field,
            format!("{n} characters; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// Checks and normalises tags: at most 10, keys 1..=36 of `[A-Za-z0-9_-]`, values 0..=43 of
/// `[A-Za-z0-9_.-]`, both trimmed, keys unique.
pub fn check_tags(field: &str, tags: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
    if tags.len() > 10 {
        return Err(Error::invalid(
            field,
            format!("{} tags; at most 10 are allowed", tags.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(tags.len());
    for (i, (k, v)) in tags.into_iter().enumerate() {
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        let kf = format!("{field}[{i}].key");
        if k.is_empty() {
            return Err(Error::invalid(&kf, "empty"));
        }
        max_chars(&kf, &k, 36)?;
        charset(&kf, &k, &[])?;
        let vf = format!("{field}[{i}].value");
        max_chars(&vf, &v, 43)?;
        charset(&vf, &v, &['.'])?;
        if !seen.insert(k.clone()) {
            return Err(Error::invalid(&kf, format!("duplicate key {k:?}")));
        }
        out.push((k, v));
    }
    Ok(out)
}
