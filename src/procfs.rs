//! What Linux's `/proc` says of a process (`self` or a pid): memory, CPU time, open
//! descriptors. For `sluice-load`, the benches and the tests, which watch a server from outside.

use std::time::Duration;

/// A process: `"self"` or a pid.
pub type Pid<'a> = &'a str;

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
pub fn memory(pid: Pid) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let kb = status.lines().find_map(|l| l.strip_prefix(name))?;
        Some(kb.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
    };
    Some(Memory {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// CPU time (user + system) used so far.
pub fn cpu_time(pid: Pid) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// The targets of the process's open descriptors (files, `socket:[…]`, `pipe:[…]`).
pub fn open_fds(pid: Pid) -> Option<Vec<std::path::PathBuf>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_back() {
        let m = memory("self").unwrap();
        assert!(m.rss_bytes > 0 && m.peak_rss_bytes >= m.rss_bytes);
        assert!(cpu_time("self").is_some());
        assert!(!open_fds("self").unwrap().is_empty());
        assert!(memory("0").is_none(), "no such process");
    }
}
