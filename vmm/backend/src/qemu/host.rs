//! Facts about the host that pick QEMU's accelerator and timing flags.

use std::path::Path;

use crate::backend::{Accel, AccelChoice};

/// KVM only when it can run a stock kernel: `/dev/kvm` usable, the CPU has
/// VMX or SVM, and the module is not PVM (page-table based nested KVM, on
/// which a stock Linux guest crawls and then dies).
pub fn detect_accel() -> Accel {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Accel::Tcg;
    }
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if usable && cpu_has_hw_virt(&cpuinfo) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

pub fn resolve_accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Auto => detect_accel(),
        AccelChoice::Force(a) => a,
    }
}

fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The host TSC frequency in kHz. Under TCG the guest reads the host TSC,
/// and handing the kernel its frequency skips PIT calibration, which hangs
/// about a third of boots on a busy host.
pub fn tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(v) = s.trim().parse() {
            return Some(v);
        }
    }
    parse_cpu_mhz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Resident memory of a process, from /proc: all of it, and the part
/// that is private to it (anonymous pages). Pages mapped from a snapshot's
/// memory image count in the first only, and are shared by every clone.
pub fn rss_bytes(pid: u32) -> std::io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo() {
        let info = "processor : 0\ncpu MHz\t\t: 2199.998\nflags\t\t: fpu vme svm sse\n";
        assert_eq!(parse_cpu_mhz(info), Some(2_199_998));
        assert!(cpu_has_hw_virt(info));
        assert!(!cpu_has_hw_virt("flags : fpu sse\n"));
    }
}
