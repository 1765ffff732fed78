//! BPF timestamps are CLOCK_MONOTONIC; exporters speak wall-clock time. The offset between the
//! two is measured once (as the smallest bracketed sample of three) and refreshed periodically.

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC) as u64
}

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, ns.
    offset: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..3 {
            let a = now(libc::CLOCK_MONOTONIC);
            let r = now(libc::CLOCK_REALTIME);
            let b = now(libc::CLOCK_MONOTONIC);
            let width = b - a;
            let offset = r - (a + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Self { offset: best.map_or(0, |(_, o)| o) }
    }

    /// A clock with a fixed offset (tests, replays).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset: offset_ns }
    }

    /// Unix-epoch nanoseconds for a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset).max(0) as u64
    }

    pub fn system_time(&self, mono_ns: u64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.unix_ns(mono_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let c = Clock::new();
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
        let got = c.unix_ns(monotonic_ns()) as i128;
        assert!((got - wall).abs() < 50_000_000, "off by {} ns", got - wall);
    }
}
