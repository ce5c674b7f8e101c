//! Network (Ceph RBD) disks: their spec, the pure rendering of one
//! `<disk>` element (used both inside the domain XML and for hot-plug with
//! `virDomainAttachDeviceFlags`), and a small scanner that reads the disks
//! back from a domain's live XML.

use std::fmt::Write as _;

use crate::escape::{esc, unesc};

/// A Ceph monitor QEMU connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonHost {
    /// Host name or IP address.
    pub host: String,
    /// Port (6789 for msgr v1).
    pub port: u16,
}

/// An RBD image reached by QEMU's built-in librbd client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdDisk {
    /// `pool/image`.
    pub name: String,
    /// Monitors; empty = QEMU reads them from `/etc/ceph/ceph.conf`.
    pub hosts: Vec<MonHost>,
    /// cephx user without the `client.` prefix.
    pub username: String,
    /// UUID of the libvirt secret (usage type `ceph`) holding the user's key.
    pub secret_uuid: String,
}

/// I/O limits of one disk (libvirt `<iotune>`); `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoTune {
    /// Read operations per second.
    pub read_iops_sec: Option<u64>,
    /// Write operations per second.
    pub write_iops_sec: Option<u64>,
    /// Read bytes per second.
    pub read_bytes_sec: Option<u64>,
    /// Write bytes per second.
    pub write_bytes_sec: Option<u64>,
}

impl IoTune {
    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == IoTune::default()
    }

    /// `(libvirt typed-parameter name, value)` for every limit, with 0 for
    /// unset ones (0 removes a limit in `virDomainSetBlockIoTune`).
    pub fn params(&self) -> [(&'static str, u64); 4] {
        [
            ("read_iops_sec", self.read_iops_sec.unwrap_or(0)),
            ("write_iops_sec", self.write_iops_sec.unwrap_or(0)),
            ("read_bytes_sec", self.read_bytes_sec.unwrap_or(0)),
            ("write_bytes_sec", self.write_bytes_sec.unwrap_or(0)),
        ]
    }
}

/// A data disk (volume) of a domain, after the root disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    /// Guest device, `vdb`, `vdc`, ….
    pub target: String,
    /// The RBD image.
    pub source: RbdDisk,
    /// Serial shown to the guest (`/dev/disk/by-id/virtio-<serial>`), at
    /// most 20 characters of `[A-Za-z0-9_-]`.
    pub serial: String,
    /// I/O limits.
    pub iotune: IoTune,
    /// Attached read-only (`<readonly/>`: the guest cannot write).
    pub read_only: bool,
}

/// Renders one `<disk type='network'>` element, indented by `indent`
/// spaces. Pure.
pub fn rbd_disk_xml(
    source: &RbdDisk,
    target: &str,
    serial: Option<&str>,
    iotune: &IoTune,
    read_only: bool,
    indent: usize,
) -> String {
    let p = " ".repeat(indent);
    let mut x = String::with_capacity(512);
    let _ = writeln!(x, "{p}<disk type='network' device='disk'>");
    let _ = writeln!(
        x,
        "{p}  <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>"
    );
    let _ = writeln!(x, "{p}  <auth username='{}'>", esc(&source.username));
    let _ = writeln!(
        x,
        "{p}    <secret type='ceph' uuid='{}'/>",
        esc(&source.secret_uuid)
    );
    let _ = writeln!(x, "{p}  </auth>");
    if source.hosts.is_empty() {
        let _ = writeln!(
            x,
            "{p}  <source protocol='rbd' name='{}'/>",
            esc(&source.name)
        );
    } else {
        let _ = writeln!(
            x,
            "{p}  <source protocol='rbd' name='{}'>",
            esc(&source.name)
        );
        for h in &source.hosts {
            let _ = writeln!(
                x,
                "{p}    <host name='{}' port='{}'/>",
                esc(&h.host),
                h.port
            );
        }
        let _ = writeln!(x, "{p}  </source>");
    }
    let _ = writeln!(x, "{p}  <target dev='{}' bus='virtio'/>", esc(target));
    if read_only {
        let _ = writeln!(x, "{p}  <readonly/>");
    }
    if !iotune.is_unlimited() {
        let _ = writeln!(x, "{p}  <iotune>");
        for (name, v) in iotune.params() {
            if v > 0 {
                let _ = writeln!(x, "{p}    <{name}>{v}</{name}>");
            }
        }
        let _ = writeln!(x, "{p}  </iotune>");
    }
    if let Some(serial) = serial {
        let _ = writeln!(x, "{p}  <serial>{}</serial>", esc(serial));
    }
    let _ = writeln!(x, "{p}</disk>");
    x
}

/// Renders a volume's `<disk>` element for `virDomainAttachDeviceFlags`.
pub fn volume_disk_xml(v: &VolumeDisk) -> String {
    rbd_disk_xml(
        &v.source,
        &v.target,
        Some(&v.serial),
        &v.iotune,
        v.read_only,
        0,
    )
}

/// A disk as found in a domain's XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachedDisk {
    /// Guest device (`vda`, `vdb`, …).
    pub target: String,
    /// `<serial>`, if any.
    pub serial: Option<String>,
    /// `pool/image` of an RBD source, the file of a file source.
    pub source: Option<String>,
    /// The `<iotune>` limits libvirt reports.
    pub iotune: IoTune,
}

/// Reads the `<disk>` elements of a domain XML as libvirt prints it
/// (`virDomainGetXMLDesc`). A tolerant scanner, not a general XML parser:
/// anything it does not recognise is skipped, never an error. Pure.
pub fn parse_disks(domain_xml: &str) -> Vec<AttachedDisk> {
    let mut out = Vec::new();
    let mut rest = domain_xml;
    while let Some(start) = rest.find("<disk ") {
        let after = &rest[start..];
        let Some(end) = after.find("</disk>") else {
            break;
        };
        let body = &after[..end];
        rest = &after[end + "</disk>".len()..];
        let Some(target) = tag_attr(body, "target", "dev") else {
            continue;
        };
        let source = tag_attr(body, "source", "name").or_else(|| tag_attr(body, "source", "file"));
        let num = |name: &str| text_of(body, name).and_then(|t| t.trim().parse::<u64>().ok());
        out.push(AttachedDisk {
            target: unesc(&target),
            serial: text_of(body, "serial").map(|s| unesc(s.trim())),
            source: source.map(|s| unesc(&s)),
            iotune: IoTune {
                read_iops_sec: num("read_iops_sec").filter(|v| *v > 0),
                write_iops_sec: num("write_iops_sec").filter(|v| *v > 0),
                read_bytes_sec: num("read_bytes_sec").filter(|v| *v > 0),
                write_bytes_sec: num("write_bytes_sec").filter(|v| *v > 0),
            },
        });
    }
    out
}

/// The `<disk …>…</disk>` elements of a domain XML, in order. Pure.
pub fn disk_elements(domain_xml: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(start) = domain_xml[offset..].find("<disk ") {
        let start = offset + start;
        let Some(len) = domain_xml[start..].find("</disk>") else {
            break;
        };
        let end = start + len + "</disk>".len();
        out.push(&domain_xml[start..end]);
        offset = end;
    }
    out
}

/// The UUID of the libvirt secret a `<disk>` element authenticates with
/// (`<auth><secret type='ceph' uuid='…'/>`), if any. Pure.
pub fn disk_secret_uuid(disk_elem: &str) -> Option<String> {
    tag_attr(disk_elem, "secret", "uuid").map(|u| unesc(&u))
}

/// The value of attribute `attr` of the first `<tag …>` in `body`.
pub(crate) fn tag_attr(body: &str, tag: &str, attr: &str) -> Option<String> {
    let open = format!("<{tag} ");
    let start = body.find(&open)? + open.len();
    let elem = &body[start..];
    let elem = &elem[..elem.find('>')?];
    for quote in ['\'', '"'] {
        let key = format!("{attr}={quote}");
        let mut search = elem;
        while let Some(i) = search.find(&key) {
            // Must be a whole attribute name (preceded by whitespace).
            let ok = i == 0 || search[..i].ends_with(char::is_whitespace);
            let v = &search[i + key.len()..];
            if ok {
                return v.find(quote).map(|e| v[..e].to_owned());
            }
            search = v;
        }
    }
    None
}

/// The text of the first `<tag>…</tag>` in `body`.
fn text_of<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&close)?;
    Some(&body[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> VolumeDisk {
        VolumeDisk {
            target: "vdb".into(),
            source: RbdDisk {
                name: "volumes/vol-1".into(),
                hosts: vec![MonHost {
                    host: "10.0.0.1".into(),
                    port: 6789,
                }],
                username: "nubo".into(),
                secret_uuid: "6f1e1d3c-0000-4000-8000-000000000001".into(),
            },
            serial: "abc123".into(),
            iotune: IoTune {
                write_iops_sec: Some(200),
                ..IoTune::default()
            },
            read_only: false,
        }
    }

    #[test]
    fn a_read_only_volume_is_rendered_readonly() {
        assert!(!volume_disk_xml(&vol()).contains("<readonly/>"));
        let ro = VolumeDisk {
            read_only: true,
            ..vol()
        };
        assert!(volume_disk_xml(&ro).contains("  <readonly/>\n"));
    }

    #[test]
    fn rendered_disks_read_back() {
        let xml = format!(
            "<domain>\n<devices>\n<disk type='file' device='disk'>\n<source file='/a/b'/>\n<target dev='vda' bus='virtio'/>\n</disk>\n{}</devices></domain>",
            volume_disk_xml(&vol())
        );
        let disks = parse_disks(&xml);
        assert_eq!(
            disks,
            vec![
                AttachedDisk {
                    target: "vda".into(),
                    serial: None,
                    source: Some("/a/b".into()),
                    iotune: IoTune::default(),
                },
                AttachedDisk {
                    target: "vdb".into(),
                    serial: Some("abc123".into()),
                    source: Some("volumes/vol-1".into()),
                    iotune: vol().iotune,
                }
            ]
        );
    }

    #[test]
    fn libvirt_dumpxml_shape_is_understood() {
        // As libvirt 9 prints a live RBD disk (extra elements, alias, address).
        let xml = r#"<disk type="network" device="disk">
      <driver name="qemu" type="raw" cache="writeback" discard="unmap"/>
      <auth username="nubo">
        <secret type="ceph" uuid="x"/>
      </auth>
      <source protocol="rbd" name="volumes/vol-2" index="2">
        <host name="10.0.0.1" port="6789"/>
      </source>
      <target dev="vdc" bus="virtio"/>
      <iotune>
        <read_iops_sec>0</read_iops_sec>
        <write_iops_sec>200</write_iops_sec>
      </iotune>
      <serial>s2</serial>
      <alias name="virtio-disk2"/>
    </disk>"#;
        let d = parse_disks(xml);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, "vdc");
        assert_eq!(d[0].source.as_deref(), Some("volumes/vol-2"));
        assert_eq!(d[0].serial.as_deref(), Some("s2"));
        assert_eq!(d[0].iotune.write_iops_sec, Some(200));
        assert_eq!(d[0].iotune.read_iops_sec, None);
    }

    #[test]
    fn garbage_is_skipped() {
        assert!(parse_disks("<disk <target").is_empty());
        assert!(parse_disks("<disk type='x'><source/></disk>").is_empty());
        assert!(parse_disks("").is_empty());
    }

    #[test]
    fn unlimited_disks_have_no_iotune() {
        let mut v = vol();
        v.iotune = IoTune::default();
        assert!(!volume_disk_xml(&v).contains("iotune"));
        v.source.hosts.clear();
        assert!(volume_disk_xml(&v).contains("<source protocol='rbd' name='volumes/vol-1'/>"));
    }
}
