//! What the agent reads of the machine it runs on: the clock and the host
//! name that snapshots record.

use std::time::{SystemTime, UNIX_EPOCH};

/// The time now, ns since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The host name for snapshots: the configured one, else the system's
/// (`uname(2)`'s node name, which is what `hostname` prints on Linux and
/// macOS alike), else "localhost" when the system has none.
pub fn host_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let uname = rustix::system::uname();
    let node = uname.nodename().to_string_lossy();
    match node.trim() {
        "" => "localhost".into(),
        name => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn the_host_name_is_the_configured_one_else_the_systems_node_name() {
        assert_eq!(host_name("db-1"), "db-1");
        let system = host_name("");
        assert!(!system.is_empty());
        // On Linux the kernel's node name is also in /proc; `uname(2)` is
        // what works on macOS too, where every host was "localhost".
        if let Ok(proc) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(system, proc.trim());
        }
    }
}
