//! Facts about the host that pick QEMU's accelerator and timing flags.

use std::path::{Path, PathBuf};

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

/// The host CPU's model name, as /proc/cpuinfo gives it.
pub fn cpu_model() -> Option<String> {
    parse_cpu_model(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    let model = line
        .split_once(':')?
        .1
        .split_whitespace()
        .collect::<Vec<_>>();
    (!model.is_empty()).then(|| model.join(" "))
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Resident memory of a process, from /proc: all of it, and the part
/// that is private to it (anonymous pages). Pages mapped from a snapshot's
/// memory image count in the first only, and are shared by every clone.
/// `MAJOR:MINOR` of the whole disk holding `path` (a partition's parent
/// disk: throttling applies to disks), or why there is none.
pub fn block_device_of(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .map_err(|e| format!("cannot be read: {e}"))?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(format!(
            "lies on a filesystem without a block device of its own (device {major}:{minor}: tmpfs, overlayfs, btrfs?)"
        ));
    }
    if !sys.join("partition").exists() {
        return Ok(format!("{major}:{minor}"));
    }
    let parent = sys
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("dev")));
    parent
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .ok_or_else(|| format!("is on partition {major}:{minor}, whose disk was not found"))
}

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

/// CPU time (user + system) a process has used, in milliseconds.
pub fn cpu_ms(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(parse_cpu_ticks(&stat).unwrap_or(0) * 1000 / clock_ticks_per_sec())
}

/// utime + stime from /proc/PID/stat; fields count after the `(comm)`,
/// which may itself contain spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)  Platinum 8375C @ 2.90GHz\n\
                    processor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            parse_cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8375C @ 2.90GHz")
        );
        assert_eq!(parse_cpu_model("model name\t:   \n"), None);
        assert_eq!(parse_cpu_model(""), None);
    }

    #[test]
    fn the_disk_under_a_path_is_found_and_tmpfs_has_none() {
        // The root filesystem of a test host sits on a disk; /dev is a
        // devtmpfs and /proc has no device at all.
        let disk = block_device_of(Path::new("/")).unwrap();
        let sys = PathBuf::from(format!("/sys/dev/block/{disk}"));
        assert!(sys.exists() && !sys.join("partition").exists(), "{disk}");
        assert!(block_device_of(Path::new("/proc/self")).is_err());
    }

    #[test]
    fn parses_cpuinfo() {
        let info = "processor : 0\ncpu MHz\t\t: 2199.998\nflags\t\t: fpu vme svm sse\n";
        assert_eq!(parse_cpu_mhz(info), Some(2_199_998));
        assert!(cpu_has_hw_virt(info));
        assert!(!cpu_has_hw_virt("flags : fpu sse\n"));
    }

    #[test]
    fn parses_cpu_ticks_past_odd_process_names() {
        let stat = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
