//! Usage counters of the instances of a hypervisor, as
//! [`super::Hypervisor::stats`] reports them (one call per collection
//! period: libvirt's bulk statistics, the netns guests' veth counters, or
//! the fake driver's synthetic ones).

use std::collections::BTreeMap;

use nubo_common::InstanceId;

/// Counters of one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Guest device (`vda`).
    pub target: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Read operations.
    pub read_ops: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Write operations.
    pub write_ops: u64,
}

/// Counters of one NIC, seen from the guest (`rx` = into the guest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Host device (the port's tap).
    pub tap: String,
    /// Bytes received by the guest.
    pub rx_bytes: u64,
    /// Packets received by the guest.
    pub rx_packets: u64,
    /// Packets dropped on the way in.
    pub rx_drops: u64,
    /// Bytes sent by the guest.
    pub tx_bytes: u64,
    /// Packets sent by the guest.
    pub tx_packets: u64,
    /// Packets dropped on the way out.
    pub tx_drops: u64,
}

/// Usage counters of one running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    /// The instance.
    pub id: InstanceId,
    /// CPU time consumed, ns (`None`: the driver has no CPU accounting).
    pub cpu_ns: Option<u64>,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Memory the guest has, bytes.
    pub memory_available_bytes: Option<u64>,
    /// Disks.
    pub disks: Vec<DiskCounters>,
    /// NICs.
    pub nics: Vec<NicCounters>,
}

/// The counters of every interface in `/proc/net/dev` text, by name, as
/// the interface itself counts them. Malformed lines are skipped. Pure.
pub fn parse_proc_net_dev(text: &str) -> BTreeMap<String, NicCounters> {
    let mut out = BTreeMap::new();
    // Two header lines, then `name: rx(8 fields) tx(8 fields)`.
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map_while(|v| v.parse().ok())
            .collect();
        if f.len() < 12 {
            continue;
        }
        let name = name.trim().to_owned();
        out.insert(
            name.clone(),
            NicCounters {
                tap: name,
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_drops: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_drops: f[11],
            },
        );
    }
    out
}

impl NicCounters {
    /// The guest's view of a host-side device's own counters (what the host
    /// end transmits, the guest receives). Pure.
    pub fn guest_view(self) -> Self {
        NicCounters {
            tap: self.tap,
            rx_bytes: self.tx_bytes,
            rx_packets: self.tx_packets,
            rx_drops: self.tx_drops,
            tx_bytes: self.rx_bytes,
            tx_packets: self.rx_packets,
            tx_drops: self.rx_drops,
        }
    }
}

/// Synthetic, monotonic counters of a fake instance `uptime_ms` after its
/// creation: a few percent of a CPU, some disk and network traffic, spread
/// per instance by `seed`. Pure (the fake driver passes the clock).
pub fn synthetic(id: InstanceId, seed: u64, uptime_ms: u64, tap: Option<String>) -> InstanceStats {
    // 1-8 % of a CPU, 1-16 KiB/s of disk and network, per instance.
    let k = seed % 8 + 1;
    let secs = uptime_ms / 1000;
    InstanceStats {
        id,
        cpu_ns: Some(uptime_ms.saturating_mul(k).saturating_mul(10_000)),
        memory_used_bytes: Some((64 + 8 * k) << 20),
        memory_available_bytes: Some(256 << 20),
        disks: vec![DiskCounters {
            target: "vda".into(),
            read_bytes: secs.saturating_mul(1024 * k),
            read_ops: secs.saturating_mul(k),
            write_bytes: secs.saturating_mul(2048 * k),
            write_ops: secs.saturating_mul(2 * k),
        }],
        nics: tap
            .map(|tap| NicCounters {
                tap,
                rx_bytes: secs.saturating_mul(1500 * k),
                rx_packets: secs.saturating_mul(k),
                rx_drops: 0,
                tx_bytes: secs.saturating_mul(700 * k),
                tx_packets: secs.saturating_mul(k),
                tx_drops: 0,
            })
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      12    0    0    0     0          0         0     1234      12    0    0    0     0       0          0
tap1a2b: 5000 50 1 2 0 0 0 0 9000 90 3 4 0 0 0 0
garbage line
  bad: 1 2 3
";

    #[test]
    fn reads_proc_net_dev_and_turns_it_to_the_guest_view() {
        let m = parse_proc_net_dev(PROC_NET_DEV);
        assert_eq!(m.len(), 2, "{m:?}");
        let tap = m["tap1a2b"].clone();
        assert_eq!((tap.rx_bytes, tap.rx_packets, tap.rx_drops), (5000, 50, 2));
        assert_eq!((tap.tx_bytes, tap.tx_packets, tap.tx_drops), (9000, 90, 4));
        let g = tap.guest_view();
        assert_eq!((g.rx_bytes, g.rx_packets, g.rx_drops), (9000, 90, 4));
        assert_eq!((g.tx_bytes, g.tx_packets, g.tx_drops), (5000, 50, 2));
        assert_eq!(g.tap, "tap1a2b");
    }

    #[test]
    fn synthetic_counters_rise_with_uptime() {
        let id = InstanceId::new_random();
        let a = synthetic(id, 3, 10_000, Some("tapx".into()));
        let b = synthetic(id, 3, 20_000, Some("tapx".into()));
        assert!(b.cpu_ns > a.cpu_ns);
        assert!(b.disks[0].write_bytes > a.disks[0].write_bytes);
        assert!(b.nics[0].rx_bytes > a.nics[0].rx_bytes);
        // A few percent of one CPU: 10 s of uptime, well under 1 s of CPU.
        assert!(a.cpu_ns.unwrap() < 1_000_000_000, "{a:?}");
        assert!(synthetic(id, 3, 0, None).nics.is_empty());
    }
}
