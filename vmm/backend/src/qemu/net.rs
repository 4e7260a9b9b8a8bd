//! The VM's network card on the QEMU command line and the matching
//! `ember.net=` option the guest agent configures the interface from.

use crate::backend::{
    Network, VmConfig, DNS_ADDRESS, GATEWAY_ADDRESS, GUEST_ADDRESS, GUEST_PREFIX_LEN,
};

/// QEMU arguments for the VM's network card; empty without one. The
/// card itself (`-device`) is the same for every network, so device state
/// moves between them; only the backend it is plugged into (`-netdev`,
/// which is host-side and not part of the migrated state) differs.
pub fn qemu_args(config: &VmConfig) -> Vec<String> {
    let netdev = match config.network {
        Network::None => return Vec::new(),
        // Addresses are spelled out (they are slirp's defaults) so the
        // guest's `ember.net=` and the constants callers see cannot drift
        // from what slirp serves. No hostfwd: nothing connects in. IPv6 is
        // off because nothing configures or tests it: a guest would get a
        // SLAAC address and prefer AAAA answers the host may not route.
        Network::Internet => format!(
            "user,id=net0,net={GATEWAY_ADDRESS}/{GUEST_PREFIX_LEN},host={GATEWAY_ADDRESS},\
             dhcpstart={GUEST_ADDRESS},dns={DNS_ADDRESS},ipv6=off"
        ),
        // A port alone on its hub: what the card sends reaches no other
        // port and is dropped, and nothing is ever delivered to it. QEMU
        // warns "hub 0 is not connected to host network"; that is the point.
        Network::Isolated => "hubport,id=net0,hubid=0".to_string(),
    };
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!(
            "virtio-net-device,netdev=net0,mac={}",
            mac_for(&config.name)
        ),
    ]
}

/// The kernel command line option telling the agent how to set up the
/// interface: `ember.net=<address>/<prefix>,<gateway>`.
pub fn cmdline_option(network: Network) -> Option<String> {
    match network {
        Network::None => None,
        // Isolated too: the guest is set up the same, so it finds the
        // gateway and DNS the moment a restore plugs it into the internet.
        Network::Internet | Network::Isolated => Some(format!(
            "ember.net={GUEST_ADDRESS}/{GUEST_PREFIX_LEN},{GATEWAY_ADDRESS}"
        )),
    }
}

/// A locally administered unicast MAC that stays the same for a VM name
/// across runs (CRC-32 is fixed, unlike std's hasher). A restored VM keeps
/// the MAC of the VM it was snapshotted from: the device state carries it.
pub fn mac_for(name: &str) -> String {
    let [a, b, c, d] = crc32fast::hash(name.as_bytes()).to_be_bytes();
    // 0x02: locally administered, unicast. 0x45: 'E', for Ember.
    format!("02:45:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mac_is_stable_unicast_and_per_name() {
        let mac = mac_for("vm-1");
        assert_eq!(mac, mac_for("vm-1"));
        assert_ne!(mac, mac_for("vm-2"));
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered unicast: {mac}");
        assert_eq!(mac.split(':').count(), 6);
    }

    #[test]
    fn no_network_adds_nothing() {
        let cfg = VmConfig::new("t", Path::new("/k"), Path::new("/i"), Path::new("/r"));
        assert!(qemu_args(&cfg).is_empty());
        assert_eq!(cmdline_option(cfg.network), None);
    }

    #[test]
    fn internet_is_user_networking_without_forwards() {
        let mut cfg = VmConfig::new("t", Path::new("/k"), Path::new("/i"), Path::new("/r"));
        cfg.network = Network::Internet;
        let args = qemu_args(&cfg);
        assert_eq!(args[0], "-netdev");
        assert!(args[1].starts_with("user,id=net0,"), "{}", args[1]);
        assert!(!args[1].contains("hostfwd"));
        assert_eq!(
            args[3],
            format!("virtio-net-device,netdev=net0,mac={}", mac_for("t"))
        );
        assert_eq!(
            cmdline_option(cfg.network).as_deref(),
            Some("ember.net=10.0.2.15/24,10.0.2.2")
        );
    }

    #[test]
    fn isolated_has_the_same_card_and_cmdline_plugged_into_nothing() {
        let mut cfg = VmConfig::new("t", Path::new("/k"), Path::new("/i"), Path::new("/r"));
        cfg.network = Network::Internet;
        let internet = qemu_args(&cfg);
        let internet_cmdline = cmdline_option(cfg.network);
        cfg.network = Network::Isolated;
        let isolated = qemu_args(&cfg);
        assert_eq!(isolated[1], "hubport,id=net0,hubid=0");
        assert_eq!(isolated[2..], internet[2..], "same -device");
        assert_eq!(cmdline_option(cfg.network), internet_cmdline);
    }
}
