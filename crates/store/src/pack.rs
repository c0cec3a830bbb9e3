//! Pack files: append-only containers of chunk envelopes, behind the [`PackStorage`] trait.
//!
//! Pack layout (see FORMAT.md): a 24-byte header (`PACK_MAGIC`, pack id), then entries of
//! `"BVCE" | chunk id (32) | envelope length u32 LE | envelope`, then (version 2) a MACed
//! trailer listing the entries (`trailer.rs`). The entry header lets every read check that the
//! index pointed at the chunk it expected; the trailer lets `recover` rebuild the index from a
//! pack's tail without reading its chunks.
//!
//! The trait is deliberately narrow (create/append/finish, ranged read, delete, list) so that
//! an object-store backend (S3, Ceph RGW, MinIO) can implement it: a sink may buffer or
//! multipart-upload, and `finish` must not return before the pack is durable.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockvault_core::format::{
    PACK_ENTRY_HEADER_LEN, PACK_ENTRY_MAGIC, PACK_HEADER_LEN, PACK_MAGIC,
};
use blockvault_core::{CatalogKey, ChunkId, PackId};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::index::ChunkLoc;

/// Where pack bytes live.
pub trait PackStorage: Send + Sync + 'static {
    /// Starts a new pack. Nothing is visible to readers until the sink is finished.
    fn create(&self, id: PackId) -> io::Result<Box<dyn PackSink>>;
    /// Reads `len` bytes at `offset` of a finished pack. A missing pack is `NotFound`.
    fn read_at(&self, id: PackId, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Reads several ranges of one finished pack, in order. A backend may merge neighbouring
    /// ranges into one request and run requests in parallel (an object store does); the
    /// default reads them one by one.
    fn read_ranges(&self, id: PackId, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
        ranges
            .iter()
            .map(|r| {
                let len = usize::try_from(r.end.saturating_sub(r.start))
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range over usize"))?;
                self.read_at(id, r.start, len)
            })
            .collect()
    }
    /// Reads worth running at once: an object store answers each request after a round trip,
    /// so readers keep several in flight; a local disk needs no more than one per core.
    fn read_concurrency(&self) -> usize {
        1
    }
    /// Removes a pack (idempotent).
    fn delete(&self, id: PackId) -> io::Result<()>;
    /// Every pack present, finished or not, with its size in bytes.
    fn list_sized(&self) -> io::Result<Vec<(PackId, u64)>>;
    /// Every pack present, finished or not.
    fn list(&self) -> io::Result<Vec<PackId>> {
        Ok(self.list_sized()?.into_iter().map(|(id, _)| id).collect())
    }
    /// A human description for error messages.
    fn describe(&self, id: PackId) -> String;
    /// Where this storage keeps its objects, for messages (a directory, a bucket URL).
    fn location(&self) -> String {
        "pack storage".into()
    }

    /// Writes catalog object `name` (a `/`-separated relative name made by the store, see
    /// `catalog.rs`), replacing any object of that name atomically. Durable when it returns.
    fn put_meta(&self, name: &str, body: &[u8]) -> io::Result<()>;
    /// Reads catalog object `name`; `None` when there is none.
    fn get_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Removes catalog object `name` (idempotent, durable when it returns).
    fn delete_meta(&self, name: &str) -> io::Result<()>;
    /// Names of the catalog objects that start with `prefix` (which ends in `/`), sorted.
    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// Whether objects can be placed under retention (S3 Object Lock), and if not, why.
    fn object_lock(&self) -> io::Result<ObjectLock> {
        Ok(ObjectLock::Unavailable(format!(
            "{} cannot keep objects under retention",
            self.location()
        )))
    }
    /// Keeps `object` from being deleted or overwritten until `until` (unix seconds) at least,
    /// and returns the retention it now has (later than `until` when it already had a later
    /// one). A backend without [`PackStorage::object_lock`] answers `Unsupported`.
    fn retain(&self, object: Object<'_>, mode: RetentionMode, until: u64) -> io::Result<u64> {
        let _ = (object, mode, until);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} cannot keep objects under retention", self.location()),
        ))
    }
}

/// An object of a pack storage: a pack, or a catalog object by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object<'a> {
    Pack(PackId),
    Meta(&'a str),
}

/// Whether a pack storage can hold objects under retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLock {
    /// It can (a bucket with S3 Object Lock enabled).
    Available,
    /// It cannot; the reason, for the operator.
    Unavailable(String),
}

/// S3 Object Lock retention modes. Under `Compliance` nobody can shorten the retention or
/// delete the object before it ends; under `Governance` a user with the
/// `s3:BypassGovernanceRetention` permission can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    Governance,
    Compliance,
}

impl RetentionMode {
    /// The name S3 uses (`GOVERNANCE`, `COMPLIANCE`).
    pub fn as_s3(self) -> &'static str {
        match self {
            RetentionMode::Governance => "GOVERNANCE",
            RetentionMode::Compliance => "COMPLIANCE",
        }
    }
}

/// A pack being written.
pub trait PackSink: Send {
    /// Appends bytes.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the pack durable; after this returns the pack may be referenced by the index.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Writes `body` to `path` (created 0600) and fsyncs it.
pub(crate) fn write_durably(path: &Path, body: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(body).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Fsyncs a directory so that entries created or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Pack files on a local filesystem: `packs/<first two hex digits>/<pack id>.pack`.
pub struct LocalPacks {
    root: PathBuf,
    /// Catalog objects: `meta/` beside `packs/`.
    meta: PathBuf,
    /// Open read handles. Reading through a handle keeps working after GC unlinks the file.
    handles: Mutex<HashMap<PackId, Arc<File>>>,
}

const MAX_OPEN_HANDLES: usize = 256;

impl LocalPacks {
    /// Pack storage under `root` (created if missing); catalog objects go to `meta/` beside it.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let meta = root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("meta");
        Ok(LocalPacks {
            root,
            meta,
            handles: Mutex::new(HashMap::new()),
        })
    }

    /// The file of catalog object `name`; `None` for a name the store never makes.
    fn meta_path(&self, name: &str) -> io::Result<PathBuf> {
        crate::catalog::check_name(name)?;
        Ok(self.meta.join(name))
    }

    fn path(&self, id: PackId) -> PathBuf {
        let h = id.to_hex();
        self.root.join(&h[..2]).join(format!("{h}.pack"))
    }

    /// A cached handle of the pack. The open happens under the cache lock, and `delete` unlinks
    /// under the same lock, so a handle of a deleted pack is never cached (it would keep the
    /// file's space allocated).
    fn handle(&self, id: PackId) -> io::Result<Arc<File>> {
        let mut h = self.handles.lock();
        if let Some(f) = h.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(id))?);
        if h.len() >= MAX_OPEN_HANDLES {
            h.clear();
        }
        h.insert(id, f.clone());
        Ok(f)
    }
}

struct LocalSink {
    file: BufWriter<File>,
    dir: PathBuf,
}

impl PackSink for LocalSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()
    }
}

impl PackStorage for LocalPacks {
    fn create(&self, id: PackId) -> io::Result<Box<dyn PackSink>> {
        let path = self.path(id);
        let dir = path.parent().expect("pack path has a parent").to_path_buf();
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            File::open(&self.root)?.sync_all()?;
        }
        // 0600: packs of unencrypted volumes hold their plaintext (compressed at most).
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Box::new(LocalSink {
            file: BufWriter::with_capacity(1 << 20, file),
            dir,
        }))
    }

    fn read_at(&self, id: PackId, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self.handle(id)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn delete(&self, id: PackId) -> io::Result<()> {
        let path = self.path(id);
        let removed = {
            let mut h = self.handles.lock();
            h.remove(&id);
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => File::open(path.parent().expect("parent"))?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list_sized(&self) -> io::Result<Vec<(PackId, u64)>> {
        let mut out = Vec::new();
        for sub in std::fs::read_dir(&self.root)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name.strip_suffix(".pack").and_then(PackId::from_hex) {
                    // A pack GC removed between the listing and the stat is simply gone.
                    match f.metadata() {
                        Ok(md) => out.push((id, md.len())),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(out)
    }

    fn describe(&self, id: PackId) -> String {
        self.path(id).display().to_string()
    }

    fn location(&self) -> String {
        self.meta.display().to_string()
    }

    fn put_meta(&self, name: &str, body: &[u8]) -> io::Result<()> {
        let path = self.meta_path(name)?;
        let dir = path.parent().expect("catalog path has a parent");
        create_dirs_durably(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{:016x}",
            path.file_name().expect("name").to_string_lossy(),
            rand::random::<u64>()
        ));
        let res = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(body)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| File::open(dir)?.sync_all());
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn get_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.meta_path(name)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete_meta(&self, name: &str) -> io::Result<()> {
        let path = self.meta_path(name)?;
        let dir = path.parent().expect("parent");
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir_if_there(dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // A backup's directory goes with its last object (it fails while others remain).
        if dir != self.meta && std::fs::remove_dir(dir).is_ok() {
            sync_dir_if_there(dir.parent().expect("parent"))?;
        }
        Ok(())
    }

    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.meta_path(prefix.trim_end_matches('/'))?;
        let mut out = Vec::new();
        let mut stack = vec![(dir, prefix.to_string())];
        while let Some((d, rel)) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for f in rd {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // a temporary file of an interrupted put
                }
                if f.file_type()?.is_dir() {
                    stack.push((f.path(), format!("{rel}{name}/")));
                } else {
                    out.push(format!("{rel}{name}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Fsyncs `dir`; a directory a concurrent delete removed has nothing left to make durable.
fn sync_dir_if_there(dir: &Path) -> io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents, fsyncing each parent whose entries changed.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs_durably(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(dir.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Packs in memory, for tests of everything above the storage.
#[derive(Default)]
pub struct MemoryPacks {
    packs: Arc<RwLock<HashMap<PackId, Arc<Vec<u8>>>>>,
    meta: RwLock<std::collections::BTreeMap<String, Vec<u8>>>,
    /// With [`MemoryPacks::with_object_lock`]: objects under retention and until when.
    retained: Option<Mutex<HashMap<String, u64>>>,
    /// Objects deleted while under retention: a locked bucket is versioned, so such a delete
    /// only hides the object behind a delete marker and the retained version stays.
    hidden_retained: Mutex<Vec<String>>,
}

impl MemoryPacks {
    /// Memory packs that behave like a bucket with S3 Object Lock enabled.
    pub fn with_object_lock() -> MemoryPacks {
        MemoryPacks {
            retained: Some(Mutex::default()),
            ..MemoryPacks::default()
        }
    }

    /// The retention of `object` (unix seconds), if it has one.
    pub fn retention(&self, object: Object<'_>) -> Option<u64> {
        let r = self.retained.as_ref()?;
        r.lock().get(&memory_name(object)).copied()
    }

    /// Objects deleted while they were under retention (a bucket keeps them as noncurrent
    /// versions).
    pub fn hidden_retained(&self) -> Vec<String> {
        self.hidden_retained.lock().clone()
    }

    /// Notes a delete of `object` that a locked bucket would only hide.
    fn note_delete(&self, object: Object<'_>) {
        let now = blockvault_core::unix_now();
        if self.retention(object).is_some_and(|until| until > now) {
            self.hidden_retained.lock().push(memory_name(object));
        }
    }
}

fn memory_name(object: Object<'_>) -> String {
    match object {
        Object::Pack(id) => format!("pack {id}"),
        Object::Meta(name) => format!("meta {name}"),
    }
}

struct MemorySink {
    id: PackId,
    buf: Vec<u8>,
    packs: Arc<RwLock<HashMap<PackId, Arc<Vec<u8>>>>>,
}

impl PackSink for MemorySink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(buf);
        Ok(())
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.packs.write().insert(self.id, Arc::new(self.buf));
        Ok(())
    }
}

impl PackStorage for MemoryPacks {
    fn create(&self, id: PackId) -> io::Result<Box<dyn PackSink>> {
        Ok(Box::new(MemorySink {
            id,
            buf: Vec::new(),
            packs: self.packs.clone(),
        }))
    }
    fn read_at(&self, id: PackId, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let p = self
            .packs
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such pack"))?;
        let start = offset as usize;
        p.get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past pack end"))
    }
    fn delete(&self, id: PackId) -> io::Result<()> {
        if self.packs.write().remove(&id).is_some() {
            self.note_delete(Object::Pack(id));
        }
        Ok(())
    }
    fn list_sized(&self) -> io::Result<Vec<(PackId, u64)>> {
        Ok(self
            .packs
            .read()
            .iter()
            .map(|(id, p)| (*id, p.len() as u64))
            .collect())
    }
    fn describe(&self, id: PackId) -> String {
        format!("memory pack {id}")
    }
    fn put_meta(&self, name: &str, body: &[u8]) -> io::Result<()> {
        crate::catalog::check_name(name)?;
        // A locked bucket is versioned: a PUT over a retained object adds a version and the
        // retained one stays. Memory keeps one version, so the retention stays on the name.
        self.meta.write().insert(name.to_string(), body.to_vec());
        Ok(())
    }
    fn get_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.meta.read().get(name).cloned())
    }
    fn delete_meta(&self, name: &str) -> io::Result<()> {
        if self.meta.write().remove(name).is_some() {
            self.note_delete(Object::Meta(name));
        }
        Ok(())
    }
    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self
            .meta
            .read()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn object_lock(&self) -> io::Result<ObjectLock> {
        Ok(match self.retained {
            Some(_) => ObjectLock::Available,
            None => ObjectLock::Unavailable("memory packs without object lock".into()),
        })
    }
    fn retain(&self, object: Object<'_>, _mode: RetentionMode, until: u64) -> io::Result<u64> {
        let Some(r) = &self.retained else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "memory packs without object lock",
            ));
        };
        let exists = match object {
            Object::Pack(id) => self.packs.read().contains_key(&id),
            Object::Meta(name) => self.meta.read().contains_key(name),
        };
        if !exists {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{object:?}: not found"),
            ));
        }
        let mut r = r.lock();
        let t = r.entry(memory_name(object)).or_default();
        *t = (*t).max(until);
        Ok(*t)
    }
}

/// A pack made durable by [`PackWriter::finish`].
pub(crate) struct SealedPack {
    pub size: u64,
    pub entries: Vec<(ChunkId, ChunkLoc)>,
}

/// Appends chunk entries to one new pack and remembers where each went.
pub struct PackWriter {
    id: PackId,
    sink: Box<dyn PackSink>,
    /// MACs the trailer.
    key: CatalogKey,
    size: u64,
    entries: Vec<(ChunkId, ChunkLoc)>,
    by_id: HashMap<ChunkId, usize>,
}

impl PackWriter {
    pub(crate) fn new(
        id: PackId,
        mut sink: Box<dyn PackSink>,
        key: CatalogKey,
    ) -> io::Result<Self> {
        let mut header = [0u8; PACK_HEADER_LEN as usize];
        header[..8].copy_from_slice(&PACK_MAGIC);
        header[8..].copy_from_slice(&id.0);
        sink.write_all(&header)?;
        Ok(PackWriter {
            id,
            sink,
            key,
            size: PACK_HEADER_LEN,
            entries: Vec::new(),
            by_id: HashMap::new(),
        })
    }

    /// The pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Number of chunk entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when no chunk has been appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Ids of the chunks appended so far.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.by_id.keys()
    }
    /// True when this (unsealed) pack already holds `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Appends one chunk envelope.
    pub fn append(&mut self, id: ChunkId, raw_len: u32, envelope: &[u8]) -> io::Result<()> {
        let len = u32::try_from(envelope.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "envelope over 4 GiB"))?;
        let mut h = [0u8; PACK_ENTRY_HEADER_LEN as usize];
        h[..4].copy_from_slice(&PACK_ENTRY_MAGIC);
        h[4..36].copy_from_slice(id.as_bytes());
        h[36..40].copy_from_slice(&len.to_le_bytes());
        self.sink.write_all(&h)?;
        self.sink.write_all(envelope)?;
        let loc = ChunkLoc {
            pack: self.id,
            offset: self.size,
            len,
            raw_len,
        };
        self.by_id.insert(id, self.entries.len());
        self.entries.push((id, loc));
        self.size += PACK_ENTRY_HEADER_LEN + u64::from(len);
        Ok(())
    }

    /// Appends the trailer, makes the pack durable and returns its entries.
    pub(crate) fn finish(mut self) -> io::Result<SealedPack> {
        let trailer = crate::trailer::encode(self.id, self.size, &self.entries, &self.key);
        self.sink.write_all(&trailer)?;
        self.sink.finish()?;
        Ok(SealedPack {
            size: self.size + trailer.len() as u64,
            entries: self.entries,
        })
    }
}

/// A pack entry read from storage, header checked; derefs to the chunk's envelope without
/// copying it out of the read buffer.
pub struct EntryBytes(Vec<u8>);

impl std::ops::Deref for EntryBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0[PACK_ENTRY_HEADER_LEN as usize..]
    }
}

impl std::ops::DerefMut for EntryBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0[PACK_ENTRY_HEADER_LEN as usize..]
    }
}

/// Checks a pack entry read from storage (magic, id, length) and wraps it.
pub(crate) fn check_entry(raw: Vec<u8>, id: &ChunkId) -> std::result::Result<EntryBytes, String> {
    let h = PACK_ENTRY_HEADER_LEN as usize;
    if raw.len() < h || raw[..4] != PACK_ENTRY_MAGIC {
        return Err("bad pack entry magic".into());
    }
    if raw[4..36] != id.as_bytes()[..] {
        return Err("pack entry holds a different chunk id".into());
    }
    let len = u32::from_le_bytes(raw[36..40].try_into().expect("4 bytes")) as usize;
    if len != raw.len() - h {
        return Err("pack entry length disagrees with the index".into());
    }
    Ok(EntryBytes(raw))
}
