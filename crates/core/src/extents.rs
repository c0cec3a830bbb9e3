//! Changed extents: the byte ranges of a volume that a changed-block-tracking source reports as
//! written since the volume's parent backup. A CBT incremental reads only these (widened to the
//! parent's chunk boundaries) and takes the rest from the parent's manifest.
//!
//! Three JSON forms are accepted, told apart by their keys:
//! - a plain list: `[{"offset": N, "length": N}, ...]`;
//! - `rbd diff --format json`: `[{"offset": N, "length": N, "exists": "true"}, ...]`, where
//!   `exists` is `"true"`/`"false"` (or a JSON bool). An extent that no longer exists was
//!   discarded and now reads as zeros, so it changed too;
//! - `nbdinfo --map --json` of a `qemu:dirty-bitmap:NAME` context:
//!   `[{"offset": N, "length": N, "type": T, "description": "dirty"}, ...]`, which covers the
//!   whole disk. Bit 0 of `type` is `NBD_STATE_DIRTY`; clean extents are dropped.
//!
//! The input comes from a tenant, so nothing in it is trusted. Every entry must have integer
//! `offset` and `length` fields. Its length must be positive, and its end must neither overflow
//! nor pass the volume's size. The forms must not be mixed, and no key may be unknown. Each error
//! names the entry it is about. The result is sorted, and overlapping or touching extents are
//! merged.
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The field that errors name.
const FIELD: &str = "changed_extents";

/// At most this many entries are read. A dirty bitmap of a 1 TiB disk at 64 KiB granularity
/// has 16 Mi bits, but its map alternates clean and dirty runs and so has far fewer entries.
pub const MAX_ENTRIES: usize = 1 << 22;

/// A byte range of the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Which tool's output the extents came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentSource {
    /// `[{"offset", "length"}]`.
    Plain,
    /// `rbd diff --format json`.
    RbdDiff,
    /// `nbdinfo --map --json` of a dirty bitmap.
    NbdDirtyMap,
}

/// The changed extents of a volume, sorted and merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedExtents {
    source: ExtentSource,
    extents: Vec<Extent>,
}

impl ExtentSource {
    /// The form's name as recorded ([`crate::CbtStats::source`]).
    pub fn name(&self) -> &'static str {
        match self {
            ExtentSource::Plain => "plain",
            ExtentSource::RbdDiff => "rbd-diff",
            ExtentSource::NbdDirtyMap => "nbd-dirty-map",
        }
    }
}

impl ChangedExtents {
    /// Parses `json` (any of the three forms) for a volume of `volume_size` bytes.
    pub fn parse(json: &[u8], volume_size: u64) -> Result<ChangedExtents> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| Error::invalid(FIELD, format!("not JSON: {e}")))?;
        let Value::Array(entries) = value else {
            return Err(Error::invalid(FIELD, "must be a JSON array of extents"));
        };
        if entries.len() > MAX_ENTRIES {
            return Err(Error::invalid(
                FIELD,
                format!("{} entries, at most {MAX_ENTRIES}", entries.len()),
            ));
        }
        let mut source = None;
        let mut extents = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let bad = |reason: String| Error::invalid(FIELD, format!("entry {i}: {reason}"));
            let Value::Object(obj) = entry else {
                return Err(bad("must be an object".into()));
            };
            let form = form_of(obj);
            match source {
                None => source = Some(form),
                Some(s) if s != form => {
                    return Err(bad(format!(
                        "is {form:?} output, the entries before are {s:?}: forms cannot be mixed"
                    )))
                }
                Some(_) => {}
            }
            let allowed: &[&str] = match form {
                ExtentSource::Plain => &["offset", "length"],
                ExtentSource::RbdDiff => &["offset", "length", "exists"],
                ExtentSource::NbdDirtyMap => &["offset", "length", "type", "description"],
            };
            if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(bad(format!("unknown key {k:?}")));
            }
            let offset = integer(obj, "offset").map_err(&bad)?;
            let length = integer(obj, "length").map_err(&bad)?;
            if length == 0 {
                return Err(bad("length must be positive".into()));
            }
            let end = offset
                .checked_add(length)
                .ok_or_else(|| bad("offset + length overflows".into()))?;
            if end > volume_size {
                return Err(bad(format!(
                    "ends at byte {end}, past the volume's size of {volume_size} bytes"
                )));
            }
            let changed = match form {
                ExtentSource::Plain => true,
                ExtentSource::RbdDiff => {
                    exists(obj).map_err(&bad)?;
                    true
                }
                ExtentSource::NbdDirtyMap => {
                    if let Some(d) = obj.get("description") {
                        if !d.is_string() {
                            return Err(bad("description must be a string".into()));
                        }
                    }
                    integer(obj, "type").map_err(&bad)? & 1 == 1
                }
            };
            if changed {
                extents.push(Extent { offset, length });
            }
        }
        extents.sort_by_key(|e| e.offset);
        let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
        for e in extents {
            match merged.last_mut() {
                Some(last) if e.offset <= last.end() => {
                    last.length = last.end().max(e.end()) - last.offset;
                }
                _ => merged.push(e),
            }
        }
        Ok(ChangedExtents {
            source: source.unwrap_or(ExtentSource::Plain),
            extents: merged,
        })
    }

    /// Which form the input had (`Plain` for an empty list).
    pub fn source(&self) -> ExtentSource {
        self.source
    }

    /// The changed extents, sorted by offset, disjoint and not touching.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Bytes the extents cover.
    pub fn changed_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.length).sum()
    }
}

fn form_of(obj: &Map<String, Value>) -> ExtentSource {
    if obj.contains_key("type") || obj.contains_key("description") {
        ExtentSource::NbdDirtyMap
    } else if obj.contains_key("exists") {
        ExtentSource::RbdDiff
    } else {
        ExtentSource::Plain
    }
}

/// A required non-negative integer field.
fn integer(obj: &Map<String, Value>, key: &str) -> std::result::Result<u64, String> {
    match obj.get(key) {
        None => Err(format!("{key} is missing")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("{key} must be a non-negative integer, not {v}")),
    }
}

/// rbd's `exists`: `"true"`, `"false"` or a bool.
fn exists(obj: &Map<String, Value>) -> std::result::Result<bool, String> {
    match obj.get("exists") {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(v) => Err(format!("exists must be \"true\" or \"false\", not {v}")),
        None => Err("exists is missing".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn parse(s: &str) -> Result<ChangedExtents> {
        ChangedExtents::parse(s.as_bytes(), 64 * MIB)
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    fn ext(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter()
            .map(|&(offset, length)| Extent { offset, length })
            .collect()
    }

    #[test]
    fn a_plain_list_is_sorted_and_merged() {
        let c = parse(
            r#"[{"offset": 8388608, "length": 4096}, {"offset": 0, "length": 65536},
                {"offset": 65536, "length": 4096}, {"offset": 8390000, "length": 100000}]"#,
        )
        .unwrap();
        assert_eq!(c.source(), ExtentSource::Plain);
        assert_eq!(
            c.extents(),
            ext(&[(0, 69632), (8388608, 8390000 + 100000 - 8388608)])
        );
        assert_eq!(c.changed_bytes(), 69632 + 101392);
        let empty = parse("[]").unwrap();
        assert!(empty.extents().is_empty());
        assert_eq!(empty.changed_bytes(), 0);
    }

    #[test]
    fn rbd_diff_output_keeps_discarded_extents() {
        // As `rbd diff --format json POOL/IMAGE@SNAP --from-snap PARENT` prints it.
        let c = parse(
            r#"[{"offset":0,"length":4194304,"exists":"true"},
                {"offset":12582912,"length":4194304,"exists":"false"},
                {"offset":20971520,"length":1048576,"exists":true}]"#,
        )
        .unwrap();
        assert_eq!(c.source(), ExtentSource::RbdDiff);
        assert_eq!(
            c.extents(),
            ext(&[(0, 4194304), (12582912, 4194304), (20971520, 1048576)])
        );
        assert!(err(r#"[{"offset":0,"length":1,"exists":"yes"}]"#).contains("exists"));
    }

    #[test]
    fn an_nbdinfo_dirty_bitmap_map_keeps_dirty_extents() {
        // As `nbdinfo --map=qemu:dirty-bitmap:b0 --json URI` prints it.
        let c = parse(
            r#"[
{ "offset": 0, "length": 1048576, "type": 0, "description": "clean" },
{ "offset": 1048576, "length": 65536, "type": 1, "description": "dirty" },
{ "offset": 1114112, "length": 2031616, "type": 0, "description": "clean" },
{ "offset": 3145728, "length": 131072, "type": 1, "description": "dirty" },
{ "offset": 3276800, "length": 63832064, "type": 0, "description": "clean" }
]"#,
        )
        .unwrap();
        assert_eq!(c.source(), ExtentSource::NbdDirtyMap);
        assert_eq!(c.extents(), ext(&[(1048576, 65536), (3145728, 131072)]));
    }

    #[test]
    fn bad_entries_are_refused_by_entry_and_field() {
        let cases = [
            ("{}", "JSON array"),
            ("[1]", "entry 0: must be an object"),
            (r#"[{"offset": 0}]"#, "entry 0: length is missing"),
            (
                r#"[{"offset": 0, "length": 1}, {"offset": -1, "length": 1}]"#,
                "entry 1: offset must be a non-negative integer",
            ),
            (r#"[{"offset": 0.5, "length": 1}]"#, "offset must be"),
            (r#"[{"offset": "0", "length": 1}]"#, "offset must be"),
            (r#"[{"offset": 0, "length": 0}]"#, "length must be positive"),
            (
                r#"[{"offset": 18446744073709551615, "length": 2}]"#,
                "overflows",
            ),
            (
                r#"[{"offset": 67108864, "length": 1}]"#,
                "past the volume's size",
            ),
            (r#"[{"offset": 0, "lenght": 1}]"#, "unknown key \"lenght\""),
            (
                r#"[{"offset": 0, "length": 1}, {"offset": 1, "length": 1, "exists": "true"}]"#,
                "entry 1: is RbdDiff output",
            ),
            (
                r#"[{"offset": 0, "length": 1, "type": "dirty"}]"#,
                "type must be",
            ),
            (
                r#"[{"offset": 0, "length": 1, "type": 1, "description": 5}]"#,
                "description must be a string",
            ),
            ("[{", "not JSON"),
        ];
        for (input, want) in cases {
            let e = err(input);
            assert!(e.starts_with("invalid changed_extents: "), "{input}: {e}");
            assert!(e.contains(want), "{input}: {e} lacks {want:?}");
        }
    }

    #[test]
    fn an_extent_may_end_exactly_at_the_volume_end() {
        let c = parse(r#"[{"offset": 67104768, "length": 4096}]"#).unwrap();
        assert_eq!(c.extents()[0].end(), 64 * MIB);
    }
}
