//! The clocks every part of ham reads, in one place. Deadlines, heartbeats and the
//! liveness word are CLOCK_MONOTONIC nanoseconds (the same clock in every process of the
//! machine, so a beat written by a client compares with the HAM's deadline); wall-clock time
//! is for log lines and display only.

/// CLOCK_MONOTONIC in nanoseconds (through the vDSO: no system call).
#[inline]
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Wall-clock nanoseconds since the Unix epoch (log lines and display only).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
