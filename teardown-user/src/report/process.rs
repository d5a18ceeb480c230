//! The standard `process_*` metrics every Prometheus client library exports
//! (CPU time, memory, descriptors, start time), read from `/proc/self` when
//! the metrics endpoint is given new figures, so `up`-style dashboards and
//! alerts work on teardown as on any exporter.

/// One reading of the process's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open descriptors; `None` if unlimited or unknown.
    pub max_fds: Option<u64>,
    /// Unix seconds.
    pub start_time_seconds: f64,
}

impl ProcessFigures {
    /// Now, from `/proc`; `None` where it cannot be read.
    pub fn read() -> Option<ProcessFigures> {
        let (ticks, page, boot_time) = constants()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut figures = parse_stat(&stat, ticks, page, boot_time)?;
        figures.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        figures.max_fds =
            (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
        Some(figures)
    }
}

/// Clock ticks a second, the page size and the boot time: read once (they
/// do not change while the process runs, and `/proc/stat` grows with the
/// CPUs), so each reading costs only `/proc/self`.
fn constants() -> Option<(f64, u64, f64)> {
    static CONSTANTS: std::sync::OnceLock<Option<(f64, u64, f64)>> = std::sync::OnceLock::new();
    *CONSTANTS.get_or_init(|| {
        let boot_time = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        (ticks > 0 && page > 0).then_some((ticks as f64, page as u64, boot_time))
    })
}

/// `btime` of `/proc/stat`: when the system booted, Unix seconds.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The figures `/proc/self/stat` holds: CPU times and start time in clock
/// ticks (`ticks` a second), virtual size in bytes, resident size in pages
/// of `page` bytes. The command name, in parentheses, may hold anything,
/// spaces and parentheses too, so the fields are counted after its last `)`.
pub fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: f64) -> Option<ProcessFigures> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // After the name: state is field 0, utime 11, stime 12, starttime 19,
    // vsize 20, rss 21 (proc(5)'s fields 3, 14, 15, 22, 23, 24).
    Some(ProcessFigures {
        cpu_seconds: (number(11)? + number(12)?) as f64 / ticks,
        resident_memory_bytes: number(21)? * page,
        virtual_memory_bytes: number(20)?,
        open_fds: 0,
        max_fds: None,
        start_time_seconds: boot_time + number(19)? as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_is_read_after_the_command_name() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 12000 104857600 2560 18446744073709551615";
        let figures = parse_stat(stat, 100.0, 4096, 1_700_000_000.0).expect("parses");
        assert_eq!(figures.cpu_seconds, 3.0);
        assert_eq!(figures.resident_memory_bytes, 2560 * 4096);
        assert_eq!(figures.virtual_memory_bytes, 104_857_600);
        assert_eq!(figures.start_time_seconds, 1_700_000_120.0);
        assert_eq!(parse_stat("4242 (x) S 1", 100.0, 4096, 0.0), None);
    }

    #[test]
    fn the_exposition_has_the_standard_families() {
        let mut figures = crate::report::figures::tests::busy_figures();
        let bare = crate::report::prometheus::render(&figures);
        assert!(!bare.contains("process_"), "none without a reading");
        figures.process = Some(ProcessFigures {
            cpu_seconds: 1.5,
            resident_memory_bytes: 4096,
            virtual_memory_bytes: 8192,
            open_fds: 9,
            max_fds: Some(1024),
            start_time_seconds: 1_700_000_000.0,
        });
        let text = crate::report::prometheus::render(&figures);
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
            "process_resident_memory_bytes 4096\n",
            "process_virtual_memory_bytes 8192\n",
            "process_open_fds 9\n",
            "process_max_fds 1024\n",
            "process_start_time_seconds 1700000000\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
    }

    #[test]
    fn this_process_can_be_read() {
        let figures = ProcessFigures::read().expect("/proc/self");
        assert!(figures.resident_memory_bytes > 0);
        assert!(figures.open_fds >= 3);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            figures.start_time_seconds <= now + 1.0 && figures.start_time_seconds > now - 3600.0,
            "{figures:?}"
        );
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
    }
}
