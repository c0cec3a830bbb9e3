//! Paging of List answers, as Cinder pages backups: `marker` (keyset: start after this id),
//! `offset`, `limit`, and at most [`MAX_PAGE`] rows per answer whatever the caller asks (Cinder's
//! `osapi_max_limit`), so no answer grows with the number of rows a project holds.
use std::ops::Range;

use uuid::Uuid;

use crate::error::{Error, Result};

/// The most rows one List answer holds.
pub const MAX_PAGE: usize = 1000;

/// What a List call asks for.
#[derive(Clone, Debug, Default)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub offset: u32,
    pub marker: String,
}

/// The window of `rows` (already filtered and sorted) that `q` selects, and the marker of the
/// next page when rows remain after it.
pub fn window<T>(
    rows: &[T],
    id: impl Fn(&T) -> Uuid,
    q: &PageQuery,
    what: &str,
) -> Result<(Range<usize>, Option<Uuid>), Error> {
    let mut start = 0usize;
    if !q.marker.is_empty() {
        let m = Uuid::parse_str(q.marker.trim()).map_err(|_| {
            Error::invalid_argument(format!("marker: {:?} is not a UUID", q.marker))
        })?;
        start = rows.iter().position(|r| id(r) == m).ok_or_else(|| {
            Error::invalid_argument(format!("marker: {m} is not among the listed {what}"))
        })? + 1;
    }
    let start = start.saturating_add(q.offset as usize).min(rows.len());
    let limit = q.limit.map_or(MAX_PAGE, |l| (l as usize).min(MAX_PAGE));
    let end = start.saturating_add(limit).min(rows.len());
    let next = (end < rows.len() && end > start).then(|| id(&rows[end - 1]));
    Ok((start..end, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_markers_to_the_end() {
        let ids: Vec<Uuid> = (0..2500u128).map(Uuid::from_u128).collect();
        let mut q = PageQuery::default();
        let mut seen = Vec::new();
        loop {
            let (r, next) = window(&ids, |u| *u, &q, "rows").unwrap();
            assert!(r.len() <= MAX_PAGE);
            seen.extend_from_slice(&ids[r]);
            match next {
                Some(m) => q.marker = m.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, ids);
        q = PageQuery {
            limit: Some(u32::MAX),
            offset: u32::MAX,
            marker: String::new(),
        };
        let (r, next) = window(&ids, |u| *u, &q, "rows").unwrap();
        assert!(r.is_empty() && next.is_none());
        q.marker = "nope".into();
        assert!(window(&ids, |u| *u, &q, "rows")
            .unwrap_err()
            .message()
            .starts_with("marker"));
    }
}
