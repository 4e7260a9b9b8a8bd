//! Deep resumes from a cold page cache: a VM suspended to disk whose files
//! the host has since dropped from memory (as after hours suspended, or a
//! busy host), resumed by a request and timed to its first answer. Run
//! under emberds with and without the working-set prefetch, it is what the
//! prefetch saves.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use ember::api_client::ApiClient;

use crate::microvm::{get, run_vm, suspend, terminate, token, FAST_POLL};

/// Median ms from a request to a VM suspended to disk, its files evicted
/// from the page cache, to the first byte of its answer; `runs` times.
pub(crate) async fn cold_deep_resume_ms(
    api: &ApiClient,
    http: &reqwest::Client,
    dir: &Path,
    runs: usize,
) -> anyhow::Result<f64> {
    let vm = run_vm(api, Some(3600)).await?;
    let vm_token = token(api, &vm.id).await?;
    get(http, &vm.endpoint, &vm_token).await?;
    let mut times = Vec::new();
    for _ in 0..runs {
        suspend(api, &vm.id, FAST_POLL).await?;
        evict(&dir.join("microvms").join(&vm.id).join("suspended"))?;
        let t = Instant::now();
        get(http, &vm.endpoint, &vm_token).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    terminate(api, &vm.id).await?;
    Ok(crate::median(times))
}

/// Writes back and drops every file under `dir` from the page cache.
fn evict(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let file = std::fs::File::open(&path)?;
        file.sync_all()?;
        // SAFETY: an advice on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        anyhow::ensure!(rc == 0, "fadvise {}: error {rc}", path.display());
    }
    Ok(())
}
