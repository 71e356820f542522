//! The host inventory: the local instances and their interfaces, as every pipeline needs them to
//! say whose a finding is (tap → libvirt domain → Nova instance). The pinning pipeline publishes
//! it from libvirt's live state on each pass; the flow and datapath pipelines join on it.

use crate::model::pinning::Domain;

/// One interface of a local instance (from libvirt's live XML).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LocalInterface {
    /// Guest MAC address.
    pub(crate) mac: String,
    /// Host-side device (tap) name.
    pub(crate) target_dev: String,
    /// libvirt domain name.
    pub(crate) domain: String,
}

/// A local instance by its names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InstanceRef {
    /// libvirt domain name.
    pub(crate) domain: String,
    /// Domain (Nova instance) UUID.
    pub(crate) uuid: String,
    /// Nova display name, empty when unknown.
    pub(crate) name: String,
}

/// Every local instance and every interface of theirs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostInventory {
    /// Interfaces of every local instance.
    pub(crate) interfaces: Vec<LocalInterface>,
    /// Every local instance.
    pub(crate) instances: Vec<InstanceRef>,
}

impl HostInventory {
    /// The inventory of these running domains.
    pub(crate) fn from_domains<'a>(domains: impl IntoIterator<Item = &'a Domain>) -> HostInventory {
        let mut inv = HostInventory::default();
        for d in domains {
            inv.interfaces
                .extend(d.interfaces.iter().map(|i| LocalInterface {
                    mac: i.mac.clone(),
                    target_dev: i.target_dev.clone(),
                    domain: d.name.clone(),
                }));
            inv.instances.push(InstanceRef {
                domain: d.name.clone(),
                uuid: d.uuid.clone(),
                name: d.nova.as_ref().map(|n| n.name.clone()).unwrap_or_default(),
            });
        }
        inv
    }
}
