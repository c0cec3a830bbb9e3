//! The changed-block-tracking flags shared by `local backup` and `backup create`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// A changed-extents file is read whole; past this size it is refused (a dirty bitmap of a
/// 1 TiB disk at 64 KiB granularity, every other bit set, is about 16 MiB of JSON).
const MAX_FILE: u64 = 256 << 20;

#[derive(Args, Clone, Debug, Default)]
pub struct CbtArgs {
    /// Read only the extents that changed since the parent (changed-block tracking): a JSON file
    /// of `[{"offset": N, "length": N}]`, the output of `rbd diff --format json`, or the output
    /// of `nbdinfo --map --json` for a `qemu:dirty-bitmap:NAME` context. Needs --incremental.
    #[arg(long, value_name = "FILE", requires = "incremental")]
    pub changed_extents: Option<PathBuf>,
    /// With --changed-extents: first read this fraction (0 to 1) of the regions reported
    /// unchanged and compare them with the parent, to catch a CBT source that missed a write.
    #[arg(long, value_name = "FRACTION", requires = "changed_extents")]
    pub cbt_sample: Option<f64>,
    /// With --changed-extents: what a sampled region that differs from the parent does.
    #[arg(long, value_enum, value_name = "ACTION", requires = "changed_extents")]
    pub cbt_on_mismatch: Option<MismatchAction>,
}

/// What a CBT backup does when its sampling check finds a change the source did not report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MismatchAction {
    /// Fail the backup, saying where.
    Fail,
    /// Read the whole volume instead.
    FullRead,
}

impl CbtArgs {
    /// The changed-extents file's contents, if one was given.
    pub fn read_extents(&self) -> Result<Option<Vec<u8>>> {
        let Some(path) = &self.changed_extents else {
            return Ok(None);
        };
        let len = std::fs::metadata(path)
            .with_context(|| format!("--changed-extents {}", path.display()))?
            .len();
        if len > MAX_FILE {
            bail!(
                "--changed-extents {}: {len} bytes, at most {MAX_FILE}",
                path.display()
            );
        }
        let data =
            std::fs::read(path).with_context(|| format!("--changed-extents {}", path.display()))?;
        Ok(Some(data))
    }

    /// The sampled fraction (0 unless given).
    pub fn sample(&self) -> f64 {
        self.cbt_sample.unwrap_or(0.0)
    }

    /// Whether a mismatch falls back to a full read.
    pub fn full_read_on_mismatch(&self) -> bool {
        self.cbt_on_mismatch == Some(MismatchAction::FullRead)
    }
}
