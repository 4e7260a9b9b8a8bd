//! Admission: a run or resume that the host cannot hold is refused with
//! the model's capacity errors instead of pushing the host into swap or
//! the OOM killer.

use ember_api::{ApiError, ErrorKind};

#[derive(Debug, Clone)]
pub struct Capacity {
    /// MicroVMs not yet terminated (running and suspended).
    pub max_live: u64,
    /// MicroVMs whose QEMU is running.
    pub max_running: u64,
    /// Memory left to the host: a VM starts only if its RAM fits into
    /// `MemAvailable` minus this.
    pub memory_reserve_mib: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_live: 2000,
            max_running: 100,
            memory_reserve_mib: 1024,
        }
    }
}

impl Capacity {
    /// A new microVM: the account-level quota first, then the host.
    pub fn admit_run(&self, live: u64, running: u64, memory_mib: u32) -> Result<(), ApiError> {
        if live >= self.max_live {
            return Err(ApiError::new(
                ErrorKind::ServiceQuotaExceeded,
                format!(
                    "this emberd holds at most {} microVMs (running or suspended); terminate some \
                     or raise --max-microvms",
                    self.max_live
                ),
            ));
        }
        self.admit_start(running, memory_mib)
    }

    /// A VM about to get a QEMU process (run or resume).
    pub fn admit_start(&self, running: u64, memory_mib: u32) -> Result<(), ApiError> {
        if running >= self.max_running {
            return Err(ApiError::new(
                ErrorKind::InsufficientCapacity,
                format!(
                    "this host already runs {running} microVMs, its limit (--max-running-microvms); \
                     suspend or terminate one"
                ),
            ));
        }
        if let Some(available) = mem_available_mib() {
            let needed = u64::from(memory_mib) + self.memory_reserve_mib;
            if available < needed {
                return Err(ApiError::new(
                    ErrorKind::InsufficientCapacity,
                    format!(
                        "not enough free memory on this host for a {memory_mib} MiB microVM: \
                         {available} MiB available, {} MiB kept for the host",
                        self.memory_reserve_mib
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_host_limits_have_their_own_errors() {
        let c = Capacity {
            max_live: 2,
            max_running: 1,
            memory_reserve_mib: 0,
        };
        assert!(c.admit_run(0, 0, 128).is_ok());
        let quota = c.admit_run(2, 0, 128).unwrap_err();
        assert_eq!(quota.kind(), ErrorKind::ServiceQuotaExceeded);
        let full = c.admit_run(1, 1, 128).unwrap_err();
        assert_eq!(full.kind(), ErrorKind::InsufficientCapacity);
        let huge = c.admit_start(0, u32::MAX).unwrap_err();
        assert_eq!(huge.kind(), ErrorKind::InsufficientCapacity);
        assert!(mem_available_mib().is_some());
    }
}
