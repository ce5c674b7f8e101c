//! Real usage of the node: CPU (busy time from `/proc/stat`), memory
//! (`sysinfo`: total − available) and the filesystem holding the agent's
//! state directory (where local root disks live).

use std::path::{Path, PathBuf};

/// Cumulative CPU time of the host, all CPUs together, in clock ticks
/// (`USER_HZ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time not idle (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All time (busy + idle + iowait).
    pub total: u64,
}

/// The aggregate `cpu` line of `/proc/stat` text. Pure.
pub fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user and nice.
    if f.len() < 4 {
        return None;
    }
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f.get(4).copied().unwrap_or(0);
    Some(CpuTicks {
        busy: total.saturating_sub(idle),
        total,
    })
}

impl CpuTicks {
    /// Busy fraction (0–1) of all CPUs between `earlier` and `self`; `None`
    /// when no time passed. Pure.
    pub fn busy_ratio_since(&self, earlier: &CpuTicks) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        if total == 0 {
            return None;
        }
        let busy = self.busy.saturating_sub(earlier.busy);
        Some((busy as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// The host's clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// One reading of the node's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSample {
    /// CPU ticks (`None` if `/proc/stat` could not be read).
    pub cpu: Option<CpuTicks>,
    /// Busy CPU seconds since boot.
    pub cpu_busy_seconds: Option<f64>,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in use (total − available), bytes.
    pub memory_used_bytes: u64,
    /// Installed memory, bytes.
    pub memory_total_bytes: u64,
    /// Mount point of the filesystem of the state directory.
    pub disk_path: PathBuf,
    /// Used bytes of that filesystem.
    pub disk_used_bytes: u64,
    /// Size of that filesystem.
    pub disk_total_bytes: u64,
}

/// Reads the node's usage. `sys` and `disks` are kept between calls
/// (sysinfo refreshes them in place). Blocking (reads `/proc`).
pub fn sample(
    sys: &mut sysinfo::System,
    disks: &mut sysinfo::Disks,
    state_dir: &Path,
) -> HostSample {
    sys.refresh_memory();
    let cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t));
    disks.refresh(true);
    let (disk_path, disk_total_bytes, disk_available) =
        filesystem_of(disks, state_dir).unwrap_or_default();
    HostSample {
        cpu,
        cpu_busy_seconds: cpu.map(|c| c.busy as f64 / ticks_per_second() as f64),
        cpus: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX).max(1),
        memory_used_bytes: sys.total_memory().saturating_sub(sys.available_memory()),
        memory_total_bytes: sys.total_memory(),
        disk_path,
        disk_used_bytes: disk_total_bytes.saturating_sub(disk_available),
        disk_total_bytes,
    }
}

/// `(mount point, total bytes, available bytes)` of the filesystem whose
/// mount point is the longest prefix of `path`.
pub fn filesystem_of(disks: &sysinfo::Disks, path: &Path) -> Option<(PathBuf, u64, u64)> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| {
            (
                d.mount_point().to_path_buf(),
                d.total_space(),
                d.available_space(),
            )
        })
}

/// A fresh `sysinfo` handle for [`sample`] (memory and the CPU list).
pub fn system() -> sysinfo::System {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind};
    sysinfo::System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_aggregate_cpu_line() {
        let text = "cpu  100 5 50 800 40 3 2 0 10 0\ncpu0 50 2 25 400 20 1 1 0 5 0\nintr 1\n";
        let c = parse_proc_stat(text).unwrap();
        // Guest time (10) is inside user already: not counted twice.
        assert_eq!(c.total, 100 + 5 + 50 + 800 + 40 + 3 + 2);
        assert_eq!(c.busy, 100 + 5 + 50 + 3 + 2);
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2\n"), None);
    }

    #[test]
    fn busy_ratio_between_two_readings() {
        let a = CpuTicks {
            busy: 100,
            total: 1000,
        };
        let b = CpuTicks {
            busy: 150,
            total: 1200,
        };
        assert_eq!(b.busy_ratio_since(&a), Some(0.25));
        assert_eq!(a.busy_ratio_since(&a), None);
        // A counter going backwards (another boot?) gives nothing.
        assert_eq!(a.busy_ratio_since(&b), None);
    }

    #[test]
    fn samples_this_host() {
        let (mut sys, mut disks) = (system(), sysinfo::Disks::new_with_refreshed_list());
        let s = sample(&mut sys, &mut disks, Path::new("/tmp"));
        assert!(s.memory_total_bytes > 0 && s.memory_used_bytes > 0, "{s:?}");
        assert!(s.memory_used_bytes <= s.memory_total_bytes);
        assert!(
            s.disk_total_bytes > 0 && s.disk_used_bytes <= s.disk_total_bytes,
            "{s:?}"
        );
        assert!(s.cpu.is_some_and(|c| c.total > 0) && s.cpus >= 1, "{s:?}");
    }
}
