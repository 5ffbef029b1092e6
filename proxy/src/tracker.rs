//! The input store: the Services and EndpointSlices the watchers have delivered, and which
//! Services changed since the model last looked (kube-proxy's change trackers, reduced to
//! "which Services to recompute").

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::compute::{ignored_by_labels, SERVICE_NAME_LABEL};
use crate::types::{ServiceKey, SliceKey};

/// An object the tracker cannot file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("{kind} {name:?} has no metadata.namespace")]
    NoNamespace { kind: &'static str, name: String },
    #[error("{kind} in namespace {namespace:?} has no metadata.name")]
    NoName { kind: &'static str, namespace: String },
    #[error("EndpointSlice {slice} has no {SERVICE_NAME_LABEL} label: it belongs to no Service and is not used")]
    NoServiceLabel { slice: SliceKey },
}

/// The Services that need recomputing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    services: BTreeSet<ServiceKey>,
}

impl Changes {
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.services.contains(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.iter()
    }

    pub fn insert(&mut self, key: ServiceKey) {
        self.services.insert(key);
    }
}

/// Holds the current Services and EndpointSlices and records which Services changed.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    services: HashMap<ServiceKey, Service>,
    /// Slices by the Service their `kubernetes.io/service-name` label names, then by slice name.
    slices: HashMap<ServiceKey, BTreeMap<String, EndpointSlice>>,
    /// Which Service each slice was filed under (the label can change).
    slice_owner: HashMap<SliceKey, ServiceKey>,
    changed: BTreeSet<ServiceKey>,
}

fn object_key(kind: &'static str, meta: &ObjectMeta) -> Result<(String, String), InputError> {
    let name = meta.name.clone().filter(|n| !n.is_empty());
    let namespace = meta.namespace.clone().filter(|n| !n.is_empty());
    match (namespace, name) {
        (Some(ns), Some(n)) => Ok((ns, n)),
        (None, n) => Err(InputError::NoNamespace {
            kind,
            name: n.unwrap_or_default(),
        }),
        (Some(ns), None) => Err(InputError::NoName { kind, namespace: ns }),
    }
}

impl ChangeTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Service. Returns its key; records a change unless the object is
    /// identical to the stored one.
    pub fn upsert_service(&mut self, svc: Service) -> Result<ServiceKey, InputError> {
        let (ns, name) = object_key("Service", &svc.metadata)?;
        let key = ServiceKey::new(ns, name);
        if self.services.get(&key) != Some(&svc) {
            self.services.insert(key.clone(), svc);
            self.changed.insert(key.clone());
        }
        Ok(key)
    }

    /// Removes a Service; returns whether it was there.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let key = ServiceKey::new(namespace, name);
        let existed = self.services.remove(&key).is_some();
        if existed {
            self.changed.insert(key);
        }
        existed
    }

    /// Adds or replaces an EndpointSlice. Returns the Service it belongs to, or `None` when
    /// the slice carries `service.kubernetes.io/service-proxy-name` or
    /// `service.kubernetes.io/headless` (then it is treated as deleted, as kube-proxy's
    /// label-selecting informer would).
    pub fn upsert_slice(&mut self, slice: EndpointSlice) -> Result<Option<ServiceKey>, InputError> {
        let (ns, name) = object_key("EndpointSlice", &slice.metadata)?;
        let skey = SliceKey {
            namespace: ns.clone(),
            name: name.clone(),
        };
        if ignored_by_labels(&slice.metadata) {
            self.delete_slice(&ns, &name);
            return Ok(None);
        }
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
            .cloned()
        else {
            // A slice that lost its label is gone from its old Service.
            self.delete_slice(&ns, &name);
            return Err(InputError::NoServiceLabel { slice: skey });
        };
        let owner = ServiceKey::new(ns, service);
        if let Some(old) = self.slice_owner.get(&skey).filter(|o| **o != owner).cloned() {
            self.remove_slice_from(&old, &skey.name);
        }
        let set = self.slices.entry(owner.clone()).or_default();
        if set.get(&name) != Some(&slice) {
            set.insert(name, slice);
            self.changed.insert(owner.clone());
        }
        self.slice_owner.insert(skey, owner.clone());
        Ok(Some(owner))
    }

    /// Removes an EndpointSlice; returns the Service it belonged to.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> Option<ServiceKey> {
        let skey = SliceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let owner = self.slice_owner.remove(&skey)?;
        self.remove_slice_from(&owner, name);
        Some(owner)
    }

    fn remove_slice_from(&mut self, owner: &ServiceKey, name: &str) {
        if let Some(set) = self.slices.get_mut(owner) {
            if set.remove(name).is_some() {
                self.changed.insert(owner.clone());
            }
            if set.is_empty() {
                self.slices.remove(owner);
            }
        }
    }

    /// The Services changed since the last call, and forgets them.
    pub fn take_changes(&mut self) -> Changes {
        Changes {
            services: std::mem::take(&mut self.changed),
        }
    }

    /// How many Services wait for a recompute.
    pub fn pending(&self) -> usize {
        self.changed.len()
    }

    /// Every Service key the store knows of (Services, and Services named by slices), for a
    /// full recompute.
    pub fn all_keys(&self) -> Changes {
        let mut services: BTreeSet<ServiceKey> = self.services.keys().cloned().collect();
        services.extend(self.slices.keys().cloned());
        Changes { services }
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// The slices filed under a Service, by slice name.
    pub fn slices(&self, key: &ServiceKey) -> Option<&BTreeMap<String, EndpointSlice>> {
        self.slices.get(key)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slice_owner.len()
    }
}
