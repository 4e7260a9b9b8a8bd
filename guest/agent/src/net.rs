//! Network interfaces, set up once at boot with the classic interface and
//! routing ioctls: loopback always, and the VM's network card when the
//! host asked for one with `ember.net=<address>/<prefix>,<gateway>`.
//!
//! DNS is deliberately not configured here: `/etc/resolv.conf` belongs to
//! the user's root filesystem, which the agent never writes.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

const CLASS_NET: &str = "/sys/class/net";
/// The virtio_net module is loaded before this runs, but the interface is
/// registered by the driver's probe; allow TCG's slow probing some slack.
const INTERFACE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// What `ember.net=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl NetConfig {
    /// Parses `10.0.2.15/24,10.0.2.2` (the gateway is optional).
    pub fn parse(value: &str) -> Result<Self, String> {
        let (cidr, gateway) = match value.split_once(',') {
            Some((c, g)) => (c, Some(g)),
            None => (value, None),
        };
        let (address, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{value:?}: expected <address>/<prefix>[,<gateway>]"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|e| format!("address {address:?}: {e}"))?;
        let prefix_len: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?}: expected 0 to 32"))?;
        let gateway = gateway
            .map(|g| g.parse().map_err(|e| format!("gateway {g:?}: {e}")))
            .transpose()?;
        Ok(Self {
            address,
            prefix_len,
            gateway,
        })
    }

    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

/// Brings up loopback, and the first network card as `ember.net` says.
/// Best effort: every failure is logged, none stops the boot.
pub fn setup(net_option: Option<&str>) {
    if let Err(e) = loopback_up() {
        log!("bringing up lo: {e}");
    }
    let Some(value) = net_option else {
        return;
    };
    let config = match NetConfig::parse(value) {
        Ok(c) => c,
        Err(e) => {
            log!("ignoring ember.net: {e}");
            return;
        }
    };
    let Some(interface) = wait_for_interface(Path::new(CLASS_NET), INTERFACE_TIMEOUT) else {
        log!(
            "ember.net given but no network interface appeared within {}s",
            INTERFACE_TIMEOUT.as_secs()
        );
        return;
    };
    match configure(&interface, &config) {
        Ok(()) => log!(
            "{interface}: {}/{} via {}",
            config.address,
            config.prefix_len,
            config
                .gateway
                .map_or_else(|| "no gateway".to_string(), |g| g.to_string())
        ),
        Err(e) => log!("configuring {interface}: {e}"),
    }
}

pub fn loopback_up() -> io::Result<()> {
    IfSocket::open()?.up("lo")
}

/// Adds `addr/32` to loopback as a second address (the alias `lo:ember`),
/// so connections to it stay inside the guest whatever the network card
/// and its routes say: local addresses win over every route.
pub fn add_loopback_address(addr: Ipv4Addr) -> io::Result<()> {
    const ALIAS: &str = "lo:ember";
    let sock = IfSocket::open()?;
    sock.set_addr(ALIAS, libc::SIOCSIFADDR, addr)?;
    sock.set_addr(ALIAS, libc::SIOCSIFNETMASK, Ipv4Addr::BROADCAST)
}

fn configure(interface: &str, config: &NetConfig) -> io::Result<()> {
    let sock = IfSocket::open()?;
    // Address first: setting it also sets a classful netmask, which the
    // explicit one then replaces.
    sock.set_addr(interface, libc::SIOCSIFADDR, config.address)?;
    sock.set_addr(interface, libc::SIOCSIFNETMASK, config.netmask())?;
    sock.up(interface)?;
    if let Some(gateway) = config.gateway {
        sock.add_default_route(interface, gateway)?;
    }
    Ok(())
}

/// The first network interface other than loopback, by name.
pub fn first_interface(class_dir: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(class_dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

fn wait_for_interface(class_dir: &Path, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(name) = first_interface(class_dir) {
            return Some(name);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// The kernel's `struct rtentry` (linux/route.h); the libc crate only
/// defines it for musl and uclibc, and the agent is built against glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

#[cfg(target_arch = "x86_64")]
const _: () = assert!(std::mem::size_of::<RtEntry>() == 120);

/// A datagram socket to issue interface ioctls on.
struct IfSocket(OwnedFd);

impl IfSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket creation; the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: callers pass the argument type `request` expects (an
        // ifreq or an rtentry), fully initialised; the kernel reads or
        // writes only within it.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg as *mut T) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn up(&self, interface: &str) -> io::Result<()> {
        let mut ifr = ifreq(interface)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
        unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut ifr)
    }

    /// SIOCSIFADDR or SIOCSIFNETMASK: both take one IPv4 sockaddr.
    fn set_addr(&self, interface: &str, request: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
        let mut ifr = ifreq(interface)?;
        ifr.ifr_ifru.ifru_addr = sockaddr(addr);
        self.ioctl(request, &mut ifr)
    }

    fn add_default_route(&self, interface: &str, gateway: Ipv4Addr) -> io::Result<()> {
        let dev = CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        let mut route = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gateway),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            // The kernel only reads the name; `dev` outlives the ioctl.
            rt_dev: dev.as_ptr().cast_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match self.ioctl(libc::SIOCADDRT, &mut route) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }
}

fn ifreq(interface: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // Leave room for the terminating NUL the zeroed buffer provides.
    if interface.len() >= ifr.ifr_name.len() || interface.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {interface:?}"),
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(interface.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// An IPv4 address as the generic `sockaddr` the ioctls take.
fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data;
    // the kernel reads the sockaddr as a sockaddr_in by its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_address_prefix_and_gateway() {
        let c = NetConfig::parse("10.0.2.15/24,10.0.2.2").unwrap();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        let c = NetConfig::parse("192.168.1.5/32").unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::BROADCAST);
        assert_eq!(c.gateway, None);
        assert_eq!(
            NetConfig::parse("1.2.3.4/0").unwrap().netmask(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn rejects_malformed_options() {
        for bad in [
            "",
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2.x/24",
            "10.0.2.15/24,gw",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn first_interface_skips_loopback() {
        let dir = tempdir("net-class");
        for name in ["lo", "eth1", "eth0"] {
            fs::create_dir_all(dir.join(name)).unwrap();
        }
        assert_eq!(first_interface(&dir).as_deref(), Some("eth0"));
        fs::remove_dir_all(dir.join("eth0")).unwrap();
        fs::remove_dir_all(dir.join("eth1")).unwrap();
        assert_eq!(first_interface(&dir), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interface_names_are_bounded() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq(&"x".repeat(16)).is_err());
        assert!(ifreq("a\0b").is_err());
    }

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // Port (2 bytes), then the address bytes in order.
        assert_eq!(
            &sa.sa_data[2..6],
            &[10, 0, 2, 15].map(|b: u8| b as libc::c_char)
        );
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-agent-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
