//! CPU priority of the data plane's threads. A backup keeps every core busy; run at a higher
//! nice value, its threads yield to the control plane (API calls, metrics, the scheduler), whose
//! latency then does not depend on how many backups run. Nice values only matter when the CPU is
//! contended: an idle machine gives a niced backup all of it.

/// Highest nice value Linux accepts.
pub const MAX_NICE: i32 = 19;

/// Sets the calling thread's nice value to `nice` (0..=19). Threads the caller starts afterwards
/// inherit it. On Linux the nice value belongs to the thread, not the process.
///
/// Raising one's own nice value needs no privilege; lowering it below its current value does, so
/// this is meant for threads that start at 0.
#[allow(unsafe_code)]
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    if !(0..=MAX_NICE).contains(&nice) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("nice must be within 0..={MAX_NICE}, not {nice}"),
        ));
    }
    // SAFETY: setpriority takes plain integers and touches no memory of ours. With PRIO_PROCESS
    // and who = 0 Linux changes only the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value (field 19 of its stat).
    fn thread_nice() -> std::io::Result<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
        let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
        Ok(rest
            .split(' ')
            .nth(16)
            .expect("nice field")
            .parse()
            .unwrap())
    }

    #[test]
    fn a_thread_lowers_only_its_own_priority() {
        let before = thread_nice().unwrap();
        let inner = std::thread::spawn(move || {
            set_thread_nice(before.max(7)).unwrap();
            let child = std::thread::spawn(|| thread_nice().unwrap())
                .join()
                .unwrap();
            (thread_nice().unwrap(), child)
        })
        .join()
        .unwrap();
        assert_eq!(inner, (before.max(7), before.max(7)), "set, and inherited");
        assert_eq!(
            thread_nice().unwrap(),
            before,
            "the caller's thread is untouched"
        );
        assert!(set_thread_nice(20).is_err());
        assert!(set_thread_nice(-1).is_err());
    }
}
