//! `Restored`: after a snapshot restore the guest's clock is stale and its
//! RNG state is shared with every other clone of the snapshot.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use crate::channel::Failure;

/// Most entropy a `Restored` may carry (the kernel caps one add anyway).
const MAX_ENTROPY: usize = 4096;

/// `_IOW('R', 0x03, int[2])` from linux/random.h.
const RNDADDENTROPY: u64 = 0x4008_5203;
/// `_IO('R', 0x07)` from linux/random.h.
const RNDRESEEDCRNG: u64 = 0x5207;

pub fn apply(secs: i64, nanos: u32, entropy: &[u8]) -> Result<(), Failure> {
    if entropy.len() > MAX_ENTROPY {
        return Err(Failure::invalid(format!(
            "{} bytes of entropy, at most {MAX_ENTROPY} accepted",
            entropy.len()
        )));
    }
    if nanos >= 1_000_000_000 {
        return Err(Failure::invalid(format!(
            "realtime_nanos {nanos} out of range"
        )));
    }
    set_clock(secs, nanos).map_err(|e| Failure::io("setting CLOCK_REALTIME", &e))?;
    reseed(entropy)
}

fn set_clock(secs: i64, nanos: u32) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`
/// laid out in u32 words so the buffer is correctly aligned.
fn rand_pool_info(entropy: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; 2 + entropy.len().div_ceil(4)];
    // Both counts are bounded by MAX_ENTROPY, far below i32::MAX.
    words[0] = (entropy.len() * 8) as u32;
    words[1] = entropy.len() as u32;
    for (word, chunk) in words[2..].iter_mut().zip(entropy.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(b);
    }
    words
}

fn reseed(entropy: &[u8]) -> Result<(), Failure> {
    let dev = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| Failure::io("opening /dev/urandom", &e))?;
    if !entropy.is_empty() {
        let info = rand_pool_info(entropy);
        // SAFETY: `info` is a properly aligned rand_pool_info whose buffer
        // holds `buf_size` bytes; the kernel only reads it.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(Failure::io("RNDADDENTROPY", &e));
        }
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(Failure::io("RNDRESEEDCRNG", &e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rand_pool_info_layout() {
        let w = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0], 40);
        assert_eq!(w[1], 5);
        assert_eq!(w[2], u32::from_ne_bytes([1, 2, 3, 4]));
        assert_eq!(w[3], u32::from_ne_bytes([5, 0, 0, 0]));
    }

    #[test]
    fn rejects_bad_arguments_before_touching_the_system() {
        assert!(apply(0, 0, &[0; MAX_ENTROPY + 1]).is_err());
        assert!(apply(0, 1_000_000_000, &[]).is_err());
    }
}
