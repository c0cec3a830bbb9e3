//! Backup policies under paused tokio time: runs happen at the scheduled times, scheduled backups
//! carry the vault's name prefix, the full/incremental pattern holds, retention keeps exactly what
//! it should (parents of kept incrementals included), and missed runs after a pause give one
//! catch-up run, not a burst. Retention is the only remover in a locked vault.
mod common;

use std::time::Duration;

use blockvault_daemon::auth::Caller;
use blockvault_daemon::config::Role;
use blockvault_daemon::control::Control;
use blockvault_daemon::model::{BackupStatus, JobState};
use blockvault_daemon::policy::PolicySpec;
use blockvault_daemon::runner::PolicyRunner;
use blockvault_daemon::vault::{VaultSpec, VaultUpdate};
use blockvault_daemon::Daemon;
use common::*;

fn admin() -> Caller {
    Caller {
        project: "admin".into(),
        user: "admin".into(),
        role: Role::Admin,
    }
}

/// Waits (in real time) until no job is queued or running.
fn settle(c: &Control) {
    for _ in 0..6000 {
        let busy = c
            .jobs()
            .list(&admin(), false, "", &Default::default())
            .unwrap()
            .0
            .iter()
            .any(|j| !j.state.is_final());
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("jobs did not finish");
}

/// The vault's backups, oldest first: (name, is_incremental, status).
fn backups(c: &Control, vault: uuid::Uuid) -> Vec<(String, bool, BackupStatus, uuid::Uuid)> {
    let page = c
        .backups()
        .list(
            &admin(),
            &blockvault_daemon::control::ListQuery {
                sort: "created_at:asc".into(),
                ..Default::default()
            },
        )
        .unwrap();
    page.backups
        .into_iter()
        .filter(|b| b.vault_id == Some(vault))
        .map(|b| (b.name, b.is_incremental, b.status, b.id))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn schedule_pattern_retention_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::open(config(&dir.path().join("data"), vec![])).unwrap();
    let c = daemon.control().clone();
    let img = dir.path().join("v.img");
    make_image(&img, 1 << 20, 4);
    use std::os::unix::ffi::OsStrExt;
    let vol = c
        .volumes()
        .register(
            &admin(),
            "",
            "db",
            img.as_os_str().as_bytes(),
            false,
            vec![],
            "",
        )
        .unwrap();
    let policy = c
        .policies()
        .create(
            &admin(),
            "",
            PolicySpec {
                name: Some("hourly".into()),
                enabled: Some(true),
                schedule: Some((3600, vec![], vec![])),
                full_every: Some(3),
                retention: Some((Some(3), None, 0, 0, 0)),
            },
        )
        .unwrap();
    let vault = c
        .vaults()
        .create(
            &admin(),
            VaultSpec {
                name: "auto".into(),
                billing: Some(blockvault_daemon::model::BillingRow {
                    cloud_type: String::new(),
                    consistent_level: "crash_consistent".into(),
                    object_type: "disk".into(),
                    protect_type: "backup".into(),
                    size_gb: 10,
                    charging_mode: String::new(),
                    period_type: String::new(),
                    period_num: 0,
                    is_auto_renew: false,
                    is_auto_pay: false,
                    console_url: String::new(),
                    is_multi_az: false,
                }),
                resources: vec![blockvault_daemon::model::ResourceRow {
                    id: vol.id.to_string(),
                    kind: "OS::Cinder::Volume".into(),
                    name: "db".into(),
                    exclude_volumes: vec![],
                }],
                backup_policy_id: policy.id.to_string(),
                backup_name_prefix: "auto_".into(),
                ..Default::default()
            },
        )
        .unwrap()
        .vault;
    let runner = PolicyRunner::new(c.clone());

    // Nothing is due before the first hour.
    assert!(runner.tick().0.is_empty());
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert!(runner.tick().0.is_empty());
    // Seven hourly runs: F I I F I I F.
    for run in 0..7 {
        tokio::time::advance(Duration::from_secs(if run == 0 { 1 } else { 3600 })).await;
        let (queued, next) = runner.tick();
        assert_eq!(queued.len(), 1, "run {run}");
        assert_eq!(next.unwrap() - runner.now(), time::Duration::hours(1));
        assert!(
            runner.tick().0.is_empty(),
            "a second tick at the same time runs nothing"
        );
        settle(&c);
        runner.apply_retention(runner.now());
    }
    let left = backups(&c, vault.id);
    // Newest 3 are runs 4..6 (I I F); run 4's parent (run 3, a full) stays too.
    let pattern: Vec<bool> = left.iter().map(|b| b.1).collect();
    assert_eq!(pattern, vec![false, true, true, false], "{left:?}");
    assert!(left.iter().all(|b| b.0.starts_with("auto_db_")), "{left:?}");
    assert!(left.iter().all(|b| b.2 == BackupStatus::Available));
    let jobs = c
        .jobs()
        .list(&admin(), false, "", &Default::default())
        .unwrap()
        .0;
    assert_eq!(jobs.len(), 7);
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));

    // Ten hours pass without the runner (a stopped daemon): one catch-up run, not ten.
    tokio::time::advance(Duration::from_secs(10 * 3600)).await;
    assert_eq!(runner.tick().0.len(), 1);
    assert!(runner.tick().0.is_empty());
    settle(&c);

    // Finished jobs can be forgotten; their backups stay.
    let before = backups(&c, vault.id).len();
    let jobs = c
        .jobs()
        .list(&admin(), false, "", &Default::default())
        .unwrap()
        .0
        .len();
    assert_eq!(c.jobs().prune(30), 0, "nothing is 30 days old");
    let cut = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    assert_eq!(c.jobs().prune_before(cut), jobs);
    assert!(c
        .jobs()
        .list(&admin(), false, "", &Default::default())
        .unwrap()
        .0
        .is_empty());
    assert_eq!(backups(&c, vault.id).len(), before);

    // Locked: users cannot delete, retention still prunes.
    c.vaults()
        .update(
            &admin(),
            &vault.id.to_string(),
            VaultUpdate {
                locked: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    let newest = backups(&c, vault.id).last().unwrap().3;
    assert!(matches!(
        c.backups().delete(&admin(), &newest.to_string()),
        Err(blockvault_daemon::error::Error::Precondition(_))
    ));
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(runner.tick().0.len(), 1);
        settle(&c);
        runner.apply_retention(runner.now());
    }
    // Runs 7..10 were I I F I (run 7 the catch-up, based on run 6). Newest 3: runs 10, 9, 8;
    // run 8's chain (8 -> 7 -> 6) stays with it, so 5 remain and runs 3, 4, 5 are pruned.
    let left = backups(&c, vault.id);
    let pattern: Vec<bool> = left.iter().map(|b| b.1).collect();
    assert_eq!(pattern, vec![false, true, true, false, true], "{left:?}");
    assert!(left.iter().any(|b| b.3 == newest));
    // Every kept incremental still has its parent.
    for b in &left {
        let (row, _) = c.backups().get(&admin(), &b.3.to_string()).unwrap();
        if let Some(p) = row.parent_id {
            assert!(
                left.iter().any(|x| x.3 == p),
                "parent of {} pruned",
                row.name
            );
        }
    }
    c.jobs().finish_shutdown(Duration::from_secs(10));
}

fn billing() -> blockvault_daemon::model::BillingRow {
    blockvault_daemon::model::BillingRow {
        cloud_type: String::new(),
        consistent_level: "crash_consistent".into(),
        object_type: "server".into(),
        protect_type: "backup".into(),
        size_gb: 10,
        charging_mode: String::new(),
        period_type: String::new(),
        period_num: 0,
        is_auto_renew: false,
        is_auto_pay: false,
        console_url: String::new(),
        is_multi_az: false,
    }
}

/// A server resource stands for its volumes minus exclude_volumes; keep-daily keeps the newest
/// backup of each of the last N days; day/time rules fire at their UTC times.
#[tokio::test(start_paused = true)]
async fn server_resources_daily_retention_and_time_rules() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::open(config(&dir.path().join("data"), vec![])).unwrap();
    let c = daemon.control().clone();
    let mut vols = Vec::new();
    for i in 0..3 {
        let img = dir.path().join(format!("d{i}.img"));
        make_image(&img, 256 << 10, i);
        let v = c
            .volumes()
            .register(
                &admin(),
                "",
                &format!("disk{i}"),
                img.as_os_str().as_bytes(),
                false,
                vec![],
                "srv-1",
            )
            .unwrap();
        vols.push(v.id);
    }
    // Every 6 hours; all full; keep the newest backup of each of the last 2 days.
    let policy = c
        .policies()
        .create(
            &admin(),
            "",
            PolicySpec {
                name: Some("six-hourly".into()),
                enabled: Some(true),
                schedule: Some((6 * 3600, vec![], vec![])),
                full_every: Some(0),
                retention: Some((None, None, 2, 0, 0)),
            },
        )
        .unwrap();
    let vault = c
        .vaults()
        .create(
            &admin(),
            VaultSpec {
                name: "srv".into(),
                billing: Some(billing()),
                resources: vec![blockvault_daemon::model::ResourceRow {
                    id: "srv-1".into(),
                    kind: "OS::Nova::Server".into(),
                    name: "server one".into(),
                    exclude_volumes: vec![vols[1].to_string()],
                }],
                backup_policy_id: policy.id.to_string(),
                ..Default::default()
            },
        )
        .unwrap()
        .vault;
    let runner = PolicyRunner::new(c.clone());
    let mut made = 0;
    for _ in 0..12 {
        tokio::time::advance(Duration::from_secs(6 * 3600)).await;
        let (queued, _) = runner.tick();
        assert_eq!(queued.len(), 2, "two volumes of the server, one excluded");
        made += queued.len();
        settle(&c);
    }
    assert_eq!(made, 24);
    runner.apply_retention(runner.now());
    let left = backups(&c, vault.id);
    // Two volumes x the newest backup of each of the last 2 days that have backups.
    assert_eq!(left.len(), 4, "{left:?}");
    let page = c
        .backups()
        .list(&admin(), &blockvault_daemon::control::ListQuery::default())
        .unwrap();
    assert!(page.backups.iter().all(|b| b.volume_id != vols[1]));
    let mut days: Vec<_> = page
        .backups
        .iter()
        .filter(|b| b.vault_id == Some(vault.id))
        .map(|b| (b.volume_id, b.created_at.date()))
        .collect();
    days.sort();
    days.dedup();
    assert_eq!(days.len(), 4, "one per volume and day");

    // Switch to a day/time rule: the next run happens at the next 03:00 UTC, not before.
    c.policies()
        .update(
            &admin(),
            &policy.id.to_string(),
            PolicySpec {
                schedule: Some((0, vec![], vec!["03:00".into()])),
                ..Default::default()
            },
        )
        .unwrap();
    let now = runner.now();
    let next3 = {
        let today = now.replace_time(time::macros::time!(3:00));
        if today > now {
            today
        } else {
            today + time::Duration::days(1)
        }
    };
    let wait = (next3 - now).unsigned_abs();
    tokio::time::advance(wait - Duration::from_secs(1)).await;
    assert!(runner.tick().0.is_empty(), "not yet 03:00");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(runner.tick().0.len(), 2);
    settle(&c);
    c.jobs().finish_shutdown(Duration::from_secs(10));
}
