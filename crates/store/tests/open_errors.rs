//! Opening a store: a corrupt index is `Corrupt` naming the damaged file, a store already open is
//! `Busy`, an index written with other options is `IndexIncompatible`. None of them is decided by
//! RocksDB's message text ("block checksum mismatch" contains "lock").
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use blockvault_core::ChunkId;
use blockvault_store::{Error, Store, StoreConfig};

/// A store with a few thousand indexed chunks, flushed so that its index has SST files.
fn store_with_tables(dir: &Path) {
    let s = Store::init(dir, StoreConfig::default()).unwrap();
    let mut w = s.new_pack().unwrap();
    for i in 0u32..4000 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        w.append(ChunkId(id), 100, &[i as u8; 60]).unwrap();
    }
    s.seal_pack(w).unwrap();
    s.flush().unwrap();
}

/// The largest SST file of the index (the `chunks` table).
fn largest_sst(index: &Path) -> PathBuf {
    std::fs::read_dir(index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the flush wrote an SST file")
}

/// Flips 8 bytes at each of `offsets` (negative: from the end).
fn flip(file: &Path, offsets: &[i64]) {
    let len = std::fs::metadata(file).unwrap().len() as i64;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    for &o in offsets {
        let at = if o < 0 { len + o } else { o } as u64;
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        for x in &mut b {
            *x ^= 0x5a;
        }
        f.write_all_at(&b, at).unwrap();
    }
}

#[test]
fn corrupt_index_table_is_corrupt_naming_the_file_not_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_tables(&dir);
    let sst = largest_sst(&dir.join("index"));
    // The table's tail (index, meta-index, footer) is read and checksummed at open.
    flip(&sst, &[-200, -120, -60]);
    let err = Store::open(&dir).err().expect("a corrupt index opened");
    match &err {
        Error::Corrupt { what, .. } => {
            assert_eq!(*what, format!("index file {}", sst.display()), "{err}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!err.is_retryable());
}

#[test]
fn corrupt_index_data_block_is_corrupt_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_tables(&dir);
    let sst = largest_sst(&dir.join("index"));
    // Data blocks are read only when used: the open succeeds, the read is Corrupt.
    flip(&sst, &[100, 5000, 20000]);
    let s = Store::open(&dir).unwrap();
    let err = s
        .chunks()
        .find_map(|c| c.err())
        .expect("a corrupt table read clean");
    match &err {
        Error::Corrupt { what, .. } => assert!(what.contains(&*sst.to_string_lossy()), "{err}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!err.is_retryable());
}

#[test]
fn second_open_while_a_store_is_open_is_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let first = Store::init(&dir, StoreConfig::default()).unwrap();
    for _ in 0..2 {
        match Store::open(&dir) {
            Err(Error::Busy(p)) => assert_eq!(p, dir.display().to_string()),
            Err(e) => panic!("expected Busy, got {e:?}"),
            Ok(_) => panic!("a second open of the store succeeded"),
        }
    }
    // Regression: probing the lock file of a store this process has open would close a
    // descriptor of it, which drops the process's POSIX lock. The lock must still hold.
    let h = helper(&dir);
    assert_eq!(
        h.answer, "busy",
        "another process could open a store that is open here"
    );
    h.finish();
    drop(first);
    Store::open(&dir).expect("the lock is released when the store closes");
}

#[test]
fn index_with_another_comparator_is_incompatible_not_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(Store::init(&dir, StoreConfig::default()).unwrap());
    // Replace the index by one whose `chunks` family sorts with another comparator.
    let index = dir.join("index");
    std::fs::remove_dir_all(&index).unwrap();
    let mut db_opts = rocksdb::Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    let mut cf_opts = rocksdb::Options::default();
    cf_opts.set_comparator("blockvault.test.reverse", Box::new(|a, b| b.cmp(a)));
    let cfs = vec![rocksdb::ColumnFamilyDescriptor::new("chunks", cf_opts)];
    drop(rocksdb::DB::open_cf_descriptors(&db_opts, &index, cfs).unwrap());

    let err = Store::open(&dir)
        .err()
        .expect("opened with another comparator");
    match &err {
        Error::IndexIncompatible { path, .. } => assert_eq!(*path, index.display().to_string()),
        other => panic!("expected IndexIncompatible, got {other:?}"),
    }
    assert!(!err.is_retryable());
}

/// Set in the helper process of [`store_open_in_another_process_is_busy`].
const HOLD_ENV: &str = "BLOCKVAULT_TEST_HOLD_STORE";

/// Not a test on its own: the helper process that keeps a store open until its stdin closes.
#[test]
#[ignore]
fn hold_store_open_helper() {
    let Some(dir) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    match Store::open(&dir) {
        Ok(_s) => {
            println!("ready");
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
        }
        Err(Error::Busy(_)) => println!("busy"),
        Err(e) => println!("error {e}"),
    }
}

/// The helper process, with its answer (`ready`, `busy` or `error ..`).
struct Helper {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    answer: String,
}

impl Helper {
    /// Lets the helper close its store and end; checks that it ended well.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "{rest}");
    }
}

/// Starts the helper on `dir` and waits for its answer.
fn helper(dir: &Path) -> Helper {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_store_open_helper",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLD_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // The test harness prints its own lines first; an empty answer means the helper ended.
    let answer = loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break String::new();
        }
        let l = line.trim();
        if l == "ready" || l == "busy" || l.starts_with("error") {
            break l.to_string();
        }
    };
    Helper { child, out, answer }
}

#[test]
fn store_open_in_another_process_is_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(Store::init(&dir, StoreConfig::default()).unwrap());
    let h = helper(&dir);
    assert_eq!(h.answer, "ready");
    let res = Store::open(&dir);
    h.finish();
    match res {
        Err(Error::Busy(p)) => assert_eq!(p, dir.display().to_string()),
        Err(e) => panic!("expected Busy, got {e:?}"),
        Ok(_) => panic!("opened a store another process has open"),
    }
    Store::open(&dir).expect("the helper's lock is gone");
}
