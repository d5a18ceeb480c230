//! Which of the capabilities teardown needs the process lacks, read from
//! `/proc/self/status`, so that a refusal names what to grant.

/// The capabilities teardown needs without root: (bit, name). CAP_BPF and
/// CAP_PERFMON exist since Linux 5.8; before, CAP_SYS_ADMIN covered both.
const NEEDED: [(u32, &str); 3] = [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];
const CAP_SYS_ADMIN: u32 = 21;

/// The effective capability set, from the `CapEff:` line of a
/// `/proc/PID/status` text.
fn effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The needed capabilities missing from `effective`; none when it has
/// CAP_SYS_ADMIN, which grants what CAP_BPF and CAP_PERFMON do (and on
/// kernels before 5.8 is the only way).
fn missing(effective: u64) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    if has(CAP_SYS_ADMIN) && has(NEEDED[1].0) {
        return Vec::new();
    }
    NEEDED
        .iter()
        .filter(|(bit, _)| !has(*bit))
        .map(|(_, name)| *name)
        .collect()
}

/// What to do about a refusal, for [`super::SetupError::Permission`]:
/// the capabilities this process lacks, named, when it can tell.
pub fn advice() -> String {
    const GRANT: &str = "run teardown as root (sudo), or grant it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (`setcap cap_bpf,cap_net_admin,cap_perfmon+ep`, or AmbientCapabilities= in a systemd unit)";
    let Some(effective) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective)
    else {
        return GRANT.to_string();
    };
    let missing = missing(effective);
    match missing.as_slice() {
        [] => "teardown has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, so something else refused (kernel lockdown, an LSM, or a kernel older than 5.8, which needs root)".to_string(),
        _ => format!("teardown lacks {}: {GRANT}", and_list(&missing)),
    }
}

/// "A", "A and B", "A, B and C".
fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_capabilities_are_named() {
        let status = "Name:\tteardown\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\nCapEff:\t000000c000001000\n";
        let all = effective(status).expect("CapEff");
        assert!(missing(all).is_empty());
        assert_eq!(missing(all & !(1 << 38)), ["CAP_PERFMON"]);
        assert_eq!(missing(all & !(1 << 12)), ["CAP_NET_ADMIN"]);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        // root: every capability.
        assert!(missing(0x000001ff_ffffffff).is_empty());
        assert_eq!(effective("CapEff:\tnonsense\n"), None);
        assert_eq!(and_list(&["A", "B", "C"]), "A, B and C");
        assert_eq!(and_list(&["A", "B"]), "A and B");
    }
}
