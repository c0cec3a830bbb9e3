//! Volumes as byte sources and restore targets: block devices and raw image files.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod ioctl {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t): the size of a block device in bytes.
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
}

/// Size in bytes of the block device open as `f`, from the `BLKGETSIZE64` ioctl.
#[allow(unsafe_code)]
pub fn block_device_size(f: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size = 0u64;
    // SAFETY: `f` is an open file descriptor for the whole call, and BLKGETSIZE64 writes exactly
    // one u64 through the pointer, which points at a live, aligned local.
    unsafe { ioctl::blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

/// A volume opened for reading.
pub struct Source {
    pub file: File,
    pub size: u64,
    pub is_block_device: bool,
    pub path: PathBuf,
}

impl Source {
    /// Opens a block device or raw image; its size comes from the ioctl or the file's length.
    pub fn open(path: &Path) -> Result<Source> {
        let err = |source| Error::Source {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let ft = file.metadata().map_err(err)?.file_type();
        let (size, is_block_device) = if ft.is_block_device() {
            (block_device_size(&file).map_err(err)?, true)
        } else if ft.is_file() {
            (file.metadata().map_err(err)?.len(), false)
        } else {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a block device or regular file",
            )));
        };
        // Best effort: tell the kernel we read sequentially (bigger readahead).
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        Ok(Source {
            file,
            size,
            is_block_device,
            path: path.to_path_buf(),
        })
    }
}

/// The data ranges `[start, end)` of a source, in order. What lies between them (and after the
/// last) is a hole of the file and reads as zeros, so a backup records it without reading it.
/// Block devices, and filesystems without `SEEK_DATA`, report one range covering everything.
pub struct DataRegions<'a> {
    file: &'a File,
    pos: u64,
    size: u64,
    dense: bool,
}

impl Source {
    /// Where this source's data lies (see [`DataRegions`]).
    pub fn data_regions(&self) -> DataRegions<'_> {
        self.data_regions_from(0)
    }

    /// Where this source's data lies from byte `pos` on (a range holding `pos` is reported as
    /// starting at `pos`).
    pub fn data_regions_from(&self, pos: u64) -> DataRegions<'_> {
        DataRegions {
            file: &self.file,
            pos,
            size: self.size,
            dense: self.is_block_device,
        }
    }
}

impl Iterator for DataRegions<'_> {
    type Item = std::io::Result<(u64, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        use nix::errno::Errno;
        use nix::unistd::{lseek, Whence};
        if self.pos >= self.size {
            return None;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.file);
        let rest = (self.pos, self.size);
        if self.dense {
            self.pos = self.size;
            return Some(Ok(rest));
        }
        match lseek(fd, self.pos as i64, Whence::SeekData) {
            Ok(start) => {
                let start = (start as u64).max(self.pos);
                if start >= self.size {
                    self.pos = self.size;
                    return None;
                }
                let end = lseek(fd, start as i64, Whence::SeekHole)
                    .map_or(self.size, |e| e as u64)
                    .clamp(start + 1, self.size);
                self.pos = end;
                Some(Ok((start, end)))
            }
            // No data after pos: the rest is a hole.
            Err(Errno::ENXIO) => {
                self.pos = self.size;
                None
            }
            // SEEK_DATA unsupported here: treat the rest as data.
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => {
                self.dense = true;
                self.pos = self.size;
                Some(Ok(rest))
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// A restore target.
pub struct Target {
    pub file: File,
    pub path: PathBuf,
    pub is_block_device: bool,
    /// True when this restore created the file (it is removed again if the restore fails).
    pub created: bool,
}

static ZEROS: [u8; 1 << 20] = [0u8; 1 << 20];

impl Target {
    /// Opens `path` for a restore of `need` bytes of `backup`. An existing target smaller than
    /// `need` is refused; a missing path becomes a new sparse file of exactly `need` bytes,
    /// mode 0600.
    pub fn open(path: &Path, need: u64, backup: blockvault_core::BackupId) -> Result<Target> {
        let p = path.display().to_string();
        let err = |source| Error::Target {
            path: p.clone(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(md) => {
                let ft = md.file_type();
                if !(ft.is_block_device() || ft.is_file()) {
                    return Err(Error::TargetKind(p));
                }
                let file = OpenOptions::new().write(true).open(path).map_err(err)?;
                let have = if ft.is_block_device() {
                    block_device_size(&file).map_err(err)?
                } else {
                    md.len()
                };
                if have < need {
                    return Err(Error::TargetTooSmall {
                        path: p,
                        have,
                        need,
                        backup,
                    });
                }
                Ok(Target {
                    file,
                    path: path.to_path_buf(),
                    is_block_device: ft.is_block_device(),
                    created: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // 0600: a restored image is the volume's plaintext, also when the backup was
                // encrypted, so only the restoring user may read it.
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(err)?;
                file.set_len(need).map_err(err)?;
                Ok(Target {
                    file,
                    path: path.to_path_buf(),
                    is_block_device: false,
                    created: true,
                })
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.err(e))
    }

    fn err(&self, source: std::io::Error) -> Error {
        Error::Target {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Makes `len` bytes at `offset` read as zeros. A new file already reads as zeros there (it
    /// stays sparse); an existing file gets a punched hole; a block device gets zeros written.
    pub fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if self.created {
            return Ok(());
        }
        if !self.is_block_device {
            use nix::fcntl::{fallocate, FallocateFlags};
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            if fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                flags,
                offset as i64,
                len as i64,
            )
            .is_ok()
            {
                return Ok(());
            }
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.write_at(&ZEROS[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Starts write-back of everything written so far without waiting for it, so that the
    /// final [`Target::sync`] has little left to do. `POSIX_FADV_DONTNEED` initiates write-back
    /// of dirty pages (and drops clean ones: a restore does not read its target back).
    pub fn start_writeback(&self) {
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&self.file),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    /// Flushes everything written to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|e| self.err(e))
    }
}
