//! Keeps guests with outbound internet off the host and its networks.
//!
//! User-mode networking (slirp) runs inside QEMU: a guest's TCP
//! connection becomes a socket QEMU opens on the host, and slirp maps the
//! gateway address 10.0.2.2 to the host's loopback. Without a guard a
//! hostile `RUN` step could reach every service listening on the host.
//! Every QEMU runs with a gid from the jail's id range (`jail::ids`), and
//! an nftables table drops what sockets of those gids send to the host's own
//! addresses, loopback, private, shared and link-local ranges (cloud
//! metadata included), except DNS to the host's configured resolvers,
//! which slirp's DNS relay needs. Public addresses stay reachable. The
//! drop rules count what they drop (`nft list table inet ember_egress_guard`).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::jail::IdRange;
use crate::VmmError;

const TABLE: &str = "ember_egress_guard";

/// The installed guard: the gids whose sockets it polices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressGuard {
    pub gids: IdRange,
}

impl EgressGuard {
    /// (Re)installs the nftables table. Idempotent; needs root and `nft`.
    pub fn install(gids: IdRange) -> Result<Self, VmmError> {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let nft = if std::path::Path::new("/usr/sbin/nft").is_file() {
            "/usr/sbin/nft"
        } else {
            "nft"
        };
        run(nft, &["-f", "-"], Some(&ruleset(gids, &resolvers(&resolv))))?;
        tracing::info!(%gids, "egress guard installed (nftables table inet {TABLE})");
        Ok(Self { gids })
    }
}

fn tool(tool: &'static str, message: String) -> VmmError {
    VmmError::Tool { tool, message }
}

pub(super) fn run(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), VmmError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VmmError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(VmmError::io(format!("write to {program}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(VmmError::io(format!("wait for {program}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(tool(
            program,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(2000)
                .collect(),
        ))
    }
}

/// IPv4 nameservers of a resolv.conf.
fn resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The whole table, replaced atomically (`nft -f` applies a file as one
/// transaction).
fn ruleset(gids: IdRange, resolvers: &[Ipv4Addr]) -> String {
    let dns = if resolvers.is_empty() {
        String::new()
    } else {
        let set = resolvers
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        format!("        meta l4proto {{ tcp, udp }} th dport 53 ip daddr {{ {set} }} accept\n")
    };
    // Only packets whose socket belongs to the group jump to the checks:
    // `meta skgid != …` would also catch packets the kernel sends without
    // a socket (a closed port's RST, some ACKs) and break the host's own
    // loopback traffic.
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20   chain output {{\n\
         \x20       type filter hook output priority 0; policy accept;\n\
         \x20       meta skgid {first}-{last} jump guest_sockets\n\
         \x20   }}\n\
         \x20   chain guest_sockets {{\n\
         {dns}\
         \x20       fib daddr type local counter drop\n\
         \x20       ip daddr {{ 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, \
         172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/3 }} counter drop\n\
         \x20       ip6 daddr {{ ::1, fc00::/7, fe80::/10, ff00::/8 }} counter drop\n\
         \x20   }}\n\
         }}\n",
        first = gids.first,
        last = gids.last,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let r = resolvers(
            "# x\nnameserver 10.255.255.53\nnameserver ::1\nsearch a\nnameserver 1.1.1.1\n",
        );
        assert_eq!(
            r,
            [
                "10.255.255.53".parse::<Ipv4Addr>().unwrap(),
                "1.1.1.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn ruleset_scopes_to_the_group_and_allows_only_dns_inward() {
        let r = ruleset(
            "4242-4300".parse().unwrap(),
            &["10.255.255.53".parse().unwrap()],
        );
        assert!(r.contains("meta skgid 4242-4300 jump guest_sockets"), "{r}");
        assert!(
            !r.contains("skgid !="),
            "socketless packets must not be caught"
        );
        let dns = r
            .find("th dport 53 ip daddr { 10.255.255.53 } accept")
            .unwrap();
        let local = r.find("fib daddr type local counter drop").unwrap();
        assert!(dns < local, "DNS is allowed before the drops");
        assert!(r.contains("127.0.0.0/8") && r.contains("169.254.0.0/16"));
        assert!(!ruleset(IdRange::DEFAULT, &[]).contains("dport 53"));
    }
}
