//! A real loop device as backup source and as restore target, where `losetup` works here.
//! Loop devices are detached by a guard even when an assertion fails.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockvault_engine::{device::Source, Error, RestoreOptions};
use common::*;

/// An attached loop device, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(image: &Path) -> Result<Loop, String> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Loop(PathBuf::from(dev)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn read_device(p: &Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; len];
    std::fs::File::open(p).unwrap().read_exact(&mut v).unwrap();
    v
}

#[test]
fn loop_device_as_source_and_target() {
    let ts = TestStore::new();
    let data = mixed_bytes(32 << 20, 21);
    let img = ts.path("src.img");
    write_file(&img, &data);
    let src = match Loop::attach(&img) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIPPED loop_device_as_source_and_target: {why}");
            return;
        }
    };
    let s = Source::open(&src.0).unwrap();
    assert!(s.is_block_device);
    assert_eq!(s.size, data.len() as u64, "BLKGETSIZE64 size");

    let rec = ts.backup("loop", &src.0, false, true);
    assert_eq!(rec.size, data.len() as u64);

    // Restore onto a device holding other data: every byte, holes included, must match.
    let timg = ts.path("target.img");
    write_file(&timg, &random_bytes(32 << 20, 22));
    let tgt = Loop::attach(&timg).expect("second loop device");
    ts.engine()
        .restore(RestoreOptions::new(rec.id, &tgt.0))
        .unwrap();
    assert!(
        read_device(&tgt.0, data.len()) == data,
        "loop device restore differs"
    );

    // A smaller device is refused.
    let simg = ts.path("small.img");
    write_file(&simg, &vec![7u8; 16 << 20]);
    let small = Loop::attach(&simg).expect("third loop device");
    let err = ts
        .engine()
        .restore(RestoreOptions::new(rec.id, &small.0))
        .unwrap_err();
    assert!(matches!(err, Error::TargetTooSmall { .. }), "{err}");
    assert!(read_device(&small.0, 16 << 20).iter().all(|&b| b == 7));
}
