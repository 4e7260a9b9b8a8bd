//! `Health`: a few cheap facts from /proc.

use std::fs;

use ember_agent_protocol::HealthReport;

pub fn report() -> HealthReport {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    HealthReport {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: parse_uptime_ms(&read("/proc/uptime")).unwrap_or(0),
        boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
        mem_available_kib: parse_mem_available(&read("/proc/meminfo")).unwrap_or(0),
        realtime_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

/// `/proc/uptime` is "SECONDS.FRACTION IDLE".
fn parse_uptime_ms(s: &str) -> Option<u64> {
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_uptime_ms("12.34 56.78\n"), Some(12340));
        assert_eq!(parse_uptime_ms(""), None);
        let meminfo = "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:     512 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(512));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
