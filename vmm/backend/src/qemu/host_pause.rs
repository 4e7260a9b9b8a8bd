//! Telling a VM that QEMU paused by itself from one Ember paused. QEMU
//! stops a VM whose disk write failed under its `werror=enospc` default
//! (run state `io-error`) and keeps the failed request to retry at the
//! next `cont`; each block device's `io-status` says whether the host
//! ran out of space.

use serde_json::{json, Value};

use super::qmp::Qmp;
use crate::backend::HostPause;
use crate::VmmError;

/// Asks QEMU's run state, and on an I/O-error stop, which kind it was.
pub(super) async fn query(qmp: &Qmp) -> Result<Option<HostPause>, VmmError> {
    let status = qmp.execute("query-status", json!({})).await?;
    if !stopped_on_io_error(&status) {
        return Ok(None);
    }
    let blocks = qmp.execute("query-block", json!({})).await?;
    Ok(Some(cause(&blocks)))
}

fn stopped_on_io_error(status: &Value) -> bool {
    status.get("status").and_then(Value::as_str) == Some("io-error")
}

/// Any device out of space makes it a full disk: that is the one QEMU
/// stops for by default; anything else is reported as a plain failure.
fn cause(blocks: &Value) -> HostPause {
    let nospace = blocks
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b.get("io-status").and_then(Value::as_str) == Some("nospace"));
    if nospace {
        HostPause::DiskFull
    } else {
        HostPause::DiskError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_io_error_stop_is_a_host_pause() {
        let status = |s: &str| json!({"running": false, "singlestep": false, "status": s});
        assert!(stopped_on_io_error(&status("io-error")));
        for other in ["running", "paused", "postmigrate", "inmigrate", "shutdown"] {
            assert!(!stopped_on_io_error(&status(other)), "{other}");
        }
        assert!(!stopped_on_io_error(&json!({})));
        assert!(!stopped_on_io_error(&json!("io-error")));
    }

    #[test]
    fn a_device_out_of_space_is_a_full_disk() {
        let blocks = json!([
            {"device": "root", "io-status": "nospace", "locked": false},
            {"device": "other", "io-status": "ok"},
        ]);
        assert_eq!(cause(&blocks), HostPause::DiskFull);
        let failed = json!([{"device": "root", "io-status": "failed"}]);
        assert_eq!(cause(&failed), HostPause::DiskError);
        // Devices without an io-status (no werror support) say nothing.
        assert_eq!(cause(&json!([{"device": "x"}])), HostPause::DiskError);
        assert_eq!(cause(&json!({"unexpected": true})), HostPause::DiskError);
    }
}
