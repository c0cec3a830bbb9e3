//! Which host paths may become volumes.
//!
//! Registering a path is a privilege of the host, not of a tenant: a tenant who could register
//! any path could back up the daemon's own key or another tenant's disk and restore it into a
//! volume of their own, or restore over `/etc/passwd`. So:
//!
//! - a path is resolved (symlinks, `..`, `//`) before anything else, and must then lie under one
//!   of `[volumes] allowed_paths` or the restore directory;
//! - the data directory (except the restore directory inside it), the store, the control
//!   database, the key file, the token file, the TLS key and the config file are never allowed,
//!   whatever the config says;
//! - the resolved path is opened `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and checked with `fstat`
//!   before anything is read, so a FIFO, a socket or a character device is refused without side
//!   effects (opening a FIFO without `O_NONBLOCK` would block; reading `/dev/watchdog` arms it);
//! - a volume's [`Identity`] (`st_rdev` of a block device, `st_dev` + `st_ino` of a file) is
//!   recorded, so two registrations of one device under two names are refused, and a job checks
//!   before it runs that the path still names the registered device or file.
//!
//! For a tenant, "does not exist" and "not allowed" are the same answer, so the API cannot be
//! used to probe the host's file system.
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a volume's path names, independent of the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// A block device, by device number.
    Block { rdev: u64 },
    /// A regular file, by file system and inode.
    File { dev: u64, ino: u64 },
}

/// A path that passed every check, opened read-only.
#[derive(Debug)]
pub struct Checked {
    /// The resolved path.
    pub path: PathBuf,
    pub identity: Identity,
    /// Size in bytes.
    pub size: u64,
}

/// Why a path was refused. The messages name the field and never say whether a refused path
/// exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path: must be an absolute path")]
    NotAbsolute,
    #[error("path: {0} does not exist or is not allowed as a volume on this host")]
    NotAllowed(String),
    #[error("path: {0} is {1}; only block devices and regular image files can be volumes")]
    WrongType(String, &'static str),
    #[error("path: {0}: {1}")]
    Io(String, String),
}

/// The host's rules for volume paths.
#[derive(Clone, Debug)]
pub struct HostPaths {
    allowed: Vec<PathBuf>,
    own_volumes: PathBuf,
    forbidden: Vec<PathBuf>,
}

impl HostPaths {
    /// Rules from the allowed prefixes, the restore directory (always allowed), and the paths
    /// that are never allowed (data directory, key file, token file, ...). Paths are resolved
    /// where they exist and normalised lexically where they do not.
    pub fn new(allowed: &[PathBuf], restore_dir: &Path, forbidden: &[PathBuf]) -> HostPaths {
        HostPaths {
            allowed: allowed.iter().map(|p| resolve_lexically(p)).collect(),
            own_volumes: resolve_lexically(restore_dir),
            forbidden: forbidden.iter().map(|p| resolve_lexically(p)).collect(),
        }
    }

    fn allows(&self, p: &Path) -> bool {
        if self.forbidden.iter().any(|f| {
            // The restore directory may lie inside the data directory: it stays allowed.
            p.starts_with(f)
                && !(p.starts_with(&self.own_volumes) && self.own_volumes.starts_with(f))
        }) {
            return false;
        }
        // A prefix itself is not a volume (a directory); what lies below it may be.
        let under = |a: &PathBuf| p.starts_with(a) && p != a.as_path();
        under(&self.own_volumes) || self.allowed.iter().any(under)
    }

    /// Resolves `raw`, checks it against the rules, opens it without following a final symlink
    /// and without blocking, and checks its type. Nothing is read.
    pub fn check(&self, raw: &Path) -> Result<Checked, PathError> {
        if !raw.is_absolute() {
            return Err(PathError::NotAbsolute);
        }
        let shown = raw.to_string_lossy().into_owned();
        let path = std::fs::canonicalize(raw).map_err(|_| PathError::NotAllowed(shown.clone()))?;
        if !self.allows(&path) {
            return Err(PathError::NotAllowed(shown));
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => PathError::NotAllowed(shown.clone()),
                _ => PathError::Io(shown.clone(), e.to_string()),
            })?;
        let (identity, size) = identify(&f).map_err(|what| match what {
            Ok(kind) => PathError::WrongType(shown.clone(), kind),
            Err(e) => PathError::Io(shown.clone(), e.to_string()),
        })?;
        Ok(Checked {
            path,
            identity,
            size,
        })
    }
}

/// The identity and size of an open file, or what kind of file it is if it may not be a volume.
fn identify(f: &File) -> Result<(Identity, u64), Result<&'static str, std::io::Error>> {
    let m = f.metadata().map_err(Err)?;
    let t = m.file_type();
    if t.is_file() {
        return Ok((
            Identity::File {
                dev: m.dev(),
                ino: m.ino(),
            },
            m.len(),
        ));
    }
    if t.is_block_device() {
        let size = blockvault_engine::device::block_device_size(f).map_err(Err)?;
        return Ok((Identity::Block { rdev: m.rdev() }, size));
    }
    Err(Ok(if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }))
}

/// `p` with symlinks resolved as far as it exists, and `.`/`..` removed lexically beyond that.
fn resolve_lexically(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    match (out.parent(), out.file_name()) {
        (Some(parent), Some(name)) if parent != out => {
            let parent = resolve_lexically(parent);
            parent.join(name)
        }
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(d: &Path) -> HostPaths {
        HostPaths::new(
            &[d.join("images")],
            &d.join("data/volumes"),
            &[d.join("data"), d.join("secret.key")],
        )
    }

    #[test]
    fn only_allowed_regular_files_and_block_devices() {
        let d = tempfile::tempdir().unwrap();
        let d = d.path();
        for sub in ["images", "data/volumes", "other"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("images/a.img"), vec![1u8; 4096]).unwrap();
        std::fs::write(d.join("data/volumes/r.img"), b"r").unwrap();
        std::fs::write(d.join("data/admin.token"), b"t").unwrap();
        std::fs::write(d.join("other/b.img"), b"b").unwrap();
        std::fs::write(d.join("secret.key"), b"k").unwrap();
        let r = rules(d);
        let ok = r.check(&d.join("images/a.img")).unwrap();
        assert_eq!(ok.size, 4096);
        assert!(matches!(ok.identity, Identity::File { .. }));
        r.check(&d.join("data/volumes/r.img")).unwrap();
        let refused = |p: PathBuf| {
            assert!(
                matches!(r.check(&p), Err(PathError::NotAllowed(_))),
                "{} was not refused",
                p.display()
            )
        };
        refused(d.join("data/admin.token"));
        refused(d.join("other/b.img"));
        refused(d.join("images/../data/admin.token"));
        refused(d.join("images/missing.img"));
        refused(d.join("images"));
        std::os::unix::fs::symlink(d.join("data/admin.token"), d.join("images/link")).unwrap();
        refused(d.join("images/link"));
        std::os::unix::fs::symlink(d.join("secret.key"), d.join("images/key")).unwrap();
        refused(d.join("images/key"));
        assert_eq!(
            r.check(Path::new("images/a.img")).unwrap_err(),
            PathError::NotAbsolute
        );
        // The same answer for a missing path and a forbidden one.
        let a = r.check(&d.join("other/b.img")).unwrap_err().to_string();
        let b = r.check(&d.join("other/none.img")).unwrap_err().to_string();
        assert_eq!(
            a.replace("b.img", "X"),
            b.replace("none.img", "X"),
            "answers differ"
        );
    }

    #[test]
    fn fifos_and_character_devices_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("images")).unwrap();
        let fifo = d.path().join("images/fifo");
        nix_mkfifo(&fifo);
        let r = HostPaths::new(&[d.path().join("images")], &d.path().join("v"), &[]);
        assert!(matches!(
            r.check(&fifo),
            Err(PathError::WrongType(_, "a FIFO"))
        ));
        let dev = HostPaths::new(&[PathBuf::from("/dev")], &d.path().join("v"), &[]);
        assert!(matches!(
            dev.check(Path::new("/dev/null")),
            Err(PathError::WrongType(_, "a character device"))
        ));
    }

    fn nix_mkfifo(p: &Path) {
        let st = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}
