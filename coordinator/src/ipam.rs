//! Pure IPAM helpers: which addresses of a network may be handed out, and
//! which one to try next. The reservation itself is an etcd create-if-absent
//! transaction on `keys::ipam(net, ip)` (see `ops`).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nubo_netid::MacAddr;
use rand::Rng;

/// The ranges IPAM allocates from, as integers: the allocation pools
/// (validated when the subnet was made: inside the host range, disjoint,
/// without the gateway), else the whole host range.
fn ranges(cidr: Ipv4Net, pools: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<(u32, u32)> {
    if pools.is_empty() {
        return vec![host_range(cidr)];
    }
    pools
        .iter()
        .map(|(a, b)| (u32::from(*a), u32::from(*b)))
        .filter(|(a, b)| a <= b)
        .collect()
}

/// Addresses a port may get: the pools' (or the host range's) minus the
/// gateway.
pub fn usable_count(
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    pools: &[(Ipv4Addr, Ipv4Addr)],
) -> u64 {
    ranges(cidr, pools)
        .iter()
        .map(|(a, b)| {
            let n = u64::from(b - a) + 1;
            match gateway.map(u32::from) {
                Some(g) if (*a..=*b).contains(&g) => n - 1,
                _ => n,
            }
        })
        .sum()
}

/// First and last host address (network and broadcast excluded) as integers.
fn host_range(cidr: Ipv4Net) -> (u32, u32) {
    let net = u32::from(cidr.network());
    let bc = u32::from(cidr.broadcast());
    (net + 1, bc.saturating_sub(1).max(net + 1))
}

fn is_host(cidr: Ipv4Net, ip: Ipv4Addr) -> bool {
    let (first, last) = host_range(cidr);
    (first..=last).contains(&u32::from(ip))
}

/// True when `ip` may be assigned to a port: a host address of the network
/// that is not its gateway.
pub fn assignable(cidr: Ipv4Net, gateway: Option<Ipv4Addr>, ip: Ipv4Addr) -> bool {
    cidr.contains(&ip) && is_host(cidr, ip) && Some(ip) != gateway
}

/// Picks an address to try: starts at a random offset in the host range and
/// walks forward (wrapping) to the first assignable address not in `taken`.
/// Random starts keep concurrent allocators from all racing for the same
/// address. `None` when every address is taken.
pub fn pick(
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    pools: &[(Ipv4Addr, Ipv4Addr)],
    taken: &HashSet<Ipv4Addr>,
    rng: &mut impl Rng,
) -> Option<Ipv4Addr> {
    let ranges = ranges(cidr, pools);
    let size: u64 = ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
    if size == 0 {
        return None;
    }
    // The i-th address of the ranges laid end to end.
    let nth = |mut i: u64| {
        for (a, b) in &ranges {
            let n = u64::from(b - a) + 1;
            if i < n {
                return u32::try_from(u64::from(*a) + i).ok().map(Ipv4Addr::from);
            }
            i -= n;
        }
        None
    };
    let start = rng.random_range(0..size);
    (0..size)
        .filter_map(|i| nth((start + i) % size))
        .find(|ip| Some(*ip) != gateway && !taken.contains(ip))
}

/// A random port MAC with nubo's `fa:16:3e` prefix.
pub fn random_mac(rng: &mut impl Rng) -> MacAddr {
    MacAddr::port_mac(rng.random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash_24_has_253_usable_addresses_with_a_gateway() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert_eq!(
            usable_count(net, Some("10.0.0.1".parse().unwrap()), &[]),
            253
        );
        assert_eq!(usable_count(net, None, &[]), 254);
        let small: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        assert_eq!(
            usable_count(small, Some("10.0.0.1".parse().unwrap()), &[]),
            5
        );
    }

    #[test]
    fn pick_never_returns_reserved_or_taken_addresses_and_exhausts() {
        let net: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let gw = Some("10.0.0.1".parse().unwrap());
        let mut rng = rand::rng();
        let mut taken = HashSet::new();
        for _ in 0..5 {
            let ip = pick(net, gw, &[], &taken, &mut rng).unwrap();
            assert!(assignable(net, gw, ip), "{ip}");
            assert!(taken.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(pick(net, gw, &[], &taken, &mut rng), None);
    }

    #[test]
    fn pools_bound_what_is_picked_and_counted() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let pools = [
            (ip("10.0.0.10"), ip("10.0.0.11")),
            (ip("10.0.0.200"), ip("10.0.0.200")),
        ];
        assert_eq!(usable_count(net, Some(ip("10.0.0.1")), &pools), 3);
        let mut rng = rand::rng();
        let mut taken = HashSet::new();
        for _ in 0..3 {
            let got = pick(net, Some(ip("10.0.0.1")), &pools, &taken, &mut rng).unwrap();
            assert!(pools.iter().any(|(a, b)| (*a..=*b).contains(&got)), "{got}");
            assert!(taken.insert(got));
        }
        assert_eq!(pick(net, None, &pools, &taken, &mut rng), None);
    }

    #[test]
    fn assignable_excludes_network_broadcast_gateway_and_outside() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let gw = Some("10.0.0.1".parse().unwrap());
        for bad in ["10.0.0.0", "10.0.0.255", "10.0.0.1", "10.0.1.5"] {
            assert!(!assignable(net, gw, bad.parse().unwrap()), "{bad}");
        }
        assert!(assignable(net, gw, "10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn random_macs_have_the_nubo_prefix() {
        let m = random_mac(&mut rand::rng());
        assert!(m.to_string().starts_with("fa:16:3e:"));
    }
}
