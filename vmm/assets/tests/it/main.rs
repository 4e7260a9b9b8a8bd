//! Guest asset tests against the real Debian packages, in one test binary.

mod debian_rootfs;
mod real_assets;
