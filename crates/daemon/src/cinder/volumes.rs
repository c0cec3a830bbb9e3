//! `/v3/{project_id}/volumes...`: the volume calls the `cinder` client makes to find and show
//! a volume, over the daemon's registered volumes (read only: volumes are registered over gRPC
//! or the CLI).
use axum::extract::Path;
use axum::Json;
use serde_json::{json, Map, Value};

use super::backups::{links, text, ts};
use super::call::Call;
use super::fault::Fault;
use crate::model::{gib_ceil, VolumeRow};
use crate::page::{PageQuery, MAX_PAGE};

fn summary(call: &Call, v: &VolumeRow) -> Map<String, Value> {
    let id = v.id.to_string();
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("links".into(), links(call, "volumes", &id));
    m.insert("name".into(), text(&v.name));
    m
}

fn detail(call: &Call, v: &VolumeRow) -> Value {
    let mut m = summary(call, v);
    m.insert("status".into(), json!(v.status.as_str()));
    m.insert("size".into(), json!(gib_ceil(v.size)));
    m.insert("availability_zone".into(), json!("nova"));
    m.insert("created_at".into(), json!(ts(v.created_at)));
    m.insert("updated_at".into(), json!(ts(v.updated_at)));
    m.insert("description".into(), Value::Null);
    m.insert("volume_type".into(), Value::Null);
    m.insert("snapshot_id".into(), Value::Null);
    m.insert("source_volid".into(), Value::Null);
    m.insert("attachments".into(), json!([]));
    m.insert("bootable".into(), json!("false"));
    m.insert("encrypted".into(), json!(v.encrypted));
    m.insert("multiattach".into(), json!(false));
    m.insert("replication_status".into(), Value::Null);
    m.insert("consistencygroup_id".into(), Value::Null);
    m.insert("user_id".into(), json!(v.user_id));
    m.insert("os-vol-tenant-attr:tenant_id".into(), json!(v.project_id));
    let meta: Map<String, Value> = v
        .tags
        .iter()
        .map(|(k, val)| (k.clone(), json!(val)))
        .collect();
    m.insert("metadata".into(), Value::Object(meta));
    if call.version.at_least(64) && v.encrypted {
        if let Some(k) = v.encryption_key_id {
            m.insert("encryption_key_id".into(), json!(k.to_string()));
        }
    }
    Value::Object(m)
}

async fn list_as(call: Call, detailed: bool) -> Result<Json<Value>, Fault> {
    let all = call.caller.role == crate::config::Role::Admin
        && call
            .param("all_tenants")
            .is_some_and(|v| matches!(v, "1" | "true" | "True"));
    let name = call.param("name").map(str::to_string);
    let page = PageQuery {
        limit: call
            .param("limit")
            .map(|l| {
                l.parse::<u32>()
                    .map_err(|_| Fault::bad_request(format!("limit: {l:?} is not a whole number")))
            })
            .transpose()?
            .or(Some(MAX_PAGE as u32)),
        offset: 0,
        marker: call.param("marker").unwrap_or("").to_string(),
    };
    let (rows, _next) = call
        .run(move |c, who| c.volumes().list(who, all, &page))
        .await?;
    let volumes: Vec<Value> = rows
        .iter()
        .filter(|v| name.as_ref().is_none_or(|n| &v.name == n))
        .map(|v| {
            if detailed {
                detail(&call, v)
            } else {
                Value::Object(summary(&call, v))
            }
        })
        .collect();
    Ok(Json(json!({ "volumes": volumes })))
}

/// `GET /volumes`.
pub async fn list(call: Call) -> Result<Json<Value>, Fault> {
    list_as(call, false).await
}

/// `GET /volumes/detail`.
pub async fn list_detail(call: Call) -> Result<Json<Value>, Fault> {
    list_as(call, true).await
}

/// `GET /volumes/{volume_id}`.
pub async fn show(call: Call, Path((_, id)): Path<(String, String)>) -> Result<Json<Value>, Fault> {
    let v = call.run(move |c, who| c.volumes().get(who, &id)).await?;
    Ok(Json(json!({ "volume": detail(&call, &v) })))
}
