//! The Services loop: Services and EndpointSlices (and this node's own Node)
//! → weft-proxy's model → its table `inet weft-svc`, through an nftables
//! engine of its own. It runs beside the mesh loop with its own watches,
//! errors and metrics: an EndpointSlice event never touches WireGuard, and a
//! mesh error never blocks Service rules.
//!
//! An event pass feeds only the objects the watches named into the change
//! tracker and recomputes only their Services; a full pass (start, every
//! resync, after a failure or a relist) rebuilds the model from the stores.
//! What the renderer does not cover yet is listed in `weft_proxy::render`.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use weft_proxy::{ChangeTracker, Model, NodeFacts, Options};

use crate::kube::Changes;
use crate::metrics::Metrics;
use crate::nft::{NftError, TableSync};
use crate::node::NodeView;
use crate::runloop::{ErrorKind, Reconcile};

/// The zone label kube-proxy reads topology from.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("own node {0} is not in the API (yet)")]
    OwnNodeMissing(String),
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
}

impl ErrorKind for ServicesError {
    fn kind(&self) -> &'static str {
        match self {
            ServicesError::OwnNodeMissing(_) => "services_own_node_missing",
            ServicesError::Nft(_) => "services_nftables",
        }
    }
}

/// The watches the loop reads.
pub struct Inputs {
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub service_changes: Changes,
    pub slice_changes: Changes,
}

pub struct ServicesLoop {
    node_name: String,
    cluster_cidrs: Vec<ipnetwork::IpNetwork>,
    inputs: Inputs,
    tracker: ChangeTracker,
    model: Option<Model>,
    nft: TableSync,
    metrics: Arc<Metrics>,
    /// Problems logged so far (each once while it lasts).
    seen_problems: BTreeSet<String>,
}

impl ServicesLoop {
    pub fn new(
        node_name: String,
        cluster_cidrs: Vec<ipnetwork::IpNetwork>,
        inputs: Inputs,
        metrics: Arc<Metrics>,
    ) -> Self {
        ServicesLoop {
            node_name,
            cluster_cidrs,
            inputs,
            tracker: ChangeTracker::new(),
            model: None,
            nft: TableSync::default(),
            metrics,
            seen_problems: BTreeSet::new(),
        }
    }

    /// This node's facts from its Node object.
    fn facts(&self) -> Result<NodeFacts, ServicesError> {
        let node = self
            .inputs
            .nodes
            .get(&ObjectRef::new(&self.node_name))
            .ok_or_else(|| ServicesError::OwnNodeMissing(self.node_name.clone()))?;
        let view = NodeView::from_node(&node, &mut Vec::new());
        let zone = node.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned();
        Ok(NodeFacts {
            name: self.node_name.clone(),
            zone,
            addresses: view.internal_ips,
            pod_cidrs: view.pod_cidrs,
            cluster_cidrs: self.cluster_cidrs.clone(),
        })
    }

    /// Every Service and EndpointSlice the stores hold, into a fresh tracker.
    fn rebuild(&mut self) {
        self.tracker = ChangeTracker::new();
        for s in self.inputs.services.state() {
            self.upsert_service((*s).clone());
        }
        for s in self.inputs.slices.state() {
            self.upsert_slice((*s).clone());
        }
    }

    fn upsert_service(&mut self, s: Service) {
        if let Err(e) = self.tracker.upsert_service(s) {
            self.metrics.error("services_bad_object");
            tracing::warn!(error = %e, "Service ignored");
        }
    }

    fn upsert_slice(&mut self, s: EndpointSlice) {
        if let Err(e) = self.tracker.upsert_slice(s) {
            self.metrics.error("services_bad_object");
            tracing::warn!(error = %e, "EndpointSlice ignored");
        }
    }

    /// Feed the objects the watches named since the last pass.
    fn feed(&mut self, services: BTreeSet<String>, slices: BTreeSet<String>) {
        for key in services {
            let (ns, name) = key.split_once('/').unwrap_or(("", key.as_str()));
            match self.inputs.services.get(&ObjectRef::new(name).within(ns)) {
                Some(s) => self.upsert_service((*s).clone()),
                None => {
                    self.tracker.delete_service(ns, name);
                }
            }
        }
        for key in slices {
            let (ns, name) = key.split_once('/').unwrap_or(("", key.as_str()));
            match self.inputs.slices.get(&ObjectRef::new(name).within(ns)) {
                Some(s) => self.upsert_slice((*s).clone()),
                None => {
                    self.tracker.delete_slice(ns, name);
                }
            }
        }
    }

    /// Log problems new since the last pass (bad objects), count them.
    fn report(&mut self, model: &Model) {
        let now: BTreeSet<String> = model.problems().map(ToString::to_string).collect();
        for p in now.difference(&self.seen_problems) {
            self.metrics.error("services_problem");
            tracing::warn!("{p}");
        }
        self.seen_problems = now;
    }
}

impl Reconcile for ServicesLoop {
    type Error = ServicesError;

    async fn reconcile(&mut self, full: bool) -> Result<Vec<String>, ServicesError> {
        let facts = self.facts()?;
        let services = self.inputs.service_changes.take();
        let slices = self.inputs.slice_changes.take();
        let node_moved = self.model.as_ref().is_some_and(|m| m.node() != &facts);
        let model = match self.model.take() {
            Some(mut m) if !(full || services.all || slices.all || node_moved) => {
                self.feed(services.names, slices.names);
                let changes = self.tracker.take_changes();
                if changes.is_empty() {
                    self.model = Some(m);
                    return Ok(Vec::new());
                }
                m.recompute(&self.tracker, &changes);
                m
            }
            _ => {
                self.rebuild();
                self.tracker.take_changes();
                Model::build(&self.tracker, facts, Options::default())
            }
        };
        self.report(&model);
        let table = weft_proxy::render::render(&model);
        // Kept even when the apply fails: the retry is a full pass.
        self.model = Some(model);
        let outcome = self.nft.apply(table).await?;
        if outcome.repaired {
            self.metrics.repaired("nftables_services");
            tracing::warn!(
                "put back what someone else changed in table inet {}",
                weft_proxy::render::TABLE
            );
        }
        Ok(outcome.changes)
    }
}
