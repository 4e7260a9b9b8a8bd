#!/usr/bin/env bash
# Installs the host packages Ember needs on Debian 12, idempotently: a run
# on a machine that has them all makes no network call.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need_pkgs+=(qemu-system-x86)
have qemu-img || need_pkgs+=(qemu-utils)
have mkfs.ext4 || need_pkgs+=(e2fsprogs)
have dpkg-deb || need_pkgs+=(dpkg)
# The debian12-minimal base rootfs; it lives in /usr/sbin, off a user's PATH.
have nft || [[ -x /usr/sbin/nft ]] || need_pkgs+=(nftables)
have debootstrap || [[ -x /usr/sbin/debootstrap ]] || need_pkgs+=(debootstrap)
have python3 || need_pkgs+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)

if ((${#need_pkgs[@]})); then
    echo "installing: ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! have cargo; then
    echo "error: cargo not found; Ember needs a Rust toolchain (1.80 or newer, e.g. from rustup)" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-gnu; then
    have rustup && rustup target add x86_64-unknown-linux-gnu >/dev/null
fi
