//! Facts about the host for the entity's `system`: host name, OS, distribution (from
//! `/etc/os-release`), architecture and network interfaces (from `/proc/net`, without libc).
//!
//! Collecting never fails: a fact that cannot be read is left empty.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use cairn_api::model::{Network, NetworkInterface, System};

/// Collects the host's facts.
pub fn collect() -> System {
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let release = OsRelease::parse(&os_release);
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let interfaces = parse_interfaces(
        &read("/proc/net/dev"),
        &read("/proc/net/if_inet6"),
        &read("/proc/net/fib_trie"),
        &read("/proc/net/route"),
    );
    System {
        hostname: hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: std::env::consts::OS.to_owned(),
        platform: release.platform,
        platform_family: release.family,
        platform_version: release.version,
        arch: arch(std::env::consts::ARCH).to_owned(),
        libc_type: libc_type().to_owned(),
        network: Some(Network { interfaces }),
        ..System::default()
    }
}

/// The architecture by the names Sensu (Go) uses.
pub fn arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn libc_type() -> &'static str {
    if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "gnu") {
        "glibc"
    } else {
        ""
    }
}

/// What `/etc/os-release` says about the distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. `ubuntu`.
    pub platform: String,
    /// The first of `ID_LIKE`, else `ID`: `debian`, `rhel`, …
    pub family: String,
    /// `VERSION_ID`.
    pub version: String,
}

// === impl OsRelease ===

impl OsRelease {
    /// Parses the `KEY=value` lines of an os-release file.
    pub fn parse(text: &str) -> OsRelease {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            values.insert(key.trim(), unquote(value.trim()));
        }
        let platform = values.get("ID").cloned().unwrap_or_default();
        let family = values
            .get("ID_LIKE")
            .and_then(|like| like.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| platform.clone());
        let family = match family.as_str() {
            // CentOS says `ID_LIKE="rhel fedora"`, Rocky `"rhel centos fedora"`; both are rhel.
            "centos" | "fedora" if platform != "fedora" => "rhel".to_owned(),
            _ => family,
        };
        OsRelease {
            platform,
            family,
            version: values.get("VERSION_ID").cloned().unwrap_or_default(),
        }
    }
}

fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .or_else(|| {
            value
                .strip_prefix('\'')
                .and_then(|rest| rest.strip_suffix('\''))
        })
        .unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The interfaces with their addresses in CIDR form, from the text of `/proc/net/dev` (names,
/// in the kernel's order), `/proc/net/if_inet6` (IPv6), `/proc/net/fib_trie` (local IPv4
/// addresses) and `/proc/net/route` (which interface and prefix each IPv4 address belongs to).
pub fn parse_interfaces(
    dev: &str,
    if_inet6: &str,
    fib_trie: &str,
    route: &str,
) -> Vec<NetworkInterface> {
    let mut interfaces: Vec<NetworkInterface> = dev
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty() && !name.contains('|'))
        .map(|name| NetworkInterface {
            name: name.to_owned(),
            ..NetworkInterface::default()
        })
        .collect();
    let mut add = |name: &str, address: String| {
        let position = match interfaces.iter().position(|iface| iface.name == name) {
            Some(position) => position,
            None => {
                interfaces.push(NetworkInterface {
                    name: name.to_owned(),
                    ..NetworkInterface::default()
                });
                interfaces.len() - 1
            }
        };
        let addresses = &mut interfaces[position].addresses;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    };

    let routes = parse_routes(route);
    for address in parse_local_ipv4(fib_trie) {
        let best = routes
            .iter()
            .filter(|route| u32::from(address) & route.mask == route.destination)
            .max_by_key(|route| route.mask.count_ones());
        match best {
            Some(route) => add(
                &route.interface,
                format!("{address}/{}", route.mask.count_ones()),
            ),
            // Loopback addresses live in the local routing table only.
            None if address.is_loopback() => add("lo", format!("{address}/8")),
            None => {}
        }
    }
    for line in if_inet6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex_address, _index, prefix, _scope, _flags, name] = fields.as_slice() else {
            continue;
        };
        let (Some(address), Ok(prefix)) = (parse_ipv6(hex_address), u8::from_str_radix(prefix, 16))
        else {
            continue;
        };
        add(name, format!("{address}/{prefix}"));
    }
    interfaces
}

/// A route of the main table without a gateway: the network directly on an interface.
#[derive(Debug)]
struct LinkRoute {
    interface: String,
    destination: u32,
    mask: u32,
}

fn parse_routes(text: &str) -> Vec<LinkRoute> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let field = |index: usize| u32::from_str_radix(fields[index], 16).ok();
            let (destination, gateway, mask) = (field(1)?, field(2)?, field(7)?);
            // The kernel prints the address's in-memory (network order) bytes as a native
            // integer.
            let host_order = |value: u32| u32::from(Ipv4Addr::from(value.to_ne_bytes()));
            (gateway == 0 && mask != 0).then(|| LinkRoute {
                interface: fields[0].to_owned(),
                destination: host_order(destination),
                mask: host_order(mask),
            })
        })
        .collect()
}

/// The addresses `fib_trie` marks `/32 host LOCAL`: the host's own IPv4 addresses.
fn parse_local_ipv4(text: &str) -> Vec<Ipv4Addr> {
    let mut addresses = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("|--") {
            last = rest.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
        } else if line.starts_with("+--") || line.ends_with(':') {
            last = None;
        }
    }
    addresses
}

fn parse_ipv6(hex_address: &str) -> Option<Ipv6Addr> {
    if hex_address.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(hex_address, &mut bytes).ok()?;
    Some(Ipv6Addr::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 6829582096 16857517    0    0    0     0          0         0 6829582096 16857517    0    0    0     0       0          0
  eth0: 351344678   21151    0    0    0     0          0         0  1746273   18973    0    0    0     0       0          0
  wlan0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 127.0.0.1
        /32 host LOCAL
     |-- 192.0.2.2
        /32 host LOCAL
";

    fn route_line(iface: &str, destination: [u8; 4], gateway: [u8; 4], mask: [u8; 4]) -> String {
        let native = |bytes: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(bytes));
        format!(
            "{iface}\t{}\t{}\t0003\t0\t0\t0\t{}\t0\t0\t0",
            native(destination),
            native(gateway),
            native(mask)
        )
    }

    #[test]
    fn interfaces_from_proc_net() {
        let route = [
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
                .to_owned(),
            route_line("eth0", [0; 4], [192, 0, 2, 1], [0; 4]),
            route_line("eth0", [192, 0, 2, 0], [0; 4], [255, 255, 255, 0]),
        ]
        .join("\n");
        let if_inet6 = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
";
        let interfaces = parse_interfaces(DEV, if_inet6, FIB_TRIE, &route);
        let summary: Vec<(String, Vec<String>)> = interfaces
            .into_iter()
            .map(|iface| (iface.name, iface.addresses))
            .collect();
        let expected = |name: &str, addresses: &[&str]| {
            (
                name.to_owned(),
                addresses
                    .iter()
                    .map(|a| (*a).to_owned())
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            summary,
            [
                expected("lo", &["127.0.0.1/8", "::1/128"]),
                expected(
                    "eth0",
                    &["192.0.2.2/24", "fe80::fc:ff:fe00:1/64", "fd00::2/64"]
                ),
                expected("wlan0", &[]),
            ]
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        let garbage = "|-- x\n/32 host LOCAL\n+--\n::::\n\u{0}\nzz zz zz zz zz zz zz zz\n";
        let _ = parse_interfaces(garbage, garbage, garbage, garbage);
        let _ = parse_interfaces("", "", "", "");
        let _ = OsRelease::parse(garbage);
    }

    #[test]
    fn os_release() {
        let ubuntu = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n";
        assert_eq!(
            OsRelease::parse(ubuntu),
            OsRelease {
                platform: "ubuntu".into(),
                family: "debian".into(),
                version: "24.04".into()
            }
        );
        let rocky = "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n";
        assert_eq!(OsRelease::parse(rocky).family, "rhel");
        let centos = "ID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"7\"\n";
        assert_eq!(OsRelease::parse(centos).family, "rhel");
        let fedora = "ID=fedora\nVERSION_ID=40\n";
        assert_eq!(OsRelease::parse(fedora).family, "fedora");
        let debian = "# comment\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(
            OsRelease::parse(debian),
            OsRelease {
                platform: "debian".into(),
                family: "debian".into(),
                version: "12".into()
            }
        );
    }

    #[test]
    fn collecting_does_not_panic() {
        let system = collect();
        assert_eq!(system.os, std::env::consts::OS);
        assert!(!system.arch.is_empty());
        if cfg!(target_os = "linux") {
            let network = system.network.expect("network facts");
            assert!(
                network.interfaces.iter().any(|iface| iface.name == "lo"),
                "{network:?}"
            );
        }
    }
}
