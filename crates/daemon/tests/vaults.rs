//! Vaults through a real daemon: every validation rule of the vault API (accepted and refused),
//! the seed's example requests, capacity (RESOURCE_EXHAUSTED, auto_expand), threshold events once
//! per crossing on the Watch stream, and locked vaults.
mod common;

use std::time::Duration;

use blockvault_proto::v1 as pb;
use common::*;
use tonic::Code;

const MIB: usize = 1 << 20;

fn vault(name: &str, size: i64) -> pb::CreateVaultRequest {
    pb::CreateVaultRequest {
        name: name.into(),
        billing: Some(billing(size)),
        ..Default::default()
    }
}

fn tag(k: &str, v: &str) -> pb::Tag {
    pb::Tag {
        key: k.into(),
        value: v.into(),
    }
}

type Vaults = pb::vaults_client::VaultsClient<tonic::transport::Channel>;

async fn vaults_client(d: &blockvault_daemon::Running) -> Vaults {
    let ch = tonic::transport::Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::vaults_client::VaultsClient::new(ch)
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-auth-token", token.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_follows_the_vault_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let tok = d.admin_token.clone();
    let mut v = vaults_client(&d).await;
    let ok = |r: Result<tonic::Response<pb::Vault>, tonic::Status>| r.map(|r| r.into_inner());

    // Defaults.
    let made = ok(v.create(authed(&tok, vault("plain", 40))).await).unwrap();
    assert_eq!(made.threshold, 80);
    assert!(made.smn_notify);
    assert!(!made.locked);
    let b = made.billing.unwrap();
    assert_eq!((b.size, b.allocated, b.used), (40, 40, 0));
    assert_eq!(b.status, "available");
    assert_eq!(b.spec_code, "vault.backup.volume.normal");
    assert_eq!(b.charging_mode, "post_paid");
    assert_eq!(b.cloud_type, "public");

    // Each case: (what to change, accepted?, field named in the error).
    type Case = (
        &'static str,
        Box<dyn Fn(&mut pb::CreateVaultRequest)>,
        bool,
        &'static str,
    );
    let long_key = "k".repeat(36);
    let long_val = "v".repeat(43);
    let cases: Vec<Case> = vec![
        (
            "empty name",
            Box::new(|r| r.name = "".into()),
            false,
            "name",
        ),
        (
            "no billing",
            Box::new(|r| r.billing = None),
            false,
            "billing",
        ),
        (
            "size 0",
            Box::new(|r| r.billing.as_mut().unwrap().size = 0),
            false,
            "billing.size",
        ),
        (
            "size max",
            Box::new(|r| r.billing.as_mut().unwrap().size = 10_485_760),
            true,
            "",
        ),
        (
            "size over",
            Box::new(|r| r.billing.as_mut().unwrap().size = 10_485_761),
            false,
            "billing.size",
        ),
        (
            "bad level",
            Box::new(|r| r.billing.as_mut().unwrap().consistent_level = "eventual".into()),
            false,
            "billing.consistent_level",
        ),
        (
            "app level",
            Box::new(|r| r.billing.as_mut().unwrap().consistent_level = "app_consistent".into()),
            true,
            "",
        ),
        (
            "bad object",
            Box::new(|r| r.billing.as_mut().unwrap().object_type = "tape".into()),
            false,
            "billing.object_type",
        ),
        (
            "server object",
            Box::new(|r| r.billing.as_mut().unwrap().object_type = "server".into()),
            true,
            "",
        ),
        (
            "bad protect",
            Box::new(|r| r.billing.as_mut().unwrap().protect_type = "archive".into()),
            false,
            "billing.protect_type",
        ),
        (
            "replication",
            Box::new(|r| r.billing.as_mut().unwrap().protect_type = "replication".into()),
            true,
            "",
        ),
        (
            "bad cloud",
            Box::new(|r| r.billing.as_mut().unwrap().cloud_type = "private".into()),
            false,
            "billing.cloud_type",
        ),
        (
            "bad charging",
            Box::new(|r| r.billing.as_mut().unwrap().charging_mode = "free".into()),
            false,
            "billing.charging_mode",
        ),
        (
            "pre_paid without period",
            Box::new(|r| r.billing.as_mut().unwrap().charging_mode = "pre_paid".into()),
            false,
            "billing.period_type",
        ),
        (
            "pre_paid with period",
            Box::new(|r| {
                let b = r.billing.as_mut().unwrap();
                b.charging_mode = "pre_paid".into();
                b.period_type = "month".into();
                b.period_num = 1;
            }),
            true,
            "",
        ),
        (
            "threshold 0",
            Box::new(|r| r.threshold = Some(0)),
            false,
            "threshold",
        ),
        ("threshold 1", Box::new(|r| r.threshold = Some(1)), true, ""),
        (
            "threshold 100",
            Box::new(|r| r.threshold = Some(100)),
            true,
            "",
        ),
        (
            "threshold 101",
            Box::new(|r| r.threshold = Some(101)),
            false,
            "threshold",
        ),
        (
            "tag key 36",
            {
                let k = long_key.clone();
                Box::new(move |r| r.tags = vec![tag(&k, "v")])
            },
            true,
            "",
        ),
        (
            "tag key 37",
            {
                let k = format!("{long_key}k");
                Box::new(move |r| r.tags = vec![tag(&k, "v")])
            },
            false,
            "tags[0].key",
        ),
        (
            "tag key empty",
            Box::new(|r| r.tags = vec![tag("  ", "v")]),
            false,
            "tags[0].key",
        ),
        (
            "tag key trimmed",
            Box::new(|r| r.tags = vec![tag("  env  ", " prod ")]),
            true,
            "",
        ),
        (
            "tag key dot",
            Box::new(|r| r.tags = vec![tag("a.b", "v")]),
            false,
            "tags[0].key",
        ),
        (
            "tag key symbol",
            Box::new(|r| r.tags = vec![tag("a=b", "v")]),
            false,
            "tags[0].key",
        ),
        (
            "tag key control char",
            Box::new(|r| r.tags = vec![tag("a\u{7}", "v")]),
            false,
            "tags[0].key",
        ),
        (
            "tag value 43",
            {
                let v = long_val.clone();
                Box::new(move |r| r.tags = vec![tag("k", &v)])
            },
            true,
            "",
        ),
        (
            "tag value 44",
            {
                let v = format!("{long_val}v");
                Box::new(move |r| r.tags = vec![tag("k", &v)])
            },
            false,
            "tags[0].value",
        ),
        (
            "tag value empty",
            Box::new(|r| r.tags = vec![tag("k", "")]),
            true,
            "",
        ),
        (
            "tag value dot",
            Box::new(|r| r.tags = vec![tag("k", "v1.2")]),
            true,
            "",
        ),
        (
            "tag value slash",
            Box::new(|r| r.tags = vec![tag("k", "a/b")]),
            false,
            "tags[0].value",
        ),
        (
            "10 tags",
            Box::new(|r| r.tags = (0..10).map(|i| tag(&format!("k{i}"), "v")).collect()),
            true,
            "",
        ),
        (
            "11 tags",
            Box::new(|r| r.tags = (0..11).map(|i| tag(&format!("k{i}"), "v")).collect()),
            false,
            "tags",
        ),
        (
            "duplicate keys",
            Box::new(|r| r.tags = vec![tag("k", "1"), tag(" k", "2")]),
            false,
            "tags[1].key",
        ),
        (
            "5 bind rules",
            Box::new(|r| {
                r.bind_rules = Some(pb::VaultBindRules {
                    tags: (0..5).map(|i| tag(&format!("k{i}"), "v")).collect(),
                })
            }),
            true,
            "",
        ),
        (
            "6 bind rules",
            Box::new(|r| {
                r.bind_rules = Some(pb::VaultBindRules {
                    tags: (0..6).map(|i| tag(&format!("k{i}"), "v")).collect(),
                })
            }),
            false,
            "bind_rules.tags",
        ),
        (
            "bind rule value",
            Box::new(|r| {
                r.bind_rules = Some(pb::VaultBindRules {
                    tags: vec![tag("k", "a*b")],
                })
            }),
            false,
            "bind_rules.tags[0].value",
        ),
        (
            "bad resource type",
            Box::new(|r| {
                r.resources = vec![pb::Resource {
                    id: "x".into(),
                    r#type: "OS::Glance::Image".into(),
                    ..Default::default()
                }]
            }),
            false,
            "resources[0].type",
        ),
        (
            "unsupported type",
            Box::new(|r| {
                r.resources = vec![pb::Resource {
                    id: "x".into(),
                    r#type: "OS::Sfs::Turbo".into(),
                    ..Default::default()
                }]
            }),
            false,
            "resources[0].type",
        ),
        (
            "unknown volume",
            Box::new(|r| {
                r.resources = vec![pb::Resource {
                    id: uuid::Uuid::new_v4().to_string(),
                    r#type: "OS::Cinder::Volume".into(),
                    ..Default::default()
                }]
            }),
            false,
            "resources[0].id",
        ),
        (
            "server resource",
            Box::new(|r| {
                r.resources = vec![pb::Resource {
                    id: "srv-1".into(),
                    r#type: "OS::Nova::Server".into(),
                    ..Default::default()
                }]
            }),
            true,
            "",
        ),
        (
            "bad exclude",
            Box::new(|r| {
                r.resources = vec![pb::Resource {
                    id: "srv-1".into(),
                    r#type: "OS::Nova::Server".into(),
                    extra_info: Some(pb::ResourceExtraInfo {
                        exclude_volumes: vec!["nope".into()],
                    }),
                    ..Default::default()
                }]
            }),
            false,
            "resources[0].extra_info.exclude_volumes[0]",
        ),
        (
            "unknown policy",
            Box::new(|r| r.backup_policy_id = uuid::Uuid::new_v4().to_string()),
            false,
            "backup_policy_id",
        ),
        (
            "bad prefix",
            Box::new(|r| r.backup_name_prefix = "a b".into()),
            false,
            "backup_name_prefix",
        ),
        (
            "bad lock source",
            Box::new(|r| r.sys_lock_source_service = "NFS".into()),
            false,
            "sys_lock_source_service",
        ),
    ];
    for (i, (what, change, accept, field)) in cases.into_iter().enumerate() {
        let mut req = vault(&format!("case-{i}"), 10);
        change(&mut req);
        let r = v.create(authed(&tok, req)).await;
        if accept {
            assert!(r.is_ok(), "{what}: {r:?}");
        } else {
            let s = r.expect_err(what);
            let code = if field == "backup_policy_id" {
                Code::NotFound
            } else {
                Code::InvalidArgument
            };
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(
                s.message().starts_with(field),
                "{what}: {:?} should name {field}",
                s.message()
            );
        }
    }
    // Trimmed tags are stored trimmed.
    let all = v
        .list(authed(&tok, pb::ListVaultsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .vaults;
    let trimmed = all
        .iter()
        .find(|x| x.tags.iter().any(|t| t.key == "env"))
        .unwrap();
    assert_eq!(trimmed.tags[0].value, "prod");
    // Names are unique per project.
    assert_code(
        v.create(authed(&tok, vault("plain", 1))).await,
        Code::AlreadyExists,
    );

    // The seed's two example requests, translated to proto, are accepted (the first names a
    // policy, created here under the example's id).
    let mut p = pb::policies_client::PoliciesClient::new(
        tonic::transport::Channel::from_shared(d.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    p.create(authed(
        &tok,
        pb::CreatePolicyRequest {
            id: "6dd81d7d-a4cb-443e-b8ed-1af0bd3a261b".into(),
            name: "example".into(),
            enabled: true,
            schedule: Some(pb::Schedule {
                interval_seconds: 86_400,
                ..Default::default()
            }),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let ex1 = pb::CreateVaultRequest {
        backup_policy_id: "6dd81d7d-a4cb-443e-b8ed-1af0bd3a261b".into(),
        billing: Some(pb::Billing {
            cloud_type: "public".into(),
            consistent_level: "crash_consistent".into(),
            object_type: "server".into(),
            protect_type: "backup".into(),
            size: 100,
            charging_mode: "post_paid".into(),
            is_auto_renew: false,
            is_auto_pay: false,
            console_url: "https://console.demo.com/cbr/?agencyId=97fcd896b7914cb98f553a087232e243&region=testregion/cbr/manager/csbs/vaultList".into(),
            ..Default::default()
        }),
        description: "vault_description".into(),
        name: "vault_name".into(),
        resources: vec![pb::Resource {
            extra_info: Some(pb::ResourceExtraInfo {
                exclude_volumes: vec!["43a320a5-3efd-4568-b1aa-8dd9183cc64b".into()],
            }),
            id: "23a320a5-3efd-4568-b1aa-8dd9183cc64c".into(),
            r#type: "OS::Nova::Server".into(),
            ..Default::default()
        }],
        tags: vec![tag("key01", "value01")],
        enterprise_project_id: "0".into(),
        ..Default::default()
    };
    let made = v.create(authed(&tok, ex1)).await.unwrap().into_inner();
    assert_eq!(
        made.billing.as_ref().unwrap().spec_code,
        "vault.backup.server.normal"
    );
    assert_eq!(
        made.resources[0]
            .extra_info
            .as_ref()
            .unwrap()
            .exclude_volumes
            .len(),
        1
    );
    assert_eq!(
        made.backup_policy_id,
        "6dd81d7d-a4cb-443e-b8ed-1af0bd3a261b"
    );
    let ex2 = pb::CreateVaultRequest {
        billing: Some(pb::Billing {
            consistent_level: "crash_consistent".into(),
            object_type: "disk".into(),
            protect_type: "backup".into(),
            size: 40,
            charging_mode: "post_paid".into(),
            is_auto_renew: false,
            is_auto_pay: false,
            ..Default::default()
        }),
        name: "test".into(),
        resources: vec![],
        ..Default::default()
    };
    v.create(authed(&tok, ex2)).await.unwrap();
    d.stop().await.unwrap();
}

async fn next_event(s: &mut tonic::Streaming<pb::VaultEvent>) -> Option<pb::VaultEvent> {
    match tokio::time::timeout(Duration::from_secs(2), s.message()).await {
        Ok(m) => m.unwrap(),
        Err(_) => None,
    }
}

async fn backup_into(
    c: &mut Client,
    vol: &str,
    vault: &str,
    incremental: bool,
) -> Result<pb::Job, tonic::Status> {
    let r = c
        .backups
        .create(pb::CreateBackupRequest {
            volume_id: vol.into(),
            container: vault.into(),
            incremental,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(wait_job(c, &r.job_id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_threshold_events_and_auto_expand() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let tok = d.admin_token.clone();
    let mut c = connect(&d.endpoint(), Some(&tok)).await;
    let mut v = vaults_client(&d).await;
    let mut req = vault("small", 1);
    req.threshold = Some(50);
    let vt = v.create(authed(&tok, req)).await.unwrap().into_inner();
    let mut events = v
        .watch(authed(
            &tok,
            pb::WatchVaultEventsRequest {
                vault_id: vt.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    // Four volumes of 300 MB of random data each: nothing dedups or compresses.
    let mut vols = Vec::new();
    for i in 0..4u64 {
        let p = dir.path().join(format!("v{i}.img"));
        std::fs::write(&p, blockvault_random(300_000_000, i)).unwrap();
        vols.push(register(&mut c, &p, &format!("v{i}")).await.id);
    }
    let used = |x: &pb::Vault| x.billing.as_ref().unwrap().used;
    let get = |v: &mut Vaults| {
        let id = vt.id.clone();
        let tok = tok.clone();
        let mut v = v.clone();
        async move {
            v.get(authed(&tok, pb::GetVaultRequest { vault_id: id }))
                .await
                .unwrap()
                .into_inner()
        }
    };

    // 30 %: no event.
    assert_eq!(
        backup_into(&mut c, &vols[0], &vt.id, false)
            .await
            .unwrap()
            .state,
        "succeeded"
    );
    assert!(next_event(&mut events).await.is_none());
    let now = get(&mut v).await;
    assert!((300..=302).contains(&used(&now)), "{now:?}");
    // 60 %: crosses 50 % once.
    assert_eq!(
        backup_into(&mut c, &vols[1], &vt.id, false)
            .await
            .unwrap()
            .state,
        "succeeded"
    );
    let e = next_event(&mut events).await.expect("threshold event");
    assert_eq!(e.kind, "threshold_exceeded");
    assert_eq!(e.threshold, 50);
    // 90 %: still above, no second event.
    assert_eq!(
        backup_into(&mut c, &vols[2], &vt.id, false)
            .await
            .unwrap()
            .state,
        "succeeded"
    );
    assert!(next_event(&mut events).await.is_none());
    // The fourth would not fit: stopped when the vault fills, its backup in error.
    let j = backup_into(&mut c, &vols[3], &vt.id, false).await.unwrap();
    assert_eq!(j.state, "failed");
    assert!(j.fail_reason.contains("RESOURCE_EXHAUSTED"), "{j:?}");
    let b = get_backup(&mut c, &j.backup_id).await;
    assert_eq!(b.status, "error");
    // A backup expected to exceed the capacity is refused up front.
    let s = assert_code(
        backup_into(&mut c, &vols[0], &vt.id, true).await,
        Code::ResourceExhausted,
    );
    assert!(s.message().contains("full"), "{s:?}");
    assert_eq!(get(&mut v).await.threshold_events, 1);

    // auto_expand: the backup passes, the capacity grows, and the event says so.
    v.update(authed(
        &tok,
        pb::UpdateVaultRequest {
            vault_id: vt.id.clone(),
            auto_expand: Some(true),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let j = backup_into(&mut c, &vols[3], &vt.id, false).await.unwrap();
    assert_eq!(j.state, "succeeded", "{j:?}");
    let e = next_event(&mut events).await.expect("expansion event");
    assert_eq!(e.kind, "capacity_expanded");
    assert_eq!(e.capacity_gb, 2);
    assert!(
        next_event(&mut events).await.is_none(),
        "no second threshold event while above"
    );
    let now = get(&mut v).await;
    assert_eq!(now.billing.as_ref().unwrap().size, 2);
    // `used` is exact: the stored bytes of the distinct chunks of the vault's available backups,
    // although the retry reused the chunks its failed attempt had stored.
    let ids = available_in(&mut c, &vt.id).await;
    assert_eq!(ids.len(), 4);
    let exact = usage_oracle(d.control.engine().store(), ids.iter().map(String::as_str));
    assert_eq!(used(&now) as u64, exact.div_ceil(1_000_000), "{now:?}");
    assert!(used(&now) > 1200, "{now:?}");

    // Falling below re-arms; the next upward crossing fires again, exactly once.
    for b in c
        .backups
        .list(pb::ListBackupsRequest {
            detail: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups
    {
        if b.volume_id == vols[2] || b.volume_id == vols[3] {
            c.backups
                .delete(pb::DeleteBackupRequest { backup_id: b.id })
                .await
                .unwrap();
        }
    }
    assert!(next_event(&mut events).await.is_none());
    let after = v
        .update(authed(
            &tok,
            pb::UpdateVaultRequest {
                vault_id: vt.id.clone(),
                threshold: Some(25),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.threshold_events, 2);
    let e = next_event(&mut events).await.expect("second crossing");
    assert_eq!(e.kind, "threshold_exceeded");
    assert!(next_event(&mut events).await.is_none());
    d.stop().await.unwrap();
}

/// `used` is exact after dedup: a vault is charged for every distinct chunk its available backups
/// reference, whoever stored the chunk first. Checked against a from-scratch count over the
/// manifests, across shared chunks, deletes, a refused backup and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_every_distinct_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = start(&data).await;
    let tok = d.admin_token.clone();
    let mut c = connect(&d.endpoint(), Some(&tok)).await;
    let mut v = vaults_client(&d).await;
    let vt = v
        .create(authed(&tok, vault("exact", 1)))
        .await
        .unwrap()
        .into_inner();
    let other = v
        .create(authed(&tok, vault("other", 10)))
        .await
        .unwrap()
        .into_inner();
    let mut vols = Vec::new();
    for i in 0..4u64 {
        let p = dir.path().join(format!("u{i}.img"));
        std::fs::write(&p, blockvault_random(300_000_000, 100 + i)).unwrap();
        vols.push(register(&mut c, &p, &format!("u{i}")).await.id);
    }
    let used_mb = |v: &mut Vaults, id: String| {
        let tok = tok.clone();
        let mut v = v.clone();
        async move {
            v.get(authed(&tok, pb::GetVaultRequest { vault_id: id }))
                .await
                .unwrap()
                .into_inner()
                .billing
                .unwrap()
                .used as u64
        }
    };
    async fn check(c: &mut Client, d: &blockvault_daemon::Running, vault: &str, used_mb: u64) {
        let ids = available_in(c, vault).await;
        let exact = usage_oracle(d.control.engine().store(), ids.iter().map(String::as_str));
        assert_eq!(used_mb, exact.div_ceil(1_000_000), "vault {vault}: {ids:?}");
    }
    let ok = |j: pb::Job| assert_eq!(j.state, "succeeded", "{j:?}");

    // Every chunk of u0 is stored by a backup outside any vault first; backing u0 up into the
    // vault stores nothing new, yet the vault holds 300 MB.
    let outside = backup(&mut c, &vols[0], "outside", false).await;
    let first = backup_into(&mut c, &vols[0], &vt.id, false).await.unwrap();
    assert_eq!(first.state, "succeeded", "{first:?}");
    let u = used_mb(&mut v, vt.id.clone()).await;
    assert!((300..=302).contains(&u), "{u}");
    check(&mut c, &d, &vt.id, u).await;
    // A second full backup of the same data adds nothing; another vault is charged in full.
    ok(backup_into(&mut c, &vols[0], &vt.id, false).await.unwrap());
    assert_eq!(used_mb(&mut v, vt.id.clone()).await, u);
    ok(backup_into(&mut c, &vols[0], &other.id, false)
        .await
        .unwrap());
    assert_eq!(used_mb(&mut v, other.id.clone()).await, u);
    check(&mut c, &d, &other.id, u).await;
    // Deleting the backup that stored the chunks, and the vault's first backup, leaves the
    // vault's usage as it was: its remaining backup still occupies the bytes.
    c.backups
        .delete(pb::DeleteBackupRequest {
            backup_id: outside.id.clone(),
        })
        .await
        .unwrap();
    c.backups
        .delete(pb::DeleteBackupRequest {
            backup_id: first.backup_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(used_mb(&mut v, vt.id.clone()).await, u);
    check(&mut c, &d, &vt.id, u).await;

    // The capacity applies to the charged figure: u3's chunks are all stored already (outside
    // the vault), but they do not fit next to 900 MB in a 1 GB vault.
    for vol in &vols[1..] {
        backup(&mut c, vol, "outside", false).await;
    }
    ok(backup_into(&mut c, &vols[1], &vt.id, false).await.unwrap());
    ok(backup_into(&mut c, &vols[2], &vt.id, false).await.unwrap());
    let full = used_mb(&mut v, vt.id.clone()).await;
    assert!((900..=904).contains(&full), "{full}");
    let j = backup_into(&mut c, &vols[3], &vt.id, false).await.unwrap();
    assert_eq!(j.state, "failed", "{j:?}");
    assert!(j.fail_reason.contains("RESOURCE_EXHAUSTED"), "{j:?}");
    assert_eq!(get_backup(&mut c, &j.backup_id).await.status, "error");
    assert_eq!(used_mb(&mut v, vt.id.clone()).await, full);
    check(&mut c, &d, &vt.id, full).await;

    // The ledger survives a restart unchanged.
    drop(c);
    d.stop().await.unwrap();
    let d = start(&data).await;
    let mut c = connect(&d.endpoint(), Some(&tok)).await;
    let mut v = vaults_client(&d).await;
    assert_eq!(used_mb(&mut v, vt.id.clone()).await, full);
    check(&mut c, &d, &vt.id, full).await;
    // Emptying the vault brings it to zero.
    let failed = j.backup_id;
    for id in available_in(&mut c, &vt.id)
        .await
        .into_iter()
        .chain([failed])
    {
        c.backups
            .delete(pb::DeleteBackupRequest { backup_id: id })
            .await
            .unwrap();
    }
    assert_eq!(used_mb(&mut v, vt.id.clone()).await, 0);
    assert_eq!(used_mb(&mut v, other.id.clone()).await, u);
    d.stop().await.unwrap();
}

/// Deterministic random bytes.
fn blockvault_random(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_vaults_keep_their_backups() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(&dir.path().join("data")).await;
    let tok = d.admin_token.clone();
    let mut c = connect(&d.endpoint(), Some(&tok)).await;
    let mut v = vaults_client(&d).await;
    let vt = v
        .create(authed(&tok, vault("keep", 10)))
        .await
        .unwrap()
        .into_inner();
    let img = dir.path().join("v.img");
    make_image(&img, 2 * MIB, 1);
    let vol = register(&mut c, &img, "v").await;
    let j = backup_into(&mut c, &vol.id, "keep", false).await.unwrap();
    assert_eq!(j.state, "succeeded");
    let b = get_backup(&mut c, &j.backup_id).await;
    assert_eq!(b.container, "keep");

    let lock = |locked: bool| pb::UpdateVaultRequest {
        vault_id: vt.id.clone(),
        locked: Some(locked),
        ..Default::default()
    };
    let l = v
        .update(authed(&tok, lock(true)))
        .await
        .unwrap()
        .into_inner();
    assert!(l.locked);
    assert_eq!(l.billing.unwrap().status, "locked");
    v.update(authed(&tok, lock(true))).await.unwrap();
    let s = assert_code(
        v.update(authed(&tok, lock(false))).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("cannot be unlocked"));
    let s = assert_code(
        c.backups
            .delete(pb::DeleteBackupRequest {
                backup_id: b.id.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("locked"), "{s:?}");
    let s = assert_code(
        v.delete(authed(
            &tok,
            pb::DeleteVaultRequest {
                vault_id: vt.id.clone(),
            },
        ))
        .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("locked"));
    assert_eq!(get_backup(&mut c, &b.id).await.status, "available");

    // An unlocked vault with backups cannot be deleted either; empty, it can.
    let other = v
        .create(authed(&tok, vault("other", 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        backup_into(&mut c, &vol.id, &other.id, false)
            .await
            .unwrap()
            .state,
        "succeeded"
    );
    let s = assert_code(
        v.delete(authed(
            &tok,
            pb::DeleteVaultRequest {
                vault_id: other.id.clone(),
            },
        ))
        .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("holds"));
    // An unknown container is NOT_FOUND.
    assert_code(
        backup_into(&mut c, &vol.id, "no-such-vault", false).await,
        Code::NotFound,
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_bind_joins_matching_volumes_and_gc_runs_on_demand() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let member = token(
        "member-token-0123456789",
        "admin",
        "m",
        blockvault_daemon::config::Role::Member,
    );
    let d = blockvault_daemon::start(config(&dir.path().join("data"), vec![member]))
        .await
        .unwrap();
    let tok = d.admin_token.clone();
    let mut c = connect(&d.endpoint(), Some(&tok)).await;
    let mut v = vaults_client(&d).await;
    let mut req = vault("prod", 10);
    req.auto_bind = true;
    req.bind_rules = Some(pb::VaultBindRules {
        tags: vec![tag("env", "prod")],
    });
    let vt = v.create(authed(&tok, req)).await.unwrap().into_inner();
    assert!(vt.resources.is_empty());
    let reg = |name: &str, env: &str| {
        let p = dir.path().join(format!("{name}.img"));
        make_image(&p, MIB, 3);
        pb::RegisterVolumeRequest {
            name: name.into(),
            path: p.as_os_str().as_bytes().to_vec(),
            tags: vec![tag("env", env), tag("team", "db")],
            ..Default::default()
        }
    };
    let a = c
        .volumes
        .register(reg("a", "prod"))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .volumes
        .register(reg("b", "dev"))
        .await
        .unwrap()
        .into_inner();
    let get = || pb::GetVaultRequest {
        vault_id: vt.id.clone(),
    };
    let now = v.get(authed(&tok, get())).await.unwrap().into_inner();
    let ids: Vec<_> = now.resources.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, vec![a.id.clone()]);
    assert_eq!(now.resources[0].r#type, "OS::Cinder::Volume");
    c.volumes
        .update(pb::UpdateVolumeRequest {
            volume_id: b.id.clone(),
            tags: vec![tag("env", "prod")],
            replace_tags: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let now = v.get(authed(&tok, get())).await.unwrap().into_inner();
    assert_eq!(now.resources.len(), 2);
    // RemoveResources and AddResources.
    let now = v
        .remove_resources(authed(
            &tok,
            pb::RemoveResourcesRequest {
                vault_id: vt.id.clone(),
                resource_ids: vec![b.id.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.resources.len(), 1);
    assert_code(
        v.remove_resources(authed(
            &tok,
            pb::RemoveResourcesRequest {
                vault_id: vt.id.clone(),
                resource_ids: vec![b.id.clone()],
            },
        ))
        .await,
        Code::NotFound,
    );
    let now = v
        .add_resources(authed(
            &tok,
            pb::AddResourcesRequest {
                vault_id: vt.id.clone(),
                resources: vec![pb::Resource {
                    id: "srv-9".into(),
                    r#type: "OS::Native::Server".into(),
                    ..Default::default()
                }],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.resources.len(), 2);

    // GC on demand reclaims a deleted backup's space; it is for admins.
    let big = dir.path().join("big.img");
    make_image(&big, 16 * MIB, 77);
    let bv = register(&mut c, &big, "big").await;
    let bk = backup(&mut c, &bv.id, "temp", false).await;
    c.backups
        .delete(pb::DeleteBackupRequest { backup_id: bk.id })
        .await
        .unwrap();
    let ch = tonic::transport::Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut m = pb::maintenance_client::MaintenanceClient::new(ch);
    assert_code(
        m.run_gc(authed("member-token-0123456789", pb::RunGcRequest {}))
            .await,
        Code::PermissionDenied,
    );
    let r = m
        .run_gc(authed(&tok, pb::RunGcRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(r.reclaimed_bytes > 8_000_000, "{r:?}");
    assert!(r.chunks_removed > 0);
    d.stop().await.unwrap();
}
