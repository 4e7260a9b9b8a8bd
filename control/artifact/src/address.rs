//! Which IP addresses an artifact download may connect to.
//!
//! emberd runs as root on a host that usually sits next to things an
//! uploader must never reach through it: its own loopback services, the
//! private network, the cloud's metadata endpoint. Anything that is not a
//! plain public unicast address is refused; IPv6 forms that embed an IPv4
//! address (mapped, compatible, NAT64, 6to4) are judged by that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an address is, as far as fetching an artifact from it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Public unicast: may be fetched from.
    Public,
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16).
    Private,
    /// Shared address space, carrier-grade NAT (100.64/10).
    Shared,
    LinkLocal,
    /// A cloud instance-metadata endpoint (169.254.169.254, fd00:ec2::254, …).
    Metadata,
    /// IPv6 unique local (fc00::/7).
    UniqueLocal,
    /// 0.0.0.0/8 and `::`: on Linux a connect to them reaches the host itself.
    Unspecified,
    Multicast,
    Broadcast,
    /// TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// Protocol assignments, tunnels, future use: nothing an artifact lives on.
    Reserved,
}

impl AddressClass {
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }
}

/// Metadata endpoints, checked before the ranges they sit in so logs and
/// tests name them for what they are. 100.100.100.200 is Alibaba Cloud's.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

const V4_RANGES: &[(u32, u8, AddressClass)] = &[
    (0x0000_0000, 8, AddressClass::Unspecified),
    (0x0a00_0000, 8, AddressClass::Private),
    (0x6440_0000, 10, AddressClass::Shared),
    (0x7f00_0000, 8, AddressClass::Loopback),
    (0xa9fe_0000, 16, AddressClass::LinkLocal),
    (0xac10_0000, 12, AddressClass::Private),
    (0xc000_0000, 24, AddressClass::Reserved),
    (0xc000_0200, 24, AddressClass::Documentation),
    (0xc058_6300, 24, AddressClass::Reserved),
    (0xc0a8_0000, 16, AddressClass::Private),
    (0xc612_0000, 15, AddressClass::Benchmarking),
    (0xc633_6400, 24, AddressClass::Documentation),
    (0xcb00_7100, 24, AddressClass::Documentation),
    (0xe000_0000, 4, AddressClass::Multicast),
    (0xffff_ffff, 32, AddressClass::Broadcast),
    (0xf000_0000, 4, AddressClass::Reserved),
];

/// Inside 2000::/3 (global unicast); everything outside it is refused.
const V6_GLOBAL_RANGES: &[(u128, u8, AddressClass)] = &[
    (0x2001_0db8 << 96, 32, AddressClass::Documentation),
    (0x3fff << 112, 20, AddressClass::Documentation),
    (0x2001_0002 << 96, 48, AddressClass::Benchmarking),
    // IETF protocol assignments: Teredo, ORCHID, AS112 and friends.
    (0x2001 << 112, 23, AddressClass::Reserved),
];

pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    if METADATA_V4.contains(&ip) {
        return AddressClass::Metadata;
    }
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| in_prefix(bits.into(), (*net).into(), *len, 32))
        .map_or(AddressClass::Public, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if METADATA_V6.contains(&ip) {
        return AddressClass::Metadata;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    let outside_global: &[(u128, u8, AddressClass)] = &[
        (0xfc00 << 112, 7, AddressClass::UniqueLocal),
        (0xfe80 << 112, 10, AddressClass::LinkLocal),
        (0xff00 << 112, 8, AddressClass::Multicast),
    ];
    if let Some((_, _, class)) = outside_global
        .iter()
        .find(|(net, len, _)| in_prefix(bits, *net, *len, 128))
    {
        return *class;
    }
    if !in_prefix(bits, 0x2000 << 112, 3, 128) {
        return AddressClass::Reserved;
    }
    V6_GLOBAL_RANGES
        .iter()
        .find(|(net, len, _)| in_prefix(bits, *net, *len, 128))
        .map_or(AddressClass::Public, |(_, _, class)| *class)
}

/// The IPv4 address an IPv6 address stands for when the stack (or a NAT64
/// or 6to4 gateway) would deliver it to that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but
    // still parsed); `::` and `::1` are not IPv4 addresses.
    if bits >> 32 == 0xffff || (bits >> 32 == 0 && bits > 1) {
        return Some(low32);
    }
    // The NAT64 well-known prefix 64:ff9b::/96. The local-use 64:ff9b:1::/48
    // places the address where the operator chose, so it is refused whole
    // (it lies outside 2000::/3).
    if bits >> 32 == 0x0064_ff9b << 64 {
        return Some(low32);
    }
    // 6to4: 2002:AABB:CCDD::/48 routes to AA.BB.CC.DD.
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn in_prefix(addr: u128, net: u128, len: u8, width: u8) -> bool {
    let shift = u32::from(width - len);
    (addr >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::AddressClass::*;
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn ipv4_ranges() {
        for (addr, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("100.64.0.1", Shared),
            ("100.127.255.254", Shared),
            ("100.100.100.200", Metadata),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("169.254.0.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.170.2", Metadata),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Documentation),
            ("192.88.99.1", Reserved),
            ("192.168.1.1", Private),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
        ] {
            assert_eq!(class(addr), want, "{addr}");
        }
    }

    #[test]
    fn ipv4_public_neighbours_of_refused_ranges() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(class(addr), Public, "{addr}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        for (addr, want) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", UniqueLocal),
            ("fdff:ffff::1", UniqueLocal),
            ("fd00:ec2::254", Metadata),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("ff02::1", Multicast),
            ("fec0::1", Reserved),
            ("100::1", Reserved),
            ("1fff:ffff::1", Reserved),
            ("4000::1", Reserved),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", Reserved),
            ("2001:10::1", Reserved),
        ] {
            assert_eq!(class(addr), want, "{addr}");
        }
        for addr in ["2606:4700::1111", "2a00:1450:4001::200e", "2001:4860::8888"] {
            assert_eq!(class(addr), Public, "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_by_the_ipv4_address() {
        for (addr, want) in [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:100.64.0.1", Shared),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:255.255.255.255", Broadcast),
            ("::127.0.0.1", Loopback),
            ("::169.254.169.254", Metadata),
            ("::192.168.0.1", Private),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("64:ff9b:1::10.0.0.1", Reserved),
            ("64:ff9b:1::8.8.8.8", Reserved),
            ("2002:7f00:1::", Loopback),
            ("2002:a9fe:a9fe::1", Metadata),
            ("2002:c0a8:0101::", Private),
        ] {
            assert_eq!(class(addr), want, "{addr}");
        }
        for addr in ["::ffff:8.8.8.8", "64:ff9b::1.1.1.1", "2002:0808:0808::1"] {
            assert_eq!(class(addr), Public, "{addr}");
        }
    }
}
