//! The QEMU command line. Boot and restore must describe the same machine
//! (same devices, same order), or the device state will not load; both go
//! through [`qemu_args`].

use std::path::Path;

use crate::backend::{Accel, VmConfig};

/// Where guest RAM lives.
pub enum RamBacking<'a> {
    /// A file the VM owns and writes through (`share=on`): snapshotting it
    /// is a copy of the file, no RAM passes through the migration stream.
    SharedFile(&'a Path),
    /// Anonymous memory, filled from the migration stream on restore.
    Anonymous,
}

/// Runtime files in a VM's folder, which only the backend writes: the
/// sockets QEMU serves (bound by the backend, inherited by QEMU) and the
/// runtime record.
pub const QMP_SOCKET: &str = "qmp.sock";
pub const AGENT_SOCKET: &str = "agent.sock";
/// The VM's writable folder inside its folder: the only place its QEMU
/// may write, owned by the VM's uid. QEMU runs in it, so the names below
/// stay relative.
pub const JAIL_DIR: &str = "jail";
pub const CONSOLE_LOG: &str = "console.log";
pub const DISK: &str = "disk.qcow2";
pub const MEMORY: &str = "memory.ram";

/// Descriptors QEMU inherits: the device state to load, the monitor's and
/// the agent channel's listening sockets.
pub const INCOMING_FD: i32 = 3;
pub const QMP_FD: i32 = 4;
pub const AGENT_FD: i32 = 5;

pub struct LaunchSpec<'a> {
    pub config: &'a VmConfig,
    pub accel: Accel,
    pub ram: RamBacking<'a>,
    pub tsc_khz: Option<u64>,
    pub tcg_tb_size_mib: u32,
    /// Waits for `migrate-incoming` instead of booting.
    pub incoming: bool,
    /// Kernel and initrd handed to QEMU in place of the config's, for a
    /// restore (see `stub_kernel`).
    pub boot_files_override: Option<(&'a Path, &'a Path)>,
}

pub fn kernel_cmdline(config: &VmConfig, accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut parts = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        "panic=-1".into(),
        "ember.root=/dev/vda".into(),
    ];
    if accel == Accel::Tcg {
        if let Some(khz) = tsc_khz {
            parts.push(format!("tsc_early_khz={khz}"));
        }
    }
    parts.extend(super::net::cmdline_option(config.network));
    if !config.extra_cmdline.trim().is_empty() {
        parts.push(config.extra_cmdline.trim().to_string());
    }
    parts.join(" ")
}

pub fn qemu_args(spec: &LaunchSpec<'_>) -> Vec<String> {
    let c = spec.config;
    let mem = format!("{}M", c.mem_mib);
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &c.name]);
    push(&["-M", "microvm,acpi=on,rtc=on,memory-backend=mem"]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // ARAT (the APIC timer keeps running in deep C-states) is true of
        // TCG's APIC, which emulates no C-states. Without it the kernel
        // needs a broadcast timer for one-shot mode, finds none on microvm,
        // and keeps a periodic 250 Hz tick on an idle guest: measured here,
        // an idle VM cost 7-8 % of a host core with it missing, 2.7 % with it.
        Accel::Tcg => push(&[
            "-accel",
            &format!("tcg,tb-size={}", spec.tcg_tb_size_mib),
            "-cpu",
            "qemu64,+arat",
        ]),
    }
    push(&["-m", &mem, "-smp", &c.vcpus.to_string()]);
    match spec.ram {
        RamBacking::SharedFile(p) => push(&[
            "-object",
            &format!(
                "memory-backend-file,id=mem,size={mem},mem-path={},share=on",
                opt_escape(p)
            ),
        ]),
        RamBacking::Anonymous => {
            push(&["-object", &format!("memory-backend-ram,id=mem,size={mem}")])
        }
    }
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // seccomp: no obsolete syscalls, no setuid/privilege changes, no
    // fork/exec, no scheduler or affinity games, for a guest that escapes
    // into QEMU.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    let (kernel, initrd) = spec
        .boot_files_override
        .unwrap_or((&c.kernel, &c.initramfs));
    push(&["-kernel", &kernel.display().to_string()]);
    push(&["-initrd", &initrd.display().to_string()]);
    push(&["-append", &kernel_cmdline(c, spec.accel, spec.tsc_khz)]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={CONSOLE_LOG},append=on"),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    push(&["-device", "virtio-serial-device"]);
    push(&[
        "-chardev",
        &format!("socket,id=agent,fd={AGENT_FD},server=on,wait=off"),
    ]);
    push(&["-device", "virtserialport,chardev=agent,name=agent"]);
    push(&[
        "-drive",
        &format!("if=none,id=root,file={DISK},format=qcow2,discard=unmap"),
    ]);
    push(&["-device", "virtio-blk-device,drive=root"]);
    push(&["-object", "rng-random,id=rng,filename=/dev/urandom"]);
    push(&["-device", "virtio-rng-device,rng=rng"]);
    let net = super::net::qemu_args(c);
    push(&net.iter().map(String::as_str).collect::<Vec<_>>());
    if spec.incoming {
        push(&["-incoming", "defer"]);
    }
    a
}

/// QEMU option values escape a comma by doubling it.
fn opt_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_and_restore_describe_the_same_devices() {
        let mut cfg = VmConfig::new("t", Path::new("/k"), Path::new("/i"), Path::new("/r"));
        cfg.network = crate::Network::Internet;
        let spec = |ram, incoming| LaunchSpec {
            config: &cfg,
            accel: Accel::Tcg,
            ram,
            tsc_khz: Some(2_000_000),
            tcg_tb_size_mib: 64,
            incoming,
            boot_files_override: None,
        };
        let boot = qemu_args(&spec(RamBacking::SharedFile(Path::new("m")), false));
        let restore = qemu_args(&spec(RamBacking::Anonymous, true));
        let devices = |a: &[String]| -> Vec<String> {
            a.windows(2)
                .filter(|w| w[0] == "-device")
                .map(|w| w[1].clone())
                .collect()
        };
        assert_eq!(devices(&boot), devices(&restore));
        assert!(devices(&boot)
            .iter()
            .any(|d| d.starts_with("virtio-net-device")));
        assert!(boot.iter().any(|s| s.contains("tsc_early_khz=2000000")));
        assert!(restore.ends_with(&["-incoming".to_string(), "defer".to_string()]));
    }
}
