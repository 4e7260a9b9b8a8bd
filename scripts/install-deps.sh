#!/usr/bin/env bash
# Installs the host tools Ember and its tests run, on Debian 12,
# idempotently: a run on a machine that has them all makes no network call.
# Every program the code starts (`grep -rn 'Command::new(' --include=*.rs`)
# is listed here with the package that provides it, and checked again after
# installing, so a fresh machine fails here, naming the tool, rather than
# deep inside a test.
set -euo pipefail

# tool → Debian package. Tools in /usr/sbin are found there too (root's
# PATH may lack it when run through sudo or make).
tools=(
    qemu-system-x86_64:qemu-system-x86
    # qemu-system-x86 conflicts with a newer, backported qemu-utils that
    # some images ship: apt removes it, so qemu-img is checked after
    # qemu-system-x86 is in place and reinstalled at the matching version.
    qemu-img:qemu-utils
    mkfs.ext4:e2fsprogs
    e2fsck:e2fsprogs
    debugfs:e2fsprogs
    dpkg-deb:dpkg
    dpkg-query:dpkg
    apt-get:apt
    cpio:cpio
    tar:tar
    nft:nftables
    debootstrap:debootstrap
    getent:libc-bin
    ldd:libc-bin
    hostname:hostname
    mkfifo:coreutils
    sleep:coreutils
    curl:curl
    python3:python3
    # ember-registry's tests: a real registry, images pushed to it, the
    # bcrypt htpasswd its basic auth reads, the CA its TLS and tokens use.
    docker-registry:docker-registry
    skopeo:skopeo
    htpasswd:apache2-utils
    openssl:openssl
    # The Postgres state store's tests: a real server in a fresh cluster
    # (initdb), run as the package's postgres account when root.
    /usr/lib/postgresql/15/bin/initdb:postgresql-15
    /usr/lib/postgresql/15/bin/postgres:postgresql-15
    # The fuzz targets: libfuzzer-sys builds libFuzzer's C++ runtime.
    g++:g++
)

have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]; }
python_ok() { python3 -c 'import venv, ensurepip' 2>/dev/null; }

missing_pkgs() {
    local entry tool pkg
    local -A seen=()
    for entry in "${tools[@]}"; do
        tool=${entry%%:*}
        pkg=${entry#*:}
        if ! have "$tool" && [[ -z ${seen[$pkg]:-} ]]; then
            seen[$pkg]=1
            echo "$pkg"
        fi
    done
    if have python3 && ! python_ok; then
        echo python3-venv
    fi
}

install_round() {
    local -a pkgs
    mapfile -t pkgs < <(missing_pkgs)
    ((${#pkgs[@]})) || return 0
    echo "installing: ${pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z ${apt_updated:-} ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    # None of these is meant to run as a service on this host (the
    # tests start their own docker-registry on a free port): no service
    # starts during the install, and docker-registry stays off after it.
    local policy=/usr/sbin/policy-rc.d own_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local status=0
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || status=$?
    [[ -n $own_policy ]] && rm -f "$policy"
    if [[ " ${pkgs[*]} " == *" docker-registry "* ]] && have systemctl; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
    return $status
}

# Two rounds: the first may remove a tool (see qemu-img above) that the
# second puts back.
install_round
install_round

failed=0
for entry in "${tools[@]}"; do
    tool=${entry%%:*}
    if ! have "$tool"; then
        echo "error: $tool is still missing after installing ${entry#*:}" >&2
        failed=1
    fi
done
if ! python_ok; then
    echo "error: python3's venv/ensurepip are missing after installing python3-venv" >&2
    failed=1
fi
# qemu-img must run (a half-removed package leaves a binary without libs).
if have qemu-img && ! qemu-img --version >/dev/null 2>&1; then
    echo "error: qemu-img is installed but does not run: $(qemu-img --version 2>&1 | head -1)" >&2
    failed=1
fi
((failed == 0)) || exit 1

if ! have cargo; then
    echo "error: cargo not found; Ember needs a Rust toolchain (1.80 or newer, e.g. from rustup)" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-gnu; then
    have rustup && rustup target add x86_64-unknown-linux-gnu >/dev/null
fi
