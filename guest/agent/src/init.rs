//! Machine setup done once by PID 1: pseudo filesystems, kernel modules,
//! the real root filesystem, networking (see `net`) and the hostname.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const MODULES_DIR: &str = "/lib/modules";
const DEFAULT_ROOT: &str = "/dev/vda";
const DEFAULT_ROOTFSTYPE: &str = "ext4";
const NEWROOT: &str = "/newroot";
/// The spec asks for ~5 s; TCG makes device probing slow, so allow double.
const ROOT_DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
const HOSTNAME: &str = "ember";

/// The `ember.*` options of the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    pub root: Option<String>,
    pub rootfstype: Option<String>,
    pub noroot: bool,
    /// `ember.net=<address>/<prefix>,<gateway>`, parsed by `net`.
    pub net: Option<String>,
}

impl BootOptions {
    pub fn parse(cmdline: &str) -> Self {
        let mut opts = Self::default();
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("ember.root=") {
                opts.root = Some(v.to_string());
            } else if let Some(v) = word.strip_prefix("ember.rootfstype=") {
                opts.rootfstype = Some(v.to_string());
            } else if let Some(v) = word.strip_prefix("ember.net=") {
                opts.net = Some(v.to_string());
            } else if word == "ember.noroot" || word == "ember.noroot=1" {
                opts.noroot = true;
            }
        }
        opts
    }

    /// The device and filesystem type to mount as root, or `None` to stay
    /// in the initramfs. An explicit root device wins over `ember.noroot`.
    pub fn root(&self) -> Option<(&str, &str)> {
        let fstype = self.rootfstype.as_deref().unwrap_or(DEFAULT_ROOTFSTYPE);
        match (&self.root, self.noroot) {
            (Some(dev), _) => Some((dev, fstype)),
            (None, true) => None,
            (None, false) => Some((DEFAULT_ROOT, fstype)),
        }
    }
}

/// Module file names in load order; blank lines and comments skipped.
pub fn parse_modules_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

pub fn boot() -> Result<(), String> {
    for dir in ["/dev", "/proc", "/sys"] {
        mkdir(dir);
    }
    mount_or_busy(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    ensure_console();
    let pseudo = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_or_busy("proc", "/proc", "proc", pseudo, None)?;
    mount_or_busy("sysfs", "/sys", "sysfs", pseudo, None)?;
    log!("starting (version {})", env!("CARGO_PKG_VERSION"));

    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = BootOptions::parse(&cmdline);
    load_modules(Path::new(MODULES_DIR));
    match opts.root() {
        Some((device, fstype)) => switch_root(device, fstype)?,
        None => log!("ember.noroot: staying in the initramfs"),
    }
    setup_runtime(opts.net.as_deref());
    Ok(())
}

/// Logs, powers the machine off and never returns. Used when the guest
/// cannot possibly be useful, so the host sees a clean exit instead of a
/// hang or a kernel panic loop.
pub fn fatal(msg: &str) -> ! {
    log!("FATAL: {msg}; powering off");
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached if reboot failed (not PID 1 / no CAP_SYS_BOOT).
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn mkdir(path: &str) {
    if let Err(e) = fs::create_dir_all(path) {
        log!("mkdir {path}: {e}");
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source)?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: every pointer is either null or a NUL-terminated string that
    // lives until the call returns.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts, treating "already mounted here" (EBUSY) as success.
fn mount_or_busy(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    match mount(source, target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(format!("mounting {fstype} at {target}: {e}")),
    }
}

/// Without a /dev/console in the initramfs the kernel starts init with no
/// stdio at all; reopen it from devtmpfs so logging reaches the console.
fn ensure_console() {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } != -1 {
        return;
    }
    let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which are closed.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

fn load_modules(dir: &Path) {
    let order = match fs::read_to_string(dir.join("modules.order")) {
        Ok(t) => t,
        Err(e) => {
            log!(
                "no {}/modules.order ({e}); loading no modules",
                dir.display()
            );
            return;
        }
    };
    for name in parse_modules_order(&order) {
        // Real modules.order files list paths like kernel/drivers/…/x.ko;
        // ours may be flattened, so fall back to the bare file name.
        let mut path = dir.join(name);
        if !path.exists() {
            if let Some(base) = Path::new(name).file_name() {
                path = dir.join(base);
            }
        }
        if let Err(e) = load_module(&path) {
            log!("loading {}: {e}", path.display());
        }
    }
}

fn load_module(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    let params = c"";
    // SAFETY: finit_module reads the open fd and a NUL-terminated (empty)
    // parameter string; flags 0.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(()); // built in or already loaded
    }
    Err(e)
}

fn wait_for_path(path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !Path::new(path).exists() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
    true
}

fn switch_root(device: &str, fstype: &str) -> Result<(), String> {
    if !wait_for_path(device, ROOT_DEVICE_TIMEOUT) {
        return Err(format!(
            "root device {device} did not appear within {}s",
            ROOT_DEVICE_TIMEOUT.as_secs()
        ));
    }
    mkdir(NEWROOT);
    mount(device, NEWROOT, Some(fstype), 0, None)
        .map_err(|e| format!("mounting {device} ({fstype}) at {NEWROOT}: {e}"))?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEWROOT}{dir}");
        mkdir(&target);
        mount(dir, &target, None, libc::MS_MOVE, None)
            .map_err(|e| format!("moving {dir} to {target}: {e}"))?;
    }
    std::env::set_current_dir(NEWROOT).map_err(|e| format!("chdir {NEWROOT}: {e}"))?;
    mount(".", "/", None, libc::MS_MOVE, None)
        .map_err(|e| format!("moving {NEWROOT} to /: {e}"))?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    log!("switched root to {device}");
    Ok(())
}

/// Mount points currently listed in /proc/mounts.
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// Best effort: a guest missing one of these is degraded, not useless.
fn setup_runtime(net_option: Option<&str>) {
    let mounted = mount_points();
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let wanted: [(&str, &str, libc::c_ulong, &str); 4] = [
        (
            "devpts",
            "/dev/pts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        ("tmpfs", "/dev/shm", nosuid_nodev, "mode=1777"),
        ("tmpfs", "/tmp", nosuid_nodev, "mode=1777"),
        ("tmpfs", "/run", nosuid_nodev, "mode=755"),
    ];
    for (fstype, target, flags, data) in wanted {
        if mounted.iter().any(|m| m == target) {
            continue;
        }
        mkdir(target);
        if let Err(e) = mount(fstype, target, Some(fstype), flags, Some(data)) {
            log!("mounting {fstype} at {target}: {e}");
        }
    }
    crate::net::setup(net_option);
    // SAFETY: the pointer and length describe HOSTNAME's bytes.
    if unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) } != 0 {
        log!("sethostname: {}", io::Error::last_os_error());
    }
}

/// The `/dev` name of the virtio-serial port named `agent`, if present.
pub fn find_agent_port(class_dir: &Path) -> Option<String> {
    fs::read_dir(class_dir).ok()?.flatten().find_map(|entry| {
        let name = fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim() == "agent").then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// Polls until the port and its device node exist (no udev here; devtmpfs
/// creates the node shortly after sysfs shows the port).
pub fn wait_for_agent_port() -> PathBuf {
    let started = Instant::now();
    let mut next_report = Duration::from_secs(5);
    loop {
        if let Some(name) = find_agent_port(Path::new("/sys/class/virtio-ports")) {
            let dev = Path::new("/dev").join(name);
            if dev.exists() {
                return dev;
            }
        }
        if started.elapsed() >= next_report {
            log!("still waiting for the virtio-serial port named \"agent\"");
            next_report += Duration::from_secs(5);
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults_to_vda_ext4() {
        let o = BootOptions::parse("console=ttyS0 quiet");
        assert_eq!(o.root(), Some(("/dev/vda", "ext4")));
    }

    #[test]
    fn cmdline_overrides_and_noroot() {
        let o = BootOptions::parse("console=ttyS0 ember.root=/dev/vdb ember.rootfstype=xfs\n");
        assert_eq!(o.root(), Some(("/dev/vdb", "xfs")));
        assert_eq!(BootOptions::parse("ember.noroot").root(), None);
        // An explicit root device wins.
        assert_eq!(
            BootOptions::parse("ember.noroot ember.root=/dev/vdc").root(),
            Some(("/dev/vdc", "ext4"))
        );
        // Look-alike options are not ours.
        assert!(!BootOptions::parse("ember.norootx").noroot);
        assert_eq!(
            BootOptions::parse("quiet ember.net=10.0.2.15/24,10.0.2.2")
                .net
                .as_deref(),
            Some("10.0.2.15/24,10.0.2.2")
        );
        assert_eq!(BootOptions::parse("ember.network=x").net, None);
    }

    #[test]
    fn modules_order_skips_blanks_and_comments() {
        let text =
            "virtio_ring.ko\n\n# comment\n virtio.ko \nkernel/drivers/virtio/virtio_mmio.ko\n";
        assert_eq!(
            parse_modules_order(text),
            vec![
                "virtio_ring.ko",
                "virtio.ko",
                "kernel/drivers/virtio/virtio_mmio.ko"
            ]
        );
    }

    #[test]
    fn finds_the_agent_port_in_sysfs() {
        let dir = std::env::temp_dir().join(format!("ember-agent-ports-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (port, name) in [("vport0p0", "other\n"), ("vport0p1", "agent\n")] {
            fs::create_dir_all(dir.join(port)).unwrap();
            fs::write(dir.join(port).join("name"), name).unwrap();
        }
        assert_eq!(find_agent_port(&dir).as_deref(), Some("vport0p1"));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(find_agent_port(&dir), None);
    }
}
