//! Pure rendering of a [`DomainSpec`] into libvirt domain XML.

use std::fmt::Write as _;
use std::path::Path;

use crate::disk::{rbd_disk_xml, IoTune};
use crate::escape::esc;
use crate::spec::{DiskSpec, DomainSpec, Nic, DEFAULT_NAME_PREFIX};

/// XML namespace of the `<nubo:instance>` metadata element that marks a
/// domain as owned by nubo.
pub const NUBO_METADATA_NS: &str = "https://nubo.dev/xmlns/libvirt/instance/1";

/// Renders the domain XML with the default name prefix (`nubo-<uuid>`).
///
/// Pure and deterministic: the same spec always yields the same bytes. All
/// values are XML-escaped. Call [`DomainSpec::validate`] first; this
/// function renders whatever it is given.
pub fn domain_xml(spec: &DomainSpec) -> String {
    domain_xml_with_prefix(spec, DEFAULT_NAME_PREFIX)
}

/// Renders the domain XML, naming the domain `<prefix><instance id>`.
pub fn domain_xml_with_prefix(spec: &DomainSpec, prefix: &str) -> String {
    let id = esc(&spec.instance_id);
    let mut x = String::with_capacity(2048);
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(x, "<domain type='{}'>", spec.domain_type.as_str());
    let _ = writeln!(x, "  <name>{}{}</name>", esc(prefix), id);
    let _ = writeln!(x, "  <uuid>{id}</uuid>");
    let _ = writeln!(x, "  <metadata>");
    let _ = writeln!(x, "    <nubo:instance xmlns:nubo='{NUBO_METADATA_NS}'>");
    let _ = writeln!(x, "      <nubo:id>{id}</nubo:id>");
    let _ = writeln!(x, "      <nubo:name>{}</nubo:name>", esc(&spec.name));
    let _ = writeln!(x, "    </nubo:instance>");
    let _ = writeln!(x, "  </metadata>");
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", spec.memory_mb);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", spec.vcpus);
    let _ = writeln!(x, "  <os>");
    let _ = writeln!(x, "    <type arch='x86_64' machine='pc'>hvm</type>");
    match &spec.kernel {
        Some(k) => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", esc_path(&k.kernel));
            if let Some(initrd) = &k.initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", esc_path(initrd));
            }
            if let Some(cmdline) = &k.cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(cmdline));
            }
        }
        None => {
            let _ = writeln!(x, "    <boot dev='hd'/>");
        }
    }
    let _ = writeln!(x, "  </os>");
    let _ = writeln!(x, "  <features>");
    let _ = writeln!(x, "    <acpi/>");
    let _ = writeln!(x, "    <apic/>");
    let _ = writeln!(x, "  </features>");
    let _ = writeln!(x, "  <clock offset='utc'/>");
    let _ = writeln!(x, "  <on_poweroff>destroy</on_poweroff>");
    let _ = writeln!(x, "  <on_reboot>restart</on_reboot>");
    let _ = writeln!(x, "  <on_crash>destroy</on_crash>");
    let _ = writeln!(x, "  <devices>");
    match &spec.disk {
        DiskSpec::LocalQcow2 { path } => {
            let _ = writeln!(x, "    <disk type='file' device='disk'>");
            let _ = writeln!(
                x,
                "      <driver name='qemu' type='qcow2' discard='unmap'/>"
            );
            let _ = writeln!(x, "      <source file='{}'/>", esc_path(path));
            let _ = writeln!(x, "      <target dev='vda' bus='virtio'/>");
            let _ = writeln!(x, "    </disk>");
        }
        DiskSpec::Rbd(rbd) => {
            x.push_str(&rbd_disk_xml(
                rbd,
                "vda",
                None,
                &IoTune::default(),
                false,
                4,
            ));
        }
    }
    for v in &spec.volumes {
        x.push_str(&rbd_disk_xml(
            &v.source,
            &v.target,
            Some(&v.serial),
            &v.iotune,
            v.read_only,
            4,
        ));
    }
    for nic in &spec.nics {
        write_interface(&mut x, nic, "    ");
    }
    let log = esc_path(&spec.console_log);
    let _ = writeln!(x, "    <serial type='file'>");
    let _ = writeln!(x, "      <source path='{log}' append='on'/>");
    let _ = writeln!(x, "      <target port='0'/>");
    let _ = writeln!(x, "    </serial>");
    let _ = writeln!(x, "    <console type='file'>");
    let _ = writeln!(x, "      <source path='{log}' append='on'/>");
    let _ = writeln!(x, "      <target type='serial' port='0'/>");
    let _ = writeln!(x, "    </console>");
    if spec.vnc {
        let _ = writeln!(
            x,
            "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'>"
        );
        let _ = writeln!(x, "      <listen type='address' address='127.0.0.1'/>");
        let _ = writeln!(x, "    </graphics>");
    }
    let _ = writeln!(x, "    <memballoon model='none'/>");
    let _ = writeln!(x, "  </devices>");
    let _ = writeln!(x, "</domain>");
    x
}

fn esc_path(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

/// Appends the `<interface>` element of `nic` to `x`, each line prefixed
/// with `indent`.
fn write_interface(x: &mut String, nic: &Nic, indent: &str) {
    let _ = writeln!(x, "{indent}<interface type='ethernet'>");
    let _ = writeln!(
        x,
        "{indent}  <mac address='{}'/>",
        esc(&nic.mac.to_ascii_lowercase())
    );
    let _ = writeln!(
        x,
        "{indent}  <target dev='{}' managed='no'/>",
        esc(&nic.tap)
    );
    let _ = writeln!(x, "{indent}  <model type='virtio'/>");
    if let Some(mtu) = nic.mtu {
        let _ = writeln!(x, "{indent}  <mtu size='{mtu}'/>");
    }
    let _ = writeln!(x, "{indent}</interface>");
}

/// The `<interface>` element of `nic` alone, for hot-plugging it
/// (`virDomainAttachDeviceFlags`); the same element the domain XML has.
/// Pure.
pub fn interface_xml(nic: &Nic) -> String {
    let mut x = String::new();
    write_interface(&mut x, nic, "");
    x
}

/// The `<interface …>…</interface>` elements of a domain XML with their
/// tap (`<target dev=…>`), in order. A tolerant scanner: an element
/// without a target is skipped. Pure.
pub fn interface_elements(domain_xml: &str) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(start) = domain_xml[offset..].find("<interface ") {
        let start = offset + start;
        let Some(len) = domain_xml[start..].find("</interface>") else {
            break;
        };
        let end = start + len + "</interface>".len();
        let elem = &domain_xml[start..end];
        if let Some(tap) = crate::disk::tag_attr(elem, "target", "dev") {
            out.push((crate::escape::unesc(&tap), elem));
        }
        offset = end;
    }
    out
}

#[cfg(test)]
mod nic_tests {
    use super::*;

    #[test]
    fn a_hot_plugged_interface_is_the_domain_s_element_and_is_found_by_tap() {
        let nic = Nic {
            tap: "tapab<cd".into(),
            mac: "FA:16:3E:00:00:01".into(),
            mtu: Some(1450),
        };
        let one = interface_xml(&nic);
        assert!(one.starts_with("<interface type='ethernet'>\n"), "{one}");
        assert!(one.contains("<mac address='fa:16:3e:00:00:01'/>"), "{one}");
        assert!(
            one.contains("<target dev='tapab&lt;cd' managed='no'/>"),
            "{one}"
        );
        let dom = format!(
            "<domain><devices>{one}<interface type='ethernet'><mac address='x'/></interface>\
             <interface type='ethernet'><target dev='tap2'/></interface></devices></domain>"
        );
        let found: Vec<String> = interface_elements(&dom)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(found, ["tapab<cd", "tap2"]);
        assert!(interface_elements("<domain/>").is_empty());
    }
}
