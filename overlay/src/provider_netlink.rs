//! Observing and applying provider networks over rtnetlink.

use std::collections::HashMap;

use rtnetlink::{LinkBridge, LinkVlan};
use tracing::{debug, info, warn};

use crate::error::OverlayError;
use crate::netlink::Netlink;
use crate::observed::LinkKind;
use crate::provider::{ObservedLink, ObservedProvider, ProviderAction};

/// Provider actions that failed, each with its error.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} provider actions failed: {}", failures.len(), failures.iter().map(|(a, e)| format!("{a:?}: {e}")).collect::<Vec<_>>().join("; "))]
pub struct ProviderApplyError {
    /// Actions attempted.
    pub total: usize,
    /// The failed ones.
    pub failures: Vec<(ProviderAction, OverlayError)>,
}

impl Netlink {
    /// Every link of the namespace with its kind, MTU, up flag, master,
    /// VLAN parent and id, and addresses.
    pub async fn observe_provider(&self) -> Result<ObservedProvider, OverlayError> {
        let links = self.links().await?;
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut addresses = self.addresses().await?;
        let mut out = ObservedProvider::default();
        for l in links {
            let vlan = match (l.kind == LinkKind::Vlan, l.link, l.vlan_id) {
                (true, Some(parent), Some(id)) => names.get(&parent).map(|p| (p.clone(), id)),
                _ => None,
            };
            out.links.insert(
                l.name.clone(),
                ObservedLink {
                    kind: l.kind,
                    mtu: l.mtu,
                    up: l.up,
                    master: l.master.and_then(|m| names.get(&m).cloned()),
                    vlan,
                    addresses: addresses.remove(&l.index).unwrap_or_default(),
                },
            );
        }
        Ok(out)
    }

    /// Applies a provider plan. Every action is attempted (later passes
    /// retry what failed); the failures are returned together.
    pub async fn apply_provider(
        &self,
        actions: &[ProviderAction],
    ) -> Result<(), ProviderApplyError> {
        let mut failures = Vec::new();
        for a in actions {
            match self.apply_provider_one(a).await {
                Ok(()) => debug!(action = ?a, "provider action applied"),
                Err(e) => {
                    warn!(action = ?a, error = %e, "provider action failed");
                    failures.push((a.clone(), e));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ProviderApplyError {
                total: actions.len(),
                failures,
            })
        }
    }

    async fn apply_provider_one(&self, a: &ProviderAction) -> Result<(), OverlayError> {
        match a {
            ProviderAction::DeleteBridge {
                bridge,
                vlan_devices,
            } => {
                info!(%bridge, ?vlan_devices, "removing provider bridge");
                for v in vlan_devices {
                    self.delete_link(v).await?;
                }
                self.delete_link(bridge).await
            }
            ProviderAction::CreateBridge { bridge, mtu } => {
                info!(%bridge, mtu, "creating provider bridge");
                self.handle()
                    .link()
                    .add(LinkBridge::new(bridge).build())
                    .execute()
                    .await
                    .map_err(|e| OverlayError::netlink(format!("create bridge {bridge}"), e))?;
                // Set explicitly so that enslaving ports never changes it.
                self.set_mtu(bridge, *mtu).await
            }
            ProviderAction::CreateVlan { name, parent, vid } => {
                info!(%name, %parent, vid, "creating VLAN device");
                let index = self.index_of(parent).await?;
                self.handle()
                    .link()
                    .add(LinkVlan::new(name, index, *vid).build())
                    .execute()
                    .await
                    .map_err(|e| {
                        OverlayError::netlink(format!("create VLAN {vid} {name} on {parent}"), e)
                    })
            }
            ProviderAction::Link(a) => self.apply_link(a).await,
        }
    }
}
