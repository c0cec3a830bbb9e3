//! The systemd unit in `packaging/` passes `systemd-analyze verify` (where systemd is
//! installed): every key known, the command executable, nothing ignored.
use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/blockvaultd.service"
    ))
    .unwrap();
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    assert!(unit.contains("ExecStart=/usr/local/bin/blockvaultd "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blockvaultd.service");
    // Verify against the binary just built, wherever it is.
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/blockvaultd",
            env!("CARGO_BIN_EXE_blockvaultd"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("blockvaultd"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze complains: {ours:#?}");
}
