//! The power-loss model, without FUSE: an in-memory tree of inodes where every file has current
//! and durable bytes and every directory has current and durable entries.
//!
//! Rules (stricter than ext4, as strict as POSIX allows):
//! - a write, truncate or mode change touches the current state only; `fsync`/`fdatasync` of the
//!   file makes its current bytes, size and mode durable (O_SYNC/O_DSYNC writes are synced
//!   writes);
//! - create, mkdir, link, rename, unlink and rmdir change the current entries of the directories
//!   involved only; `fsync` of a directory makes its current entries durable (the entries, not the
//!   contents of the inodes they name);
//! - [`Model::cut`] is a power cut: every directory's entries become its durable entries, every
//!   file's bytes its durable bytes, and every inode no longer reachable from the root is dropped.
//!
//! Not modelled: timestamps and ownership (kept as they are), torn writes (a write is all or
//! nothing), reordering inside one fsync.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// Bytes of a file as copy-on-write pages, so that an fsync (current -> durable) copies only page
/// pointers, and a later write copies only the pages it touches.
#[derive(Clone, Default, Debug)]
pub struct Bytes {
    size: u64,
    /// Page `i` holds bytes `[i*PAGE, (i+1)*PAGE)`; `None` is all zeros. Bytes past `size`
    /// inside a page are always zero.
    pages: Vec<Option<Arc<Vec<u8>>>>,
}

const PAGE: usize = 64 << 10;

impl Bytes {
    /// The length.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Up to `len` bytes at `off` (fewer at the end of the file).
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        if off >= self.size {
            return Vec::new();
        }
        let end = (off + len as u64).min(self.size);
        let mut out = vec![0u8; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let page = (pos / PAGE as u64) as usize;
            let in_page = (pos % PAGE as u64) as usize;
            let n = (PAGE - in_page).min((end - pos) as usize);
            if let Some(Some(p)) = self.pages.get(page) {
                let o = (pos - off) as usize;
                out[o..o + n].copy_from_slice(&p[in_page..in_page + n]);
            }
            pos += n as u64;
        }
        out
    }

    /// Writes `data` at `off`, extending the file.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        let need = end.div_ceil(PAGE as u64) as usize;
        if self.pages.len() < need {
            self.pages.resize(need, None);
        }
        let mut pos = off;
        while pos < end {
            let page = (pos / PAGE as u64) as usize;
            let in_page = (pos % PAGE as u64) as usize;
            let n = (PAGE - in_page).min((end - pos) as usize);
            let p = self.pages[page].get_or_insert_with(|| Arc::new(vec![0u8; PAGE]));
            let d = (pos - off) as usize;
            Arc::make_mut(p)[in_page..in_page + n].copy_from_slice(&data[d..d + n]);
            pos += n as u64;
        }
        self.size = self.size.max(end);
    }

    /// Sets the length: shrinking drops the bytes past it, growing adds zeros.
    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            let keep = size.div_ceil(PAGE as u64) as usize;
            self.pages.truncate(keep);
            let tail = (size % PAGE as u64) as usize;
            if tail != 0 {
                if let Some(Some(p)) = self.pages.last_mut() {
                    Arc::make_mut(p)[tail..].fill(0);
                }
            }
        }
        self.size = size;
    }

    /// Bytes held in pages (a measure of memory, not of the size).
    fn allocated(&self) -> u64 {
        self.pages.iter().flatten().count() as u64 * PAGE as u64
    }
}

/// File kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` reports.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: Kind,
    /// Size in bytes (directories: the number of entries).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Hard links (current entries naming the inode; directories report 2).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
}

#[derive(Clone, Debug)]
enum Body {
    File {
        cur: Bytes,
        dur: Bytes,
    },
    Dir {
        cur: BTreeMap<OsString, u64>,
        dur: BTreeMap<OsString, u64>,
    },
}

#[derive(Clone, Debug)]
struct Inode {
    body: Body,
    perm: u16,
    dur_perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Open handles.
    open: u32,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File { .. } => Kind::File,
            Body::Dir { .. } => Kind::Dir,
        }
    }
}

/// What a power cut threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose current bytes differed from their durable bytes.
    pub files_reverted: usize,
    /// Directories whose current entries differed from their durable entries.
    pub dirs_reverted: usize,
    /// Inodes dropped because no durable entry reaches them any more.
    pub inodes_dropped: usize,
}

/// Counters of the tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Inodes.
    pub inodes: usize,
    /// Bytes held in memory by current and durable file pages.
    pub allocated: u64,
    /// fsync calls on files.
    pub fsyncs: u64,
    /// fsync calls on directories.
    pub dir_fsyncs: u64,
    /// Power cuts.
    pub cuts: u64,
}

/// An errno.
pub type Errno = i32;
type R<T> = Result<T, Errno>;

/// The file system state.
#[derive(Debug)]
pub struct Model {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Open handles: handle -> (inode, open flags).
    handles: HashMap<u64, (u64, i32)>,
    next_fh: u64,
    /// Directory inode -> its parent (current tree), for `..`.
    parents: HashMap<u64, u64>,
    fsyncs: u64,
    dir_fsyncs: u64,
    cuts: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty file system: the root directory, durable, 0755.
    pub fn new() -> Model {
        let now = SystemTime::now();
        let root = Inode {
            body: Body::Dir {
                cur: BTreeMap::new(),
                dur: BTreeMap::new(),
            },
            perm: 0o755,
            dur_perm: 0o755,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
            open: 0,
        };
        Model {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            parents: HashMap::from([(ROOT, ROOT)]),
            fsyncs: 0,
            dir_fsyncs: 0,
            cuts: 0,
        }
    }

    fn node(&self, ino: u64) -> R<&Inode> {
        self.inodes.get(&ino).ok_or(libc::ESTALE)
    }

    fn node_mut(&mut self, ino: u64) -> R<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(libc::ESTALE)
    }

    fn entries(&self, dir: u64) -> R<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { cur, .. } => Ok(cur),
            Body::File { .. } => Err(libc::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> R<&mut BTreeMap<OsString, u64>> {
        let now = SystemTime::now();
        let n = self.node_mut(dir)?;
        n.mtime = now;
        n.ctime = now;
        match &mut n.body {
            Body::Dir { cur, .. } => Ok(cur),
            Body::File { .. } => Err(libc::ENOTDIR),
        }
    }

    /// Current links to `ino` (entries naming it).
    fn links(&self, ino: u64) -> u32 {
        self.inodes
            .values()
            .filter_map(|n| match &n.body {
                Body::Dir { cur, .. } => Some(cur.values().filter(|&&i| i == ino).count() as u32),
                Body::File { .. } => None,
            })
            .sum()
    }

    /// `stat` of an inode.
    pub fn getattr(&self, ino: u64) -> R<Attr> {
        let n = self.node(ino)?;
        let (size, nlink) = match &n.body {
            Body::File { cur, .. } => (cur.len(), self.links(ino)),
            Body::Dir { cur, .. } => (cur.len() as u64, 2),
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            size,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    /// The inode `name` in `parent` names.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> R<Attr> {
        let e = self.entries(parent)?;
        if name == "." {
            return self.getattr(parent);
        }
        if name == ".." {
            return self.getattr(*self.parents.get(&parent).unwrap_or(&ROOT));
        }
        let ino = *e.get(name).ok_or(libc::ENOENT)?;
        self.getattr(ino)
    }

    fn add_inode(&mut self, body: Body, perm: u16, uid: u32, gid: u32) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        self.inodes.insert(
            ino,
            Inode {
                body,
                perm,
                // A new inode's mode is part of its creation.
                dur_perm: perm,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                open: 0,
            },
        );
        ino
    }

    fn check_new_name(&self, parent: u64, name: &OsStr) -> R<()> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(libc::EINVAL);
        }
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    /// Creates an empty regular file.
    pub fn create(&mut self, parent: u64, name: &OsStr, perm: u16, uid: u32, gid: u32) -> R<Attr> {
        self.check_new_name(parent, name)?;
        let body = Body::File {
            cur: Bytes::default(),
            dur: Bytes::default(),
        };
        let ino = self.add_inode(body, perm, uid, gid);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.getattr(ino)
    }

    /// Creates an empty directory.
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, perm: u16, uid: u32, gid: u32) -> R<Attr> {
        self.check_new_name(parent, name)?;
        let body = Body::Dir {
            cur: BTreeMap::new(),
            dur: BTreeMap::new(),
        };
        let ino = self.add_inode(body, perm, uid, gid);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.parents.insert(ino, parent);
        self.getattr(ino)
    }

    /// Removes a file's entry.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> R<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.entries_mut(parent)?.remove(name);
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.sweep_if_unlinked(ino);
        Ok(())
    }

    /// Removes an empty directory's entry.
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> R<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        if !self.entries(ino)?.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.entries_mut(parent)?.remove(name);
        self.sweep_if_unlinked(ino);
        Ok(())
    }

    /// Adds a hard link.
    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> R<Attr> {
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        self.check_new_name(parent, name)?;
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.getattr(ino)
    }

    /// True when `dir` is `anc` or lies below it (current tree).
    fn is_within(&self, mut dir: u64, anc: u64) -> bool {
        loop {
            if dir == anc {
                return true;
            }
            match self.parents.get(&dir) {
                Some(&p) if p != dir => dir = p,
                _ => return false,
            }
        }
    }

    /// Renames `parent/name` to `newparent/newname`, replacing a file (or an empty directory)
    /// there. `noreplace` refuses an existing target.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> R<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(libc::ENOENT)?;
        self.entries(newparent)?;
        if newname.is_empty() || newname == "." || newname == ".." {
            return Err(libc::EINVAL);
        }
        let kind = self.node(ino)?.kind();
        if kind == Kind::Dir && self.is_within(newparent, ino) {
            return Err(libc::EINVAL);
        }
        let old = self.entries(newparent)?.get(newname).copied();
        if let Some(old) = old {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            match (kind, self.node(old)?.kind()) {
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !self.entries(old)?.is_empty() => {
                    return Err(libc::ENOTEMPTY)
                }
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(newparent)?.insert(newname.to_owned(), ino);
        if kind == Kind::Dir {
            self.parents.insert(ino, newparent);
        }
        self.node_mut(ino)?.ctime = SystemTime::now();
        if let Some(old) = old {
            self.sweep_if_unlinked(old);
        }
        Ok(())
    }

    /// Entries of a directory, `.` and `..` first.
    pub fn readdir(&self, dir: u64) -> R<Vec<(u64, Kind, OsString)>> {
        let e = self.entries(dir)?;
        let mut out = vec![
            (dir, Kind::Dir, OsString::from(".")),
            (
                *self.parents.get(&dir).unwrap_or(&ROOT),
                Kind::Dir,
                OsString::from(".."),
            ),
        ];
        for (name, &ino) in e {
            out.push((ino, self.node(ino)?.kind(), name.clone()));
        }
        Ok(out)
    }

    /// Opens an inode; returns the handle. `O_TRUNC` empties a file.
    pub fn open(&mut self, ino: u64, flags: i32) -> R<u64> {
        let n = self.node_mut(ino)?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            if let Body::File { cur, .. } = &mut n.body {
                cur.truncate(0);
            }
        }
        n.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, flags));
        Ok(fh)
    }

    /// Closes a handle.
    pub fn release(&mut self, fh: u64) {
        if let Some((ino, _)) = self.handles.remove(&fh) {
            if let Some(n) = self.inodes.get_mut(&ino) {
                n.open = n.open.saturating_sub(1);
            }
            self.sweep_if_unlinked(ino);
        }
    }

    /// Open flags of a handle.
    pub fn handle_flags(&self, fh: u64) -> Option<i32> {
        self.handles.get(&fh).map(|h| h.1)
    }

    fn file(&self, ino: u64) -> R<&Bytes> {
        match &self.node(ino)?.body {
            Body::File { cur, .. } => Ok(cur),
            Body::Dir { .. } => Err(libc::EISDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> R<&mut Bytes> {
        let now = SystemTime::now();
        let n = self.node_mut(ino)?;
        n.mtime = now;
        n.ctime = now;
        match &mut n.body {
            Body::File { cur, .. } => Ok(cur),
            Body::Dir { .. } => Err(libc::EISDIR),
        }
    }

    /// Reads from a file.
    pub fn read(&self, ino: u64, off: u64, len: usize) -> R<Vec<u8>> {
        Ok(self.file(ino)?.read(off, len))
    }

    /// Writes to a file; `sync` makes the file durable afterwards (O_SYNC/O_DSYNC).
    pub fn write(&mut self, ino: u64, off: u64, data: &[u8], sync: bool) -> R<usize> {
        off.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        self.file_mut(ino)?.write(off, data);
        if sync {
            self.fsync(ino)?;
        }
        Ok(data.len())
    }

    /// `chmod`, `truncate` and times.
    pub fn setattr(
        &mut self,
        ino: u64,
        perm: Option<u16>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> R<Attr> {
        if let Some(size) = size {
            self.file_mut(ino)?.truncate(size);
        }
        let n = self.node_mut(ino)?;
        if let Some(p) = perm {
            n.perm = p & 0o7777;
            n.ctime = SystemTime::now();
        }
        if let Some(t) = atime {
            n.atime = t;
        }
        if let Some(t) = mtime {
            n.mtime = t;
        }
        self.getattr(ino)
    }

    /// `fsync`/`fdatasync` of a file: its bytes, size and mode become durable. Of a directory
    /// (some callers fsync a directory through `fsync`): its entries.
    pub fn fsync(&mut self, ino: u64) -> R<()> {
        let n = self.node_mut(ino)?;
        n.dur_perm = n.perm;
        match &mut n.body {
            Body::File { cur, dur } => {
                *dur = cur.clone();
                self.fsyncs += 1;
                Ok(())
            }
            Body::Dir { .. } => self.fsyncdir(ino),
        }
    }

    /// `fsync` of a directory: its current entries become durable.
    pub fn fsyncdir(&mut self, ino: u64) -> R<()> {
        let n = self.node_mut(ino)?;
        n.dur_perm = n.perm;
        match &mut n.body {
            Body::Dir { cur, dur } => {
                *dur = cur.clone();
            }
            Body::File { .. } => return Err(libc::ENOTDIR),
        }
        self.dir_fsyncs += 1;
        self.sweep();
        Ok(())
    }

    /// Drops `ino` (and what only it reaches) once no entry, durable or current, and no handle
    /// can reach it any more.
    fn sweep_if_unlinked(&mut self, ino: u64) {
        let open = self.inodes.get(&ino).is_some_and(|n| n.open > 0);
        if !open && self.links(ino) == 0 {
            self.sweep();
        }
    }

    /// Drops every inode that neither the current nor the durable tree reaches and that no
    /// handle holds.
    fn sweep(&mut self) {
        let mut seen = HashSet::new();
        let mut todo: Vec<u64> = vec![ROOT];
        todo.extend(
            self.inodes
                .iter()
                .filter(|(_, n)| n.open > 0)
                .map(|(&i, _)| i),
        );
        while let Some(i) = todo.pop() {
            if !seen.insert(i) {
                continue;
            }
            if let Some(Body::Dir { cur, dur }) = self.inodes.get(&i).map(|n| &n.body) {
                todo.extend(cur.values().chain(dur.values()).copied());
            }
        }
        self.inodes.retain(|i, _| seen.contains(i));
        self.parents.retain(|i, _| seen.contains(i));
    }

    /// A power cut: every directory gets its durable entries back, every file its durable bytes
    /// and mode; inodes the durable tree does not reach are dropped, and so are all handles
    /// (the processes that held them are gone).
    pub fn cut(&mut self) -> CutReport {
        let mut r = CutReport::default();
        for n in self.inodes.values_mut() {
            n.perm = n.dur_perm;
            match &mut n.body {
                Body::File { cur, dur } => {
                    if cur.len() != dur.len() || cur.read(0, usize::MAX) != dur.read(0, usize::MAX)
                    {
                        r.files_reverted += 1;
                    }
                    *cur = dur.clone();
                }
                Body::Dir { cur, dur } => {
                    if cur != dur {
                        r.dirs_reverted += 1;
                    }
                    *cur = dur.clone();
                }
            }
            n.open = 0;
        }
        self.handles.clear();
        // Reachability and `..` over the durable tree.
        let mut parents = HashMap::from([(ROOT, ROOT)]);
        let mut seen = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(d) = todo.pop() {
            if let Some(Body::Dir { cur, .. }) = self.inodes.get(&d).map(|n| &n.body) {
                for &c in cur.values() {
                    if seen.insert(c) {
                        todo.push(c);
                        if matches!(self.inodes.get(&c).map(|n| &n.body), Some(Body::Dir { .. })) {
                            parents.insert(c, d);
                        }
                    }
                }
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|i, _| seen.contains(i));
        r.inodes_dropped = before - self.inodes.len();
        self.parents = parents;
        self.cuts += 1;
        r
    }

    /// Every inode number (for cache invalidation after a cut).
    pub fn inode_numbers(&self) -> Vec<u64> {
        self.inodes.keys().copied().collect()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let allocated = self
            .inodes
            .values()
            .map(|n| match &n.body {
                Body::File { cur, dur } => cur.allocated() + dur.allocated(),
                Body::Dir { .. } => 0,
            })
            .sum();
        Stats {
            inodes: self.inodes.len(),
            allocated,
            fsyncs: self.fsyncs,
            dir_fsyncs: self.dir_fsyncs,
            cuts: self.cuts,
        }
    }

    /// Resolves a `/`-separated path from the root (tests).
    pub fn resolve(&self, path: &str) -> R<u64> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.lookup(ino, OsStr::new(part))?.ino;
        }
        Ok(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// A file `name` in `dir` with `data` (not synced).
    fn file(m: &mut Model, dir: u64, name: &str, data: &[u8]) -> u64 {
        let a = m.create(dir, os(name), 0o644, 0, 0).unwrap();
        m.write(a.ino, 0, data, false).unwrap();
        a.ino
    }

    fn content(m: &Model, path: &str) -> Option<Vec<u8>> {
        let ino = m.resolve(path).ok()?;
        Some(m.read(ino, 0, usize::MAX).unwrap())
    }

    #[test]
    fn bytes_pages_read_write_truncate() {
        let mut b = Bytes::default();
        b.write(PAGE as u64 - 3, b"abcdef");
        assert_eq!(b.len(), PAGE as u64 + 3);
        assert_eq!(b.read(PAGE as u64 - 4, 100), b"\0abcdef");
        assert_eq!(b.read(0, 4), vec![0; 4]);
        let snap = b.clone();
        b.write(PAGE as u64 - 3, b"X");
        assert_eq!(snap.read(PAGE as u64 - 3, 1), b"a", "a clone is a snapshot");
        b.truncate(PAGE as u64 - 2);
        b.truncate(PAGE as u64 + 10);
        let mut want = vec![0u8; 13];
        want[0] = b'X';
        assert_eq!(
            b.read(PAGE as u64 - 3, 100),
            want,
            "cut at PAGE-2, then zeros"
        );
        b.truncate(0);
        assert!(b.is_empty() && b.read(0, 10).is_empty());
        b.write(3 * PAGE as u64, b"z");
        assert_eq!(b.read(0, usize::MAX).len(), 3 * PAGE + 1);
        assert_eq!(b.allocated(), PAGE as u64, "holes hold no pages");
    }

    #[test]
    fn unsynced_data_is_lost_synced_data_is_kept() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"synced");
        m.fsync(a).unwrap();
        let b = file(&mut m, ROOT, "b", b"never synced");
        m.fsyncdir(ROOT).unwrap();
        m.write(a, 6, b" and more", false).unwrap();
        m.write(b, 0, b"X", false).unwrap();
        let r = m.cut();
        assert_eq!(content(&m, "a").unwrap(), b"synced");
        assert_eq!(
            content(&m, "b").unwrap(),
            b"",
            "the entry is durable, the data not"
        );
        assert_eq!(r.files_reverted, 2);
        assert_eq!(m.getattr(a).unwrap().size, 6);
    }

    #[test]
    fn truncate_and_overwrite_revert_to_the_synced_bytes() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"0123456789");
        m.fsync(a).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.setattr(a, None, Some(2), None, None).unwrap();
        m.write(a, 5, b"zz", false).unwrap();
        assert_eq!(content(&m, "a").unwrap(), b"01\0\0\0zz");
        m.cut();
        assert_eq!(content(&m, "a").unwrap(), b"0123456789");
    }

    #[test]
    fn synced_writes_are_durable() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"");
        m.fsyncdir(ROOT).unwrap();
        m.write(a, 0, b"o_dsync", true).unwrap();
        m.cut();
        assert_eq!(content(&m, "a").unwrap(), b"o_dsync");
    }

    #[test]
    fn fsynced_file_in_a_never_fsynced_directory_entry_is_lost() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT, os("d"), 0o755, 0, 0).unwrap().ino;
        let f = file(&mut m, d, "f", b"data");
        m.fsync(f).unwrap();
        m.fsyncdir(d).unwrap();
        // `d` itself was never made durable in the root.
        let r = m.cut();
        assert!(m.resolve("d").is_err() && m.resolve("d/f").is_err());
        assert_eq!(r.inodes_dropped, 2);
        // The same with the root fsynced: everything kept.
        let d = m.mkdir(ROOT, os("d"), 0o755, 0, 0).unwrap().ino;
        let f = file(&mut m, d, "f", b"data");
        m.fsync(f).unwrap();
        m.fsyncdir(d).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        assert_eq!(content(&m, "d/f").unwrap(), b"data");
    }

    #[test]
    fn fsynced_file_whose_directory_was_not_fsynced_is_lost() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"data");
        m.fsync(f).unwrap();
        m.cut();
        assert!(content(&m, "f").is_none());
    }

    #[test]
    fn rename_is_durable_only_after_fsyncdir() {
        let mut m = Model::new();
        let old = file(&mut m, ROOT, "CURRENT", b"old");
        m.fsync(old).unwrap();
        m.fsyncdir(ROOT).unwrap();
        let tmp = file(&mut m, ROOT, "CURRENT.tmp", b"new");
        m.fsync(tmp).unwrap();
        m.rename(ROOT, os("CURRENT.tmp"), ROOT, os("CURRENT"), false)
            .unwrap();
        assert_eq!(content(&m, "CURRENT").unwrap(), b"new");
        m.cut();
        assert_eq!(content(&m, "CURRENT").unwrap(), b"old", "rename undone");
        assert!(content(&m, "CURRENT.tmp").is_none(), "tmp never durable");
        let tmp = file(&mut m, ROOT, "CURRENT.tmp", b"new");
        m.fsync(tmp).unwrap();
        m.rename(ROOT, os("CURRENT.tmp"), ROOT, os("CURRENT"), false)
            .unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        assert_eq!(content(&m, "CURRENT").unwrap(), b"new");
        assert!(content(&m, "CURRENT.tmp").is_none());
    }

    #[test]
    fn renamed_unsynced_data_is_lost_even_after_fsyncdir() {
        let mut m = Model::new();
        file(&mut m, ROOT, "tmp", b"new");
        m.rename(ROOT, os("tmp"), ROOT, os("cfg"), false).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        assert_eq!(
            content(&m, "cfg").unwrap(),
            b"",
            "classic missing file fsync"
        );
    }

    #[test]
    fn unlink_is_undone_without_fsyncdir() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"data");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.unlink(ROOT, os("f")).unwrap();
        assert!(content(&m, "f").is_none());
        m.cut();
        assert_eq!(content(&m, "f").unwrap(), b"data", "unlink undone");
        m.unlink(ROOT, os("f")).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        assert!(content(&m, "f").is_none());
        assert_eq!(m.stats().inodes, 1, "only the root remains");
    }

    #[test]
    fn mkdir_and_rmdir_need_fsyncdir_of_the_parent() {
        let mut m = Model::new();
        m.mkdir(ROOT, os("a"), 0o700, 0, 0).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.mkdir(ROOT, os("b"), 0o700, 0, 0).unwrap();
        m.rmdir(ROOT, os("a")).unwrap();
        m.cut();
        assert!(m.resolve("a").is_ok() && m.resolve("b").is_err());
        assert_eq!(m.rmdir(ROOT, os("x")), Err(libc::ENOENT));
        let a = m.resolve("a").unwrap();
        file(&mut m, a, "f", b"");
        assert_eq!(m.rmdir(ROOT, os("a")), Err(libc::ENOTEMPTY));
    }

    #[test]
    fn link_needs_fsyncdir() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"x");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.link(f, ROOT, os("g")).unwrap();
        assert_eq!(m.getattr(f).unwrap().nlink, 2);
        m.cut();
        assert!(content(&m, "g").is_none());
        assert_eq!(m.getattr(f).unwrap().nlink, 1);
    }

    #[test]
    fn rename_over_an_existing_file_and_errors() {
        let mut m = Model::new();
        file(&mut m, ROOT, "a", b"a");
        file(&mut m, ROOT, "b", b"b");
        m.mkdir(ROOT, os("d"), 0o755, 0, 0).unwrap();
        assert_eq!(
            m.rename(ROOT, os("a"), ROOT, os("b"), true),
            Err(libc::EEXIST)
        );
        assert_eq!(
            m.rename(ROOT, os("a"), ROOT, os("d"), false),
            Err(libc::EISDIR)
        );
        let d = m.resolve("d").unwrap();
        assert_eq!(
            m.rename(ROOT, os("d"), d, os("x"), false),
            Err(libc::EINVAL),
            "a directory into itself"
        );
        m.rename(ROOT, os("a"), ROOT, os("b"), false).unwrap();
        assert_eq!(content(&m, "b").unwrap(), b"a");
        assert!(content(&m, "a").is_none());
        assert_eq!(m.readdir(ROOT).unwrap().len(), 4, ". .. b d");
    }

    #[test]
    fn unlinked_open_file_stays_readable_until_released() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"pack");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        let fh = m.open(f, libc::O_RDONLY).unwrap();
        m.unlink(ROOT, os("f")).unwrap();
        m.fsyncdir(ROOT).unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"pack");
        m.release(fh);
        assert_eq!(m.read(f, 0, 100), Err(libc::ESTALE), "freed once closed");
    }

    #[test]
    fn mode_changes_need_fsync() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"");
        m.fsyncdir(ROOT).unwrap();
        m.setattr(f, Some(0o600), None, None, None).unwrap();
        m.cut();
        assert_eq!(m.getattr(f).unwrap().perm, 0o644);
        m.setattr(f, Some(0o600), None, None, None).unwrap();
        m.fsync(f).unwrap();
        m.cut();
        assert_eq!(m.getattr(f).unwrap().perm, 0o600);
    }

    #[test]
    fn open_o_trunc_empties_the_current_bytes_only() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"abc");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        let fh = m.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
        assert_eq!(m.getattr(f).unwrap().size, 0);
        m.release(fh);
        m.cut();
        assert_eq!(content(&m, "f").unwrap(), b"abc");
    }
}
