//! Pure helpers of the benchmarks: percentiles, medians, and CPU time read
//! from `/proc` (Linux; elsewhere the CPU figures are simply absent).

use std::collections::HashMap;

/// Name of the load generator's threads (at most 15 bytes: Linux truncates).
pub const CLIENT_THREAD_NAME: &str = "kiln-bench-cli";

/// The nearest-rank percentile `p` (0–100) of `sorted` (ascending); 0 for
/// an empty slice.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// The median of `values` (the mean of the two middle ones for an even
/// count); NaN for none. NaN values sort last.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How many of the commands `0..sent`, spread round-robin over `accounts`
/// accounts, went to account `account`.
pub fn commands_for(account: usize, accounts: usize, sent: usize) -> usize {
    if accounts == 0 {
        return 0;
    }
    sent / accounts + usize::from(account < sent % accounts)
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU time of the process and of each of its live threads, in ticks.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    process: u64,
    /// By thread id: (name, ticks).
    threads: HashMap<String, (String, u64)>,
}

/// CPU used between two samples, in seconds.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub total_s: f64,
    /// Seconds by thread group (see [`thread_group`]), threads that exited
    /// in between counted in "other".
    pub groups: Vec<(&'static str, f64)>,
}

impl CpuUse {
    pub fn group(&self, name: &str) -> f64 {
        self.groups
            .iter()
            .find(|(g, _)| *g == name)
            .map_or(0.0, |(_, s)| *s)
    }
}

/// The thread groups CPU time is reported by.
pub const GROUPS: [&str; 4] = ["client", "server", "sqlite", "other"];

/// Which group a thread belongs to, by its name (truncated to 15 bytes by
/// Linux): the load generator's own runtime, the host's tokio runtime (async
/// tasks and the blocking pool that runs wasm), SQLite's threads (sqlx's
/// connection threads and the store's writer).
pub fn thread_group(name: &str) -> &'static str {
    if name.starts_with(CLIENT_THREAD_NAME) {
        "client"
    } else if name.starts_with("tokio-r") {
        "server"
    } else if name.starts_with("sqlx-sqlite") || name.starts_with("kiln-sqlite") {
        "sqlite"
    } else {
        "other"
    }
}

/// `utime + stime` of a `/proc/.../stat` line, and the name in it.
pub fn parse_stat(line: &str) -> Option<(String, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime and stime are
    // fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

impl CpuSample {
    /// Read the process's CPU time now; `None` where `/proc` is not there.
    pub fn now() -> Option<Self> {
        let (_, process) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let mut threads = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for entry in dir.flatten() {
                let tid = entry.file_name().to_string_lossy().into_owned();
                if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s))
                {
                    threads.insert(tid, stat);
                }
            }
        }
        Some(Self { process, threads })
    }

    /// CPU used from `self` to `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let total = later.process.saturating_sub(self.process);
        let mut by_group: HashMap<&'static str, u64> = HashMap::new();
        let mut attributed = 0;
        for (tid, (name, ticks)) in &later.threads {
            let before = self
                .threads
                .get(tid)
                .filter(|(n, _)| n == name)
                .map_or(0, |(_, t)| *t);
            let used = ticks.saturating_sub(before);
            attributed += used;
            *by_group.entry(thread_group(name)).or_default() += used;
        }
        // Threads that exited in between (idle blocking-pool threads) are
        // in the process total only.
        *by_group.entry("other").or_default() += total.saturating_sub(attributed);
        CpuUse {
            total_s: total as f64 / TICKS_PER_S,
            groups: GROUPS
                .iter()
                .map(|g| {
                    (
                        *g,
                        by_group.get(g).copied().unwrap_or(0) as f64 / TICKS_PER_S,
                    )
                })
                .collect(),
        }
    }
}

/// ESTABLISHED TCP sockets whose local port is `port` (the server's side
/// of each client connection), from `/proc/net/tcp`.
pub fn established_on_port(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    Some(count_established(&table, port))
}

fn count_established(table: &str, port: u16) -> usize {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
            local_port == Some(want.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// What `lscpu` would say: the CPU model, logical CPUs, memory.
pub fn machine() -> (String, usize, String) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0),
        );
    (model, cpus, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1000];
        assert_eq!(percentile(&v, 90.0), 9);
        assert_eq!(percentile(&v, 99.0), 1000);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn round_robin_counts() {
        // 25 commands over 10 accounts: 0..5 get 3, 5..10 get 2.
        assert_eq!(commands_for(0, 10, 25), 3);
        assert_eq!(commands_for(4, 10, 25), 3);
        assert_eq!(commands_for(5, 10, 25), 2);
        assert_eq!(commands_for(9, 10, 25), 2);
        let total: usize = (0..10).map(|a| commands_for(a, 10, 25)).sum();
        assert_eq!(total, 25);
        assert_eq!(commands_for(0, 0, 5), 0);
    }

    #[test]
    fn stat_lines_parse() {
        let line = "1234 (tokio-rt-worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        assert_eq!(parse_stat(line), Some(("tokio-rt-worker".into(), 300)));
        let odd = "9 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 3 4 0 0";
        assert_eq!(parse_stat(odd), Some(("a) b (c)".into(), 7)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(thread_group("sqlx-sqlite-wor"), "sqlite");
        assert_eq!(thread_group("kiln-sqlite-wri"), "sqlite");
        assert_eq!(thread_group("kiln"), "other");
    }

    #[test]
    fn established_sockets_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1\n\
   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 2\n\
   2: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 3\n\
   3: 0100007F:1F90 0100007F:A001 01 00000000:00000000 00:00000000 00000000  1000        0 4\n";
        assert_eq!(count_established(table, 8080), 2);
        assert_eq!(count_established(table, 8081), 0);
    }
}
