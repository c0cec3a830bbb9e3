//! `/v3/{project_id}/backups...`: the Backups API of the seed, as JSON over the control plane's
//! backup calls.
use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::call::{body, Call};
use super::fault::Fault;
use crate::control::{CreateBackup, ListQuery};
use crate::model::{gib_ceil, BackupRow};
use crate::page::PageQuery;

/// Cinder's timestamp: `2023-06-23T11:56:08.691468` (UTC, no zone).
pub fn ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// A string field: null when empty, as Cinder shows unset fields.
pub fn text(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// `self` and `bookmark` links of a resource.
pub fn links(call: &Call, kind: &str, id: &str) -> Value {
    json!([
        {"href": format!("{}/v3/{}/{kind}/{id}", call.base, call.project), "rel": "self"},
        {"href": format!("{}/{}/{kind}/{id}", call.base, call.project), "rel": "bookmark"},
    ])
}

fn summary(call: &Call, b: &BackupRow) -> Map<String, Value> {
    let id = b.id.to_string();
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("links".into(), links(call, "backups", &id));
    m.insert("name".into(), text(&b.name));
    m
}

/// A backup with every field the negotiated version shows.
fn detail(call: &Call, b: &BackupRow, has_dependents: bool) -> Value {
    let mut m = summary(call, b);
    let v = call.version;
    m.insert("status".into(), json!(b.status.as_str()));
    m.insert("object_count".into(), json!(b.object_count));
    m.insert(
        "fail_reason".into(),
        text(b.fail_reason.as_deref().unwrap_or("")),
    );
    m.insert("description".into(), text(&b.description));
    m.insert("availability_zone".into(), text(&b.availability_zone));
    m.insert("created_at".into(), json!(ts(b.created_at)));
    m.insert("updated_at".into(), json!(ts(b.updated_at)));
    m.insert("has_dependent_backups".into(), json!(has_dependents));
    m.insert("volume_id".into(), json!(b.volume_id.to_string()));
    m.insert("container".into(), text(&b.container));
    m.insert("size".into(), json!(gib_ceil(b.size)));
    m.insert("is_incremental".into(), json!(b.is_incremental));
    m.insert(
        "data_timestamp".into(),
        b.data_timestamp.map_or(Value::Null, |t| json!(ts(t))),
    );
    m.insert(
        "snapshot_id".into(),
        b.snapshot_id.map_or(Value::Null, |s| json!(s.to_string())),
    );
    if v.at_least(18) {
        m.insert(
            "os-backup-project-attr:project_id".into(),
            json!(b.project_id),
        );
    }
    if v.at_least(43) {
        m.insert("metadata".into(), json!(b.metadata));
    }
    if v.at_least(56) {
        m.insert("user_id".into(), json!(b.user_id));
    }
    if v.at_least(64) && b.encrypted {
        if let Some(k) = b.encryption_key_id {
            m.insert("encryption_key_id".into(), json!(k.to_string()));
        }
    }
    Value::Object(m)
}

/// `true`, `1`, `yes` (any case) as true.
fn flag(v: Option<&str>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "y"))
}

fn number(field: &str, v: Option<&str>) -> Result<Option<u32>, Fault> {
    v.map(|s| {
        s.parse::<u32>()
            .map_err(|_| Fault::bad_request(format!("{field}: {s:?} is not a whole number")))
    })
    .transpose()
}

/// The list query: sort (`sort`, or the older `sort_key`/`sort_dir`), paging, filters.
fn list_query(call: &Call) -> Result<(ListQuery, bool), Fault> {
    let mut filters = BTreeMap::new();
    let mut sort = call.param("sort").unwrap_or("").to_string();
    if sort.is_empty() {
        if let Some(k) = call.param("sort_key") {
            sort = match call.param("sort_dir") {
                Some(d) => format!("{k}:{d}"),
                None => k.to_string(),
            };
        }
    }
    for (k, v) in &call.params {
        match k.as_str() {
            "sort" | "sort_key" | "sort_dir" | "limit" | "marker" | "offset" | "with_count"
            | "all_tenants" => {}
            _ => {
                filters.insert(k.clone(), v.clone());
            }
        }
    }
    let with_count = call.version.at_least(45) && flag(call.param("with_count"));
    Ok((
        ListQuery {
            sort,
            page: PageQuery {
                limit: number("limit", call.param("limit"))?,
                offset: number("offset", call.param("offset"))?.unwrap_or(0),
                marker: call.param("marker").unwrap_or("").to_string(),
            },
            // As in Cinder, all_tenants from a non-admin is ignored rather than refused (the
            // cinder client sends it when it looks a backup up by name).
            all_tenants: flag(call.param("all_tenants"))
                && call.caller.role == crate::config::Role::Admin,
            filters,
        },
        with_count,
    ))
}

async fn list_as(call: Call, detailed: bool) -> Result<Json<Value>, Fault> {
    let (q, with_count) = list_query(&call)?;
    let page = call.run(move |c, who| c.backups().list(who, &q)).await?;
    let backups: Vec<Value> = page
        .backups
        .iter()
        .map(|b| {
            if detailed {
                detail(&call, b, page.parents.contains(&b.id))
            } else {
                Value::Object(summary(&call, b))
            }
        })
        .collect();
    let mut out = Map::new();
    out.insert("backups".into(), Value::Array(backups));
    if with_count {
        out.insert("count".into(), json!(page.count));
    }
    if let Some(next) = page.next {
        let mut query: Vec<String> = call
            .params
            .iter()
            .filter(|(k, _)| k != "marker")
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        query.push(format!("marker={next}"));
        let path = if detailed {
            "backups/detail"
        } else {
            "backups"
        };
        out.insert(
            "backups_links".into(),
            json!([{
                "href": format!("{}/v3/{}/{path}?{}", call.base, call.project, query.join("&")),
                "rel": "next",
            }]),
        );
    }
    Ok(Json(Value::Object(out)))
}

/// Percent-encodes a query component.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /backups`.
pub async fn list(call: Call) -> Result<Json<Value>, Fault> {
    list_as(call, false).await
}

/// `GET /backups/detail`.
pub async fn list_detail(call: Call) -> Result<Json<Value>, Fault> {
    list_as(call, true).await
}

/// `GET /backups/{backup_id}`.
pub async fn show(call: Call, Path((_, id)): Path<(String, String)>) -> Result<Json<Value>, Fault> {
    let (b, dep) = call.run(move |c, who| c.backups().get(who, &id)).await?;
    Ok(Json(json!({ "backup": detail(&call, &b, dep) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    backup: CreateFields,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CreateFields {
    volume_id: Option<String>,
    container: Option<String>,
    name: Option<String>,
    description: Option<String>,
    incremental: Option<bool>,
    force: Option<bool>,
    snapshot_id: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    availability_zone: Option<String>,
}

/// `POST /backups`: 202 with the new backup's id, links and name.
pub async fn create(call: Call, raw: Bytes) -> Result<Response, Fault> {
    let b: CreateBody = body(&raw)?;
    let f = b.backup;
    let Some(volume_id) = f.volume_id else {
        return Err(Fault::bad_request("volume_id: required"));
    };
    if f.metadata.is_some() && !call.version.at_least(43) {
        return Err(Fault::bad_request(
            "metadata: needs microversion 3.43 or later",
        ));
    }
    let req = CreateBackup {
        volume_id,
        name: f.name.unwrap_or_default(),
        description: f.description.unwrap_or_default(),
        container: f.container.unwrap_or_default(),
        incremental: f.incremental.unwrap_or(false),
        force: f.force.unwrap_or(false),
        metadata: f.metadata.unwrap_or_default(),
        availability_zone: f.availability_zone.unwrap_or_default(),
        snapshot_id: f.snapshot_id.unwrap_or_default(),
        at: None,
        ..Default::default()
    };
    let (b, _job) = call.run(move |c, who| c.backups().create(who, req)).await?;
    let mut m = summary(&call, &b);
    if call.version.at_least(43) {
        m.insert("metadata".into(), json!(b.metadata));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "backup": m }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    backup: UpdateFields,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct UpdateFields {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

/// `PUT /backups/{backup_id}` (3.9 and later).
pub async fn update(
    call: Call,
    Path((_, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<Value>, Fault> {
    if !call.version.at_least(9) {
        return Err(Fault::new(
            StatusCode::NOT_FOUND,
            "updating a backup needs microversion 3.9 or later",
        ));
    }
    let u: UpdateBody = body(&raw)?;
    let f = u.backup;
    if f.metadata.is_some() && !call.version.at_least(43) {
        return Err(Fault::bad_request(
            "metadata: needs microversion 3.43 or later",
        ));
    }
    let (b, _) = call
        .run(move |c, who| {
            c.backups().update(
                who,
                &id,
                f.name.as_deref(),
                f.description.as_deref(),
                f.metadata,
            )
        })
        .await?;
    let mut m = summary(&call, &b);
    if call.version.at_least(43) {
        m.insert("metadata".into(), json!(b.metadata));
    }
    Ok(Json(json!({ "backup": m })))
}

/// `DELETE /backups/{backup_id}`: 202.
pub async fn delete(
    call: Call,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Fault> {
    call.run(move |c, who| c.backups().delete(who, &id)).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    restore: RestoreFields,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RestoreFields {
    volume_id: Option<String>,
    name: Option<String>,
}

/// `POST /backups/{backup_id}/restore`: 202 with the target volume.
pub async fn restore(
    call: Call,
    Path((_, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, Fault> {
    let r: RestoreBody = body(&raw)?;
    let volume = r.restore.volume_id.unwrap_or_default();
    let name = r.restore.name.unwrap_or_default();
    let (backup, vol, _job) = call
        .run(move |c, who| c.backups().restore(who, &id, &volume, &name))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"restore": {
            "backup_id": backup.to_string(),
            "volume_id": vol.id.to_string(),
            "volume_name": vol.name,
        }})),
    )
        .into_response())
}

/// `GET /backups/{backup_id}/export_record`.
pub async fn export_record(
    call: Call,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>, Fault> {
    let (service, url) = call
        .run(move |c, who| crate::export::export(c, who, &id))
        .await?;
    Ok(Json(
        json!({"backup-record": {"backup_service": service, "backup_url": url}}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    #[serde(rename = "backup-record")]
    record: ImportFields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportFields {
    backup_service: String,
    backup_url: String,
}

/// `POST /backups/import_record`: 201 with the imported backup's id, links and name.
pub async fn import_record(call: Call, raw: Bytes) -> Result<Response, Fault> {
    let i: ImportBody = body(&raw)?;
    let b = call
        .run(move |c, who| {
            crate::export::import(c, who, &i.record.backup_service, &i.record.backup_url)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "backup": summary(&call, &b) })),
    )
        .into_response())
}

/// `POST /backups/{backup_id}/action`: `os-reset_status` and `os-force_delete` (admins).
pub async fn action(
    call: Call,
    Path((_, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<StatusCode, Fault> {
    let v: Map<String, Value> = body(&raw)?;
    let mut actions = v.into_iter();
    let (Some((name, args)), None) = (actions.next(), actions.next()) else {
        return Err(Fault::bad_request("action: exactly one action is expected"));
    };
    match name.as_str() {
        "os-reset_status" => {
            let status = args
                .get("status")
                .and_then(Value::as_str)
                .ok_or_else(|| Fault::bad_request("os-reset_status.status: required"))?
                .to_string();
            call.run(move |c, who| c.backups().reset_status(who, &id, &status))
                .await?;
        }
        "os-force_delete" => {
            call.run(move |c, who| c.backups().force_delete(who, &id))
                .await?;
        }
        other => {
            return Err(Fault::bad_request(format!(
                "action: {other:?} is not one of os-reset_status, os-force_delete"
            )))
        }
    }
    Ok(StatusCode::ACCEPTED)
}
