//! A file system that forgets, for power-loss tests.
//!
//! [`PowerCutMount`] mounts an in-memory FUSE file system (see [`model`] for the rules) at a
//! temporary directory. Everything written there is kept in memory twice: as it currently is and
//! as it would be found after a power failure, given the `fsync`s made so far (of files, and of
//! directories for their entries). [`PowerCutMount::cut`] simulates the failure: the current
//! state is replaced by the durable one. Kill the processes using the mount first (SIGKILL), as a
//! power failure would, then cut, then start them again on the same mount.
//!
//! Mounting needs `/dev/fuse` and the right to mount (root, or `fusermount3`). Where that is
//! missing, [`PowerCutMount::mount_or_skip`] prints why and returns `None`; set
//! `BLOCKVAULT_REQUIRE_FUSE=1` to turn that skip into a failure.
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

mod fs;
pub mod model;

pub use model::{CutReport, Model, Stats};

/// A mounted power-loss file system; unmounted on drop.
pub struct PowerCutMount {
    session: Option<fuser::BackgroundSession>,
    model: Arc<Mutex<Model>>,
    dir: tempfile::TempDir,
}

impl PowerCutMount {
    /// Mounts an empty file system at a new temporary directory.
    pub fn mount() -> Result<PowerCutMount, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("powercut-")
            .tempdir()
            .map_err(|e| format!("creating a mount point: {e}"))?;
        let model = Arc::new(Mutex::new(Model::new()));
        let fs = fs::PowerCutFs {
            model: model.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::Subtype("powercut".into()),
            fuser::MountOption::RW,
            fuser::MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(fs, dir.path(), &config)
            .map_err(|e| format!("mounting at {}: {e}", dir.path().display()))?;
        let m = PowerCutMount {
            session: Some(session),
            model,
            dir,
        };
        // A mount that failed silently would let writes land in the plain directory.
        m.check_mounted()?;
        Ok(m)
    }

    /// Mounts, or prints (to the real stderr, past the test harness's capture) why power-loss
    /// tests cannot run here and returns `None`. With `BLOCKVAULT_REQUIRE_FUSE=1` it panics
    /// instead.
    pub fn mount_or_skip(test: &str) -> Option<PowerCutMount> {
        match Self::mount() {
            Ok(m) => Some(m),
            Err(why) => {
                if std::env::var_os("BLOCKVAULT_REQUIRE_FUSE").is_some_and(|v| v == "1") {
                    panic!("{test}: FUSE is required (BLOCKVAULT_REQUIRE_FUSE=1): {why}");
                }
                say(&format!(
                    "SKIPPED {test}: cannot mount the power-loss file system: {why}"
                ));
                None
            }
        }
    }

    fn check_mounted(&self) -> Result<(), String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let want = self.dir.path().to_string_lossy().to_string();
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()) && l.contains("powercut"))
        {
            Ok(())
        } else {
            Err(format!(
                "{want} is not in /proc/self/mountinfo after mounting"
            ))
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A power cut: everything not made durable is lost. Processes using the mount must be
    /// dead already (their open files are dropped).
    pub fn cut(&self) -> CutReport {
        let (report, inodes) = {
            let mut m = self.model.lock();
            let r = m.cut();
            (r, m.inode_numbers())
        };
        // Belt and braces: entries and attributes have a zero TTL and opens drop cached pages,
        // but tell the kernel anyway that everything it may hold is stale.
        if let Some(s) = &self.session {
            let n = s.notifier();
            for ino in inodes {
                let _ = n.inval_inode(fuser::INodeNo(ino), 0, 0);
            }
        }
        report
    }

    /// Counters of the model.
    pub fn stats(&self) -> Stats {
        self.model.lock().stats()
    }
}

impl Drop for PowerCutMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                say(&format!(
                    "powercut: unmounting {}: {e}",
                    self.dir.path().display()
                ));
            }
        }
    }
}

/// Prints a line on the process's stderr directly, so that it shows even when the test harness
/// captures the test's output.
pub fn say(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}
