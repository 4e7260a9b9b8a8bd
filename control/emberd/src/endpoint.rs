//! The endpoint proxy's idle timeout, kept below the shortest idle policy
//! a microVM may have: an idle client connection holds a guest connection
//! open, so a longer timeout would delay every idle suspend.

use std::time::Duration;

const DEFAULT_IDLE_TIMEOUT_S: f64 = 30.0;

pub fn idle_timeout(asked_s: Option<f64>, min_idle_seconds: u32) -> anyhow::Result<Duration> {
    let floor = f64::from(min_idle_seconds);
    let seconds = match asked_s {
        Some(s) if !(s > 0.0 && s < floor) => anyhow::bail!(
            "--endpoint-idle-timeout must be above 0 and below --min-idle-seconds ({floor}), got {s}"
        ),
        Some(s) => s,
        None => DEFAULT_IDLE_TIMEOUT_S.min(floor / 2.0),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!("--endpoint-idle-timeout {seconds} is not a usable duration")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_stays_below_the_idle_floor() {
        assert_eq!(idle_timeout(None, 60).unwrap(), Duration::from_secs(30));
        assert_eq!(idle_timeout(None, 2).unwrap(), Duration::from_secs(1));
        assert_eq!(
            idle_timeout(Some(0.5), 2).unwrap(),
            Duration::from_millis(500)
        );
        assert!(idle_timeout(Some(2.0), 2).is_err());
        assert!(idle_timeout(Some(0.0), 60).is_err());
        assert!(idle_timeout(Some(f64::NAN), 60).is_err());
        assert!(idle_timeout(None, 0).is_err());
    }
}
