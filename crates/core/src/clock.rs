//! The wall clock as the formats store it: whole seconds since the Unix epoch.

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
