//! Steers TCP connections to 169.254.169.254:80 to the agent's metadata
//! socket with a BPF `sk_lookup` program, so the agent never binds port 80:
//! an app listening on `0.0.0.0:80` (nginx's default) would otherwise get
//! EADDRINUSE, because a wildcard bind conflicts with any listener on the
//! same port. The program runs before the kernel's own listener lookup,
//! only for that one address and port; every other connection is left to
//! the kernel.
//!
//! Twenty-odd instructions, written out here rather than compiled: the agent
//! is one static binary with no BPF toolchain behind it.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;
/// Offsets in `struct bpf_sk_lookup` (uapi/linux/bpf.h).
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
const CTX_LOCAL_PORT: i16 = 60;
const SK_PASS: i32 = 1;

/// The kernel objects that keep the steering in force; dropping them
/// ends it. Kept for the agent's life (and so across snapshots).
pub struct Steering {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// Steers `addr:port` (TCP, IPv4) in the calling thread's network
/// namespace to `listener`, which may be bound anywhere.
pub fn steer(addr: Ipv4Addr, port: u16, listener: &TcpListener) -> io::Result<Steering> {
    let map = create_sockmap()?;
    let key: u32 = 0;
    let value: u64 = listener.as_raw_fd() as u64;
    let mut attr = Attr::default();
    attr.put_u32(0, map.as_raw_fd() as u32);
    attr.put_u64(8, &key as *const u32 as u64);
    attr.put_u64(16, &value as *const u64 as u64);
    bpf_call(BPF_MAP_UPDATE_ELEM, &mut attr)?;
    let prog = load_program(&map, addr, port)?;
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let mut attr = Attr::default();
    attr.put_u32(0, prog.as_raw_fd() as u32);
    attr.put_u32(4, netns.as_raw_fd() as u32);
    attr.put_u32(8, BPF_SK_LOOKUP);
    let link = bpf_fd(BPF_LINK_CREATE, &mut attr)?;
    Ok(Steering {
        _map: map,
        _prog: prog,
        _link: link,
    })
}

fn create_sockmap() -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr.put_u32(0, BPF_MAP_TYPE_SOCKMAP);
    attr.put_u32(4, 4); // key: u32 index
    attr.put_u32(8, 8); // value: the socket's fd on update, a cookie on read
    attr.put_u32(12, 1); // one socket
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

fn load_program(map: &OwnedFd, addr: Ipv4Addr, port: u16) -> io::Result<OwnedFd> {
    let insns = program(map.as_raw_fd(), addr, port);
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = Attr::default();
    attr.put_u32(0, BPF_PROG_TYPE_SK_LOOKUP);
    attr.put_u32(4, insns.len() as u32);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    attr.put_u32(24, 1); // log level: the verifier says why it refused
    attr.put_u32(28, log.len() as u32);
    attr.put_u64(32, log.as_mut_ptr() as u64);
    attr.put_u32(68, BPF_SK_LOOKUP); // expected_attach_type
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let verifier = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("{e}; verifier: {}", verifier.trim()))
    })
}

/// `if tcp && local == addr:port { sk_assign(map[0]) }; return SK_PASS`.
fn program(map_fd: i32, addr: Ipv4Addr, port: u16) -> Vec<Insn> {
    // local_ip4 is in network order; loaded as a little-endian u32, and
    // compared in 32 bits (JMP32), so the sign of the immediate is moot.
    let ip = u32::from_le_bytes(addr.octets()) as i32;
    // Jumps count from the next instruction; `PASS` is `r0 = SK_PASS`.
    const PASS: i16 = 21;
    let to_pass = |here: i16| PASS - here - 1;
    vec![
        Insn::new(0xbf, 6, 1, 0, 0),                          // 0: r6 = ctx
        Insn::new(0x61, 2, 6, CTX_PROTOCOL, 0),               // 1: r2 = protocol
        Insn::new(0x56, 2, 0, to_pass(2), libc::IPPROTO_TCP), // 2: w2 != TCP: pass
        Insn::new(0x61, 2, 6, CTX_LOCAL_IP4, 0),              // 3: r2 = local_ip4
        Insn::new(0x56, 2, 0, to_pass(4), ip),                // 4: w2 != addr: pass
        Insn::new(0x61, 2, 6, CTX_LOCAL_PORT, 0),             // 5: r2 = local_port
        Insn::new(0x56, 2, 0, to_pass(6), i32::from(port)),   // 6: w2 != port: pass
        Insn::new(0x62, 10, 0, -4, 0),                        // 7: key on the stack = 0
        Insn::new(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),     // 8: r1 = map (2 slots)
        Insn::new(0, 0, 0, 0, 0),                             // 9
        Insn::new(0xbf, 2, 10, 0, 0),                         // 10: r2 = fp
        Insn::new(0x07, 2, 0, 0, -4),                         // 11: r2 = &key
        Insn::new(0x85, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),     // 12: r0 = map[key]
        Insn::new(0x15, 0, 0, to_pass(13), 0),                // 13: no socket: pass
        Insn::new(0xbf, 7, 0, 0, 0),                          // 14: r7 = sk
        Insn::new(0xbf, 1, 6, 0, 0),                          // 15: r1 = ctx
        Insn::new(0xbf, 2, 7, 0, 0),                          // 16: r2 = sk
        Insn::new(0xb7, 3, 0, 0, 0),                          // 17: r3 = 0 (flags)
        Insn::new(0x85, 0, 0, 0, HELPER_SK_ASSIGN),           // 18: sk_assign
        Insn::new(0xbf, 1, 7, 0, 0),                          // 19: r1 = sk
        Insn::new(0x85, 0, 0, 0, HELPER_SK_RELEASE),          // 20: sk_release
        Insn::new(0xb7, 0, 0, 0, SK_PASS),                    // 21: r0 = SK_PASS
        Insn::new(0x95, 0, 0, 0, 0),                          // 22: exit
    ]
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
}

/// `union bpf_attr`, as bytes: each command reads its own fields at fixed
/// offsets, and the kernel wants every byte it does not read zeroed.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Self {
        Self([0; 128])
    }
}

impl Attr {
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `bpf(cmd, attr, size)`; its non-negative result.
fn bpf_call(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-filled bpf_attr of the size passed, whose
    // pointer fields (set by the callers) point at buffers that outlive
    // the call; the kernel reads and writes only within them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// A command that creates an object and returns its descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned no descriptor"))?;
    // SAFETY: the kernel returned a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    /// The next connection on `listener`; panics after a few seconds, so a
    /// connection that went elsewhere fails the test instead of hanging it.
    fn accept_within(listener: &TcpListener, what: &str) -> TcpStream {
        listener.set_nonblocking(true).unwrap();
        for _ in 0..500 {
            match listener.accept() {
                Ok((sock, _)) => {
                    sock.set_nonblocking(false).unwrap();
                    return sock;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
        panic!("{what} got no connection");
    }

    /// In a network namespace of its own (this thread only): an app on
    /// `0.0.0.0:80` and the steered listener both work, each getting its
    /// own connections.
    #[test]
    fn the_metadata_address_is_steered_and_port_80_stays_free_for_apps() {
        let outcome = std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", io::Error::last_os_error()));
            }
            crate::net::loopback_up().map_err(|e| format!("lo up: {e}"))?;
            let addr = Ipv4Addr::new(169, 254, 169, 254);
            crate::net::add_loopback_address(addr).map_err(|e| format!("address: {e}"))?;
            let ours = TcpListener::bind(SocketAddr::from((addr, 0))).unwrap();
            let _steering = steer(addr, 80, &ours).map_err(|e| format!("steer: {e}"))?;
            let app = TcpListener::bind("0.0.0.0:80").expect("an app can still bind 0.0.0.0:80");

            let mut to_metadata = TcpStream::connect((addr, 80)).unwrap();
            let mut got = accept_within(&ours, "the steered listener");
            to_metadata.write_all(b"imds").unwrap();
            let mut buf = [0u8; 4];
            got.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"imds");
            assert_eq!(got.local_addr().unwrap(), SocketAddr::from((addr, 80)));

            let _to_app = TcpStream::connect("127.0.0.1:80").unwrap();
            accept_within(&app, "the app");
            Ok(())
        })
        .join()
        .unwrap();
        if let Err(e) = outcome {
            // Without CAP_SYS_ADMIN/CAP_BPF (an unprivileged test run) the
            // steering cannot be tried here; the API tests try it in a guest.
            assert!(e.contains("Operation not permitted"), "{e}");
            eprintln!("skipped: {e}");
        }
    }
}
