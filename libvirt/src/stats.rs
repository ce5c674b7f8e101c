//! Bulk domain statistics (`virConnectGetAllDomainStats`): one call returns
//! the counters of every domain as typed parameters (`cpu.time`,
//! `block.0.rd.bytes`, `net.1.tx.drop`, …); [`DomainStats::from_params`]
//! turns one domain's parameters into a typed record. Pure, so the parsing
//! is tested without libvirt; the FFI side is in `ffi.rs`.

use crate::info::PowerState;

/// One typed parameter's value (`virTypedParameter`), copied out of
/// libvirt's array.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// `VIR_TYPED_PARAM_INT`.
    Int(i32),
    /// `VIR_TYPED_PARAM_UINT`.
    UInt(u32),
    /// `VIR_TYPED_PARAM_LLONG`.
    LLong(i64),
    /// `VIR_TYPED_PARAM_ULLONG`.
    ULLong(u64),
    /// `VIR_TYPED_PARAM_DOUBLE`.
    Double(f64),
    /// `VIR_TYPED_PARAM_BOOLEAN`.
    Boolean(bool),
    /// `VIR_TYPED_PARAM_STRING`.
    String(String),
}

impl ParamValue {
    fn kind(&self) -> &'static str {
        match self {
            ParamValue::Int(_) => "int",
            ParamValue::UInt(_) => "uint",
            ParamValue::LLong(_) => "llong",
            ParamValue::ULLong(_) => "ullong",
            ParamValue::Double(_) => "double",
            ParamValue::Boolean(_) => "boolean",
            ParamValue::String(_) => "string",
        }
    }

    /// The value as an unsigned counter: any non-negative integer type.
    fn as_u64(&self) -> Option<u64> {
        match *self {
            ParamValue::Int(v) => u64::try_from(v).ok(),
            ParamValue::UInt(v) => Some(u64::from(v)),
            ParamValue::LLong(v) => u64::try_from(v).ok(),
            ParamValue::ULLong(v) => Some(v),
            _ => None,
        }
    }
}

/// A statistics parameter libvirt returned that nubo cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// A known parameter with a type that does not fit (e.g. a string
    /// where a counter is expected, or a negative counter).
    #[error("domain {domain}: statistics parameter {param:?} is a {found}, expected {expected}")]
    WrongType {
        /// The domain's name.
        domain: String,
        /// The parameter (`block.0.rd.bytes`).
        param: String,
        /// What nubo reads it as.
        expected: &'static str,
        /// The type libvirt sent (with its value when negative).
        found: String,
    },
    /// A device parameter whose index is not a number or is beyond the
    /// device count libvirt announced.
    #[error("domain {domain}: statistics parameter {param:?} has a bad device index")]
    BadIndex {
        /// The domain's name.
        domain: String,
        /// The parameter.
        param: String,
    },
    /// A device without its `name` parameter.
    #[error("domain {domain}: {kind} device {index} has no name")]
    Unnamed {
        /// The domain's name.
        domain: String,
        /// `block` or `net`.
        kind: &'static str,
        /// Its index.
        index: usize,
    },
}

/// Memory figures (`balloon.*`), in KiB as libvirt reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Memory currently assigned to the guest (`balloon.current`).
    pub current_kib: Option<u64>,
    /// The maximum it may get (`balloon.maximum`).
    pub maximum_kib: Option<u64>,
    /// Memory the guest sees as usable in total (`balloon.available`;
    /// only with a virtio balloon reporting statistics).
    pub available_kib: Option<u64>,
    /// Memory the guest leaves completely unused (`balloon.unused`; idem).
    pub unused_kib: Option<u64>,
    /// Memory the guest could use without swapping (`balloon.usable`; idem).
    pub usable_kib: Option<u64>,
    /// Resident memory of the QEMU process on the host (`balloon.rss`).
    pub rss_kib: Option<u64>,
}

impl BalloonStats {
    /// Memory the guest has, in bytes: what it reports as available, else
    /// what is assigned to it.
    pub fn available_bytes(&self) -> Option<u64> {
        self.available_kib
            .or(self.current_kib)
            .map(|k| k.saturating_mul(1024))
    }

    /// Memory in use, in bytes: available minus unused as the guest reports
    /// it; without guest statistics (no balloon driver), the resident
    /// memory of QEMU on the host (an upper bound of what the guest
    /// touched).
    pub fn used_bytes(&self) -> Option<u64> {
        match (self.available_kib, self.unused_kib) {
            (Some(a), Some(u)) => Some(a.saturating_sub(u).saturating_mul(1024)),
            _ => self.rss_kib.map(|k| k.saturating_mul(1024)),
        }
    }
}

/// Counters of one disk (`block.<n>.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Guest device (`vda`).
    pub name: String,
    /// Source path, for file disks.
    pub path: Option<String>,
    /// Bytes read.
    pub read_bytes: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Write requests.
    pub write_ops: u64,
}

/// Counters of one network interface (`net.<n>.*`), seen from the guest
/// (`rx` = into the guest; libvirt swaps the tap's own counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Host device (the tap).
    pub name: String,
    /// Bytes received by the guest.
    pub rx_bytes: u64,
    /// Packets received by the guest.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets dropped on the way in.
    pub rx_drops: u64,
    /// Bytes sent by the guest.
    pub tx_bytes: u64,
    /// Packets sent by the guest.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on the way out.
    pub tx_drops: u64,
}

/// Statistics of one domain from a bulk call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainStats {
    /// Domain UUID (nubo's instance id).
    pub uuid: String,
    /// Domain name.
    pub name: String,
    /// Power state (`state.state`).
    pub state: Option<PowerState>,
    /// CPU time of the whole domain, ns (`cpu.time`).
    pub cpu_time_ns: Option<u64>,
    /// User CPU time, ns (`cpu.user`).
    pub cpu_user_ns: Option<u64>,
    /// System CPU time, ns (`cpu.system`).
    pub cpu_system_ns: Option<u64>,
    /// Online vCPUs (`vcpu.current`).
    pub vcpus: Option<u32>,
    /// Memory.
    pub balloon: BalloonStats,
    /// Disks, in libvirt's order.
    pub disks: Vec<BlockStats>,
    /// Network interfaces, in libvirt's order.
    pub interfaces: Vec<InterfaceStats>,
}

/// Splits `<kind>.<index>.<rest>` into `(index, rest)`.
fn device_param<'a>(name: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    name.strip_prefix(kind)?.strip_prefix('.')?.split_once('.')
}

impl DomainStats {
    /// Parses one domain's parameters. Unknown parameters are ignored (new
    /// libvirt versions add some); a known one of the wrong type, or a
    /// device without name or with a bad index, is an error.
    pub fn from_params(
        uuid: &str,
        name: &str,
        params: &[(String, ParamValue)],
    ) -> Result<Self, StatsError> {
        let mut s = DomainStats {
            uuid: uuid.to_owned(),
            name: name.to_owned(),
            ..DomainStats::default()
        };
        let counter = |param: &str, v: &ParamValue| -> Result<u64, StatsError> {
            v.as_u64().ok_or_else(|| StatsError::WrongType {
                domain: name.to_owned(),
                param: param.to_owned(),
                expected: "non-negative integer",
                found: match v {
                    ParamValue::Int(i) => format!("int {i}"),
                    ParamValue::LLong(i) => format!("llong {i}"),
                    other => other.kind().to_owned(),
                },
            })
        };
        let string = |param: &str, v: &ParamValue| -> Result<String, StatsError> {
            match v {
                ParamValue::String(s) => Ok(s.clone()),
                other => Err(StatsError::WrongType {
                    domain: name.to_owned(),
                    param: param.to_owned(),
                    expected: "string",
                    found: other.kind().to_owned(),
                }),
            }
        };
        let bad_index = |param: &str| StatsError::BadIndex {
            domain: name.to_owned(),
            param: param.to_owned(),
        };
        // Device counts come first in libvirt's output, but do not rely on it.
        let mut block_count = None;
        let mut net_count = None;
        for (p, v) in params {
            match p.as_str() {
                "block.count" => block_count = Some(counter(p, v)?),
                "net.count" => net_count = Some(counter(p, v)?),
                _ => {}
            }
        }
        // No more devices than parameters: a bogus count allocates nothing.
        let size = |count: Option<u64>| {
            usize::try_from(count.unwrap_or(0))
                .unwrap_or(0)
                .min(params.len())
        };
        let mut disks: Vec<Option<BlockStats>> = vec![None; size(block_count)];
        let mut nets: Vec<Option<InterfaceStats>> = vec![None; size(net_count)];
        let mut disk_named = vec![false; disks.len()];
        let mut net_named = vec![false; nets.len()];
        for (p, v) in params {
            let b = &mut s.balloon;
            match p.as_str() {
                "state.state" => {
                    let raw = counter(p, v)?;
                    s.state = Some(PowerState::from_raw(i32::try_from(raw).unwrap_or(-1)));
                }
                "cpu.time" => s.cpu_time_ns = Some(counter(p, v)?),
                "cpu.user" => s.cpu_user_ns = Some(counter(p, v)?),
                "cpu.system" => s.cpu_system_ns = Some(counter(p, v)?),
                "vcpu.current" => s.vcpus = u32::try_from(counter(p, v)?).ok(),
                "balloon.current" => b.current_kib = Some(counter(p, v)?),
                "balloon.maximum" => b.maximum_kib = Some(counter(p, v)?),
                "balloon.available" => b.available_kib = Some(counter(p, v)?),
                "balloon.unused" => b.unused_kib = Some(counter(p, v)?),
                "balloon.usable" => b.usable_kib = Some(counter(p, v)?),
                "balloon.rss" => b.rss_kib = Some(counter(p, v)?),
                other => {
                    if let Some((idx, field)) = device_param(other, "block") {
                        let i: usize = idx.parse().map_err(|_| bad_index(p))?;
                        let d = disks
                            .get_mut(i)
                            .ok_or_else(|| bad_index(p))?
                            .get_or_insert_with(BlockStats::default);
                        match field {
                            "name" => {
                                d.name = string(p, v)?;
                                disk_named[i] = true;
                            }
                            "path" => d.path = Some(string(p, v)?),
                            "rd.bytes" => d.read_bytes = counter(p, v)?,
                            "rd.reqs" => d.read_ops = counter(p, v)?,
                            "wr.bytes" => d.write_bytes = counter(p, v)?,
                            "wr.reqs" => d.write_ops = counter(p, v)?,
                            _ => {}
                        }
                    } else if let Some((idx, field)) = device_param(other, "net") {
                        let i: usize = idx.parse().map_err(|_| bad_index(p))?;
                        let n = nets
                            .get_mut(i)
                            .ok_or_else(|| bad_index(p))?
                            .get_or_insert_with(InterfaceStats::default);
                        match field {
                            "name" => {
                                n.name = string(p, v)?;
                                net_named[i] = true;
                            }
                            "rx.bytes" => n.rx_bytes = counter(p, v)?,
                            "rx.pkts" => n.rx_packets = counter(p, v)?,
                            "rx.errs" => n.rx_errors = counter(p, v)?,
                            "rx.drop" => n.rx_drops = counter(p, v)?,
                            "tx.bytes" => n.tx_bytes = counter(p, v)?,
                            "tx.pkts" => n.tx_packets = counter(p, v)?,
                            "tx.errs" => n.tx_errors = counter(p, v)?,
                            "tx.drop" => n.tx_drops = counter(p, v)?,
                            _ => {}
                        }
                    }
                }
            }
        }
        let unnamed = |kind, index| StatsError::Unnamed {
            domain: name.to_owned(),
            kind,
            index,
        };
        // A device libvirt counted but sent nothing for (e.g. a disk
        // without a medium) is skipped; one with counters but no name is an
        // error.
        for (i, d) in disks.into_iter().enumerate() {
            match d {
                Some(d) if disk_named[i] => s.disks.push(d),
                Some(_) => return Err(unnamed("block", i)),
                None => {}
            }
        }
        for (i, n) in nets.into_iter().enumerate() {
            match n {
                Some(n) if net_named[i] => s.interfaces.push(n),
                Some(_) => return Err(unnamed("net", i)),
                None => {}
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, v: ParamValue) -> (String, ParamValue) {
        (name.to_owned(), v)
    }

    /// What libvirt 9 sends for a running TCG guest with one disk and one
    /// tap (values shortened).
    fn sample() -> Vec<(String, ParamValue)> {
        use ParamValue::*;
        vec![
            p("state.state", Int(1)),
            p("state.reason", Int(1)),
            p("cpu.time", ULLong(2_500_000_000)),
            p("cpu.user", ULLong(2_000_000_000)),
            p("cpu.system", ULLong(400_000_000)),
            p("balloon.current", ULLong(131_072)),
            p("balloon.maximum", ULLong(131_072)),
            p("balloon.rss", ULLong(90_000)),
            p("vcpu.current", UInt(1)),
            p("vcpu.maximum", UInt(1)),
            p("vcpu.0.state", Int(1)),
            p("vcpu.0.time", ULLong(2_300_000_000)),
            p("net.count", UInt(1)),
            p("net.0.name", String("tapabc".into())),
            p("net.0.rx.bytes", ULLong(1000)),
            p("net.0.rx.pkts", ULLong(10)),
            p("net.0.rx.errs", ULLong(0)),
            p("net.0.rx.drop", ULLong(2)),
            p("net.0.tx.bytes", ULLong(2000)),
            p("net.0.tx.pkts", ULLong(20)),
            p("net.0.tx.errs", ULLong(0)),
            p("net.0.tx.drop", ULLong(3)),
            p("block.count", UInt(2)),
            p("block.0.name", String("vda".into())),
            p("block.0.path", String("/var/lib/nubo/x.qcow2".into())),
            p("block.0.rd.reqs", ULLong(100)),
            p("block.0.rd.bytes", ULLong(409_600)),
            p("block.0.rd.times", ULLong(5)),
            p("block.0.wr.reqs", ULLong(7)),
            p("block.0.wr.bytes", ULLong(28_672)),
            p("block.0.allocation", ULLong(1)),
            p("block.1.name", String("vdb".into())),
            p("block.1.rd.bytes", ULLong(1)),
        ]
    }

    #[test]
    fn parses_a_running_guest() {
        let s = DomainStats::from_params("u-1", "nubo-u-1", &sample()).unwrap();
        assert_eq!(s.uuid, "u-1");
        assert_eq!(s.state, Some(PowerState::Running));
        assert_eq!(s.cpu_time_ns, Some(2_500_000_000));
        assert_eq!(s.cpu_user_ns, Some(2_000_000_000));
        assert_eq!(s.vcpus, Some(1));
        assert_eq!(s.balloon.available_bytes(), Some(131_072 * 1024));
        // No guest statistics: used is QEMU's resident memory.
        assert_eq!(s.balloon.used_bytes(), Some(90_000 * 1024));
        assert_eq!(
            s.interfaces,
            vec![InterfaceStats {
                name: "tapabc".into(),
                rx_bytes: 1000,
                rx_packets: 10,
                rx_errors: 0,
                rx_drops: 2,
                tx_bytes: 2000,
                tx_packets: 20,
                tx_errors: 0,
                tx_drops: 3,
            }]
        );
        assert_eq!(s.disks.len(), 2);
        assert_eq!(
            s.disks[0],
            BlockStats {
                name: "vda".into(),
                path: Some("/var/lib/nubo/x.qcow2".into()),
                read_bytes: 409_600,
                read_ops: 100,
                write_bytes: 28_672,
                write_ops: 7,
            }
        );
        assert_eq!(s.disks[1].name, "vdb");
        assert_eq!(s.disks[1].read_bytes, 1);
    }

    #[test]
    fn guest_balloon_statistics_win_over_rss() {
        let mut params = sample();
        params.push(p("balloon.available", ParamValue::ULLong(100_000)));
        params.push(p("balloon.unused", ParamValue::ULLong(60_000)));
        let s = DomainStats::from_params("u", "n", &params).unwrap();
        assert_eq!(s.balloon.available_bytes(), Some(100_000 * 1024));
        assert_eq!(s.balloon.used_bytes(), Some(40_000 * 1024));
    }

    #[test]
    fn a_shut_off_domain_has_only_its_state() {
        let params = vec![p("state.state", ParamValue::Int(5))];
        let s = DomainStats::from_params("u", "n", &params).unwrap();
        assert_eq!(s.state, Some(PowerState::ShutOff));
        assert_eq!(s.cpu_time_ns, None);
        assert!(s.disks.is_empty() && s.interfaces.is_empty());
        assert_eq!(s.balloon.used_bytes(), None);
    }

    #[test]
    fn unknown_parameters_are_ignored_order_does_not_matter() {
        let mut params = sample();
        params.reverse();
        params.push(p("perf.cmt", ParamValue::Double(1.5)));
        params.push(p("dirtyrate.calc_status", ParamValue::String("x".into())));
        let s = DomainStats::from_params("u", "n", &params).unwrap();
        assert_eq!(s.disks.len(), 2);
        assert_eq!(s.interfaces[0].tx_drops, 3);
    }

    #[test]
    fn bad_parameters_are_precise_errors() {
        let mut params = sample();
        params.push(p("cpu.time", ParamValue::String("lots".into())));
        assert_eq!(
            DomainStats::from_params("u", "dom", &params).unwrap_err(),
            StatsError::WrongType {
                domain: "dom".into(),
                param: "cpu.time".into(),
                expected: "non-negative integer",
                found: "string".into(),
            }
        );
        let mut params = sample();
        params.push(p("net.0.rx.bytes", ParamValue::LLong(-4)));
        let e = DomainStats::from_params("u", "dom", &params).unwrap_err();
        assert!(e.to_string().contains("llong -4"), "{e}");
        // Index beyond net.count, and not a number.
        for bad in ["net.1.rx.bytes", "block.x.rd.bytes"] {
            let mut params = sample();
            params.push(p(bad, ParamValue::ULLong(1)));
            assert_eq!(
                DomainStats::from_params("u", "dom", &params).unwrap_err(),
                StatsError::BadIndex {
                    domain: "dom".into(),
                    param: bad.into()
                }
            );
        }
        // Counters without a name.
        let params: Vec<_> = sample()
            .into_iter()
            .filter(|(n, _)| n != "block.1.name")
            .collect();
        assert_eq!(
            DomainStats::from_params("u", "dom", &params).unwrap_err(),
            StatsError::Unnamed {
                domain: "dom".into(),
                kind: "block",
                index: 1
            }
        );
        // A name of the wrong type.
        let mut params = sample();
        params.push(p("net.0.name", ParamValue::UInt(3)));
        assert!(matches!(
            DomainStats::from_params("u", "dom", &params),
            Err(StatsError::WrongType {
                expected: "string",
                ..
            })
        ));
    }

    #[test]
    fn a_huge_device_count_is_not_trusted_beyond_the_parameters() {
        // libvirt announces 3 nets, sends one: only that one is reported.
        let mut params = sample();
        params.retain(|(n, _)| n != "net.count");
        params.push(p("net.count", ParamValue::UInt(3)));
        let s = DomainStats::from_params("u", "n", &params).unwrap();
        assert_eq!(s.interfaces.len(), 1);
        let mut params = sample();
        params.push(p("block.count", ParamValue::ULLong(u64::MAX)));
        assert_eq!(
            DomainStats::from_params("u", "n", &params)
                .unwrap()
                .disks
                .len(),
            2
        );
    }
}
