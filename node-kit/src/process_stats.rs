//! The process's own CPU time, memory and open files, read from `/proc` at scrape time
//! (Linux; zeros elsewhere).

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

pub fn read() -> ProcessStats {
    let mut s = ProcessStats::default();
    // Clock ticks are 100 per second on every Linux this runs on (USER_HZ).
    const TICKS: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) in parentheses.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
            s.cpu_seconds = (num(11) + num(12)) as f64 / TICKS;
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
            s.resident_bytes = kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        s.open_fds = dir.count() as u64;
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
            s.max_fds = line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    s
}

/// Sets the `sfu_process_*` series on the current recorder.
pub fn record(labels: &[(&'static str, String)]) {
    let s = read();
    metrics::gauge!("sfu_process_cpu_seconds", labels).set(s.cpu_seconds);
    metrics::gauge!("sfu_process_resident_memory_bytes", labels).set(s.resident_bytes as f64);
    metrics::gauge!("sfu_process_open_fds", labels).set(s.open_fds as f64);
    metrics::gauge!("sfu_process_max_fds", labels).set(s.max_fds as f64);
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_uses_memory_and_files_and_some_cpu() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let s = super::read();
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.open_fds >= 3 && s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.cpu_seconds > 0.0, "{s:?}");
    }
}
