//! What a vault lock means in the bucket (`[vaults] object_lock_mode`, `object_lock_days`).
//!
//! The control plane refuses to delete a locked vault's backups except by the vault's
//! retention policy. On a bucket with S3 Object Lock the storage enforces it too: each backup
//! of a locked vault has its packs, manifest, record and wrapped key under a retention of
//! `object_lock_days`, renewed by `lockjob.rs` while the backup exists, so nobody holding the
//! bucket's credentials can destroy it either. Where the bucket (or a local store) cannot, the
//! vault says so in its `object_lock` field.
use blockvault_engine::{ObjectLock, RetentionMode};
use parking_lot::RwLock;

/// `[vaults]` settings of the retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLockOptions {
    pub mode: RetentionMode,
    /// Days of retention from each renewal; a backup is renewed when less than half is left.
    pub days: u64,
}

impl Default for ObjectLockOptions {
    fn default() -> Self {
        ObjectLockOptions {
            mode: RetentionMode::Compliance,
            days: 30,
        }
    }
}

impl ObjectLockOptions {
    /// The retention to ask for at `now` (unix seconds), rounded up to a whole day so that
    /// backups locked on one day share one date, and the time after which it is renewed.
    pub fn window(&self, now: u64) -> (u64, u64) {
        const DAY: u64 = 86_400;
        let until = (now + self.days * DAY).div_ceil(DAY) * DAY;
        (until, now + self.days * DAY / 2)
    }
}

/// Whether the store can hold locked backups, once asked, and a bell for the renewal job.
#[derive(Debug, Default)]
pub struct LockKeeper {
    pub options: ObjectLockOptions,
    support: RwLock<Option<ObjectLock>>,
    wake: tokio::sync::Notify,
}

impl LockKeeper {
    pub fn new(options: ObjectLockOptions) -> LockKeeper {
        LockKeeper {
            options,
            ..LockKeeper::default()
        }
    }

    /// Records what the store answered.
    pub fn set_support(&self, s: ObjectLock) {
        *self.support.write() = Some(s);
    }

    /// True once the store was asked.
    pub fn asked(&self) -> bool {
        self.support.read().is_some()
    }

    /// True when the store keeps objects under retention.
    pub fn enforced(&self) -> bool {
        matches!(*self.support.read(), Some(ObjectLock::Available))
    }

    /// The `object_lock` field of a vault.
    pub fn status(&self, locked: bool) -> String {
        if !locked {
            return String::new();
        }
        let o = self.options;
        match &*self.support.read() {
            Some(ObjectLock::Available) => format!(
                "enforced: S3 Object Lock {}, {} days, renewed while the backup exists",
                o.mode.as_s3(),
                o.days
            ),
            Some(ObjectLock::Unavailable(why)) => format!("not enforced by storage: {why}"),
            None => "not enforced by storage yet: the store has not been asked".into(),
        }
    }

    /// Asks the renewal job to run now (a vault was locked, a backup committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`LockKeeper::wake`] or `timeout`.
    pub async fn sleep(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rounds_to_days_and_renews_at_half() {
        let o = ObjectLockOptions {
            mode: RetentionMode::Governance,
            days: 2,
        };
        let (until, renew) = o.window(86_400 * 10 + 5);
        assert_eq!(until, 86_400 * 13);
        assert_eq!(renew, 86_400 * 11 + 5);
        let k = LockKeeper::new(o);
        assert_eq!(k.status(false), "");
        assert!(k.status(true).contains("not been asked"));
        k.set_support(ObjectLock::Unavailable("no lock".into()));
        assert_eq!(k.status(true), "not enforced by storage: no lock");
        assert!(!k.enforced());
        k.set_support(ObjectLock::Available);
        assert!(k.status(true).contains("GOVERNANCE, 2 days"));
    }
}
