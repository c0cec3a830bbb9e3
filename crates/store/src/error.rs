//! Errors of the chunk store. Every variant carries what it was about (path, chunk, backup).
use blockvault_core::{BackupId, ChunkId, PackId};

/// Result alias for the store crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    /// The index's `LOCK` file is locked: another `Store` (in this or another process) has the
    /// store open. Decided by an fcntl probe of the lock, never by an error message.
    #[error("the store at {0} is in use by another blockvault process")]
    Busy(String),
    /// The index cannot be opened by this build: RocksDB refused its files or options as
    /// unsupported or invalid (written by a newer RocksDB, or with other options). Not
    /// retryable, and not corruption: the files may be intact.
    #[error("index {path} cannot be opened by this build (RocksDB version or options): {detail}")]
    IndexIncompatible { path: String, detail: String },
    #[error("{0}")]
    Core(#[from] blockvault_core::Error),
    #[error("chunk {0} is missing from the store")]
    MissingChunk(ChunkId),
    #[error("pack {pack} is missing (chunk {chunk})")]
    MissingPack { pack: PackId, chunk: ChunkId },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("backup {0} not found")]
    BackupNotFound(BackupId),
    #[error("invalid store config: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    /// Maps a RocksDB error of an index operation. Classified by RocksDB's status code
    /// ([`rocksdb::Error::kind`]), never by message text: a corruption status is
    /// [`Error::Corrupt`] naming the damaged file (not retryable), everything else stays
    /// [`Error::Db`].
    pub(crate) fn db(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
        move |source| match source.kind() {
            rocksdb::ErrorKind::Corruption => Error::corrupt_index(None, &source),
            _ => Error::Db { op, source },
        }
    }

    /// [`Error::Corrupt`] for a RocksDB corruption status. The damaged file's path is taken
    /// from the message for display only; without one the index directory is named.
    pub(crate) fn corrupt_index(index: Option<&std::path::Path>, e: &rocksdb::Error) -> Error {
        let msg = e.to_string();
        let what = match (damaged_file(&msg), index) {
            (Some(f), _) => format!("index file {f}"),
            (None, Some(dir)) => format!("index {}", dir.display()),
            (None, None) => "index".to_string(),
        };
        Error::Corrupt { what, detail: msg }
    }
    /// True when retrying the same operation later may succeed (I/O and index errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Db { .. } | Error::Busy(_))
    }
}

/// The first path of a RocksDB file (table, WAL, MANIFEST, blob, OPTIONS, CURRENT) named in a
/// RocksDB message. For display only: errors are classified by their status code.
pub(crate) fn damaged_file(msg: &str) -> Option<&str> {
    msg.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '"' | '\'' | '(' | ')'))
        .map(|t| t.trim_end_matches([':', '.']))
        .find(|t| {
            let name = t.rsplit('/').next().unwrap_or(t);
            t.contains('/')
                && ([".sst", ".log", ".blob"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
                    || ["MANIFEST-", "OPTIONS-", "CURRENT"]
                        .iter()
                        .any(|p| name.starts_with(p)))
        })
}

#[cfg(test)]
mod tests {
    use super::damaged_file;

    #[test]
    fn damaged_file_is_found_in_rocksdb_messages() {
        let cases = [
            (
                "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 1  in /s/index/000009.sst offset 0 size 80",
                Some("/s/index/000009.sst"),
            ),
            (
                "Corruption: Corruption: checksum mismatch in file /s/index/MANIFEST-000005",
                Some("/s/index/MANIFEST-000005"),
            ),
            ("Corruption: bad record length in /s/index/000004.log:", Some("/s/index/000004.log")),
            ("Corruption: bad block contents", None),
            ("IO error: lock file", None),
        ];
        for (msg, want) in cases {
            assert_eq!(damaged_file(msg), want, "{msg}");
        }
    }
}
