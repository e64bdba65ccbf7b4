//! What ttp's processes hold in memory, from /proc (through procfs): resident (RSS),
//! proportional (PSS: each shared page divided among the processes that map it, so the
//! root monitor, a fork sharing most of the daemon's pages, is not counted twice), and
//! anonymous (heap and stacks, what the process itself allocated).
//!
//! A process reads its own figures; another user's need root (the kernel's ptrace read
//! check), so the daemon reports its own and `ttp status` as root adds its children's.

pub use crate::control::proto::Memory;

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            rss_bytes: self.rss_bytes + o.rss_bytes,
            pss_bytes: self.pss_bytes + o.pss_bytes,
            anon_bytes: self.anon_bytes + o.anon_bytes,
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{:.1} MB PSS ({:.1} MB RSS, of which {:.1} MB anonymous)",
            mb(self.pss_bytes),
            mb(self.rss_bytes),
            mb(self.anon_bytes)
        )
    }
}

/// The figures of process `pid` (`None` if it is gone or not ours to read).
pub fn of(pid: u32) -> Option<Memory> {
    let rollup = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.smaps_rollup().ok()?;
    let map = &rollup.memory_map_rollup.0.first()?.extension.map;
    let get = |k: &str| map.get(k).copied().unwrap_or(0);
    Some(Memory { rss_bytes: get("Rss"), pss_bytes: get("Pss"), anon_bytes: get("Anonymous") })
}

/// The children of `pid` (of all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_reads_its_own_figures_and_they_add_up() {
        let m = of(std::process::id()).expect("our own smaps_rollup");
        assert!(m.rss_bytes > 0 && m.pss_bytes > 0 && m.pss_bytes <= m.rss_bytes, "{m:?}");
        assert!(m.anon_bytes <= m.rss_bytes, "{m:?}");
        assert_eq!((m + m).pss_bytes, 2 * m.pss_bytes);
    }
}
