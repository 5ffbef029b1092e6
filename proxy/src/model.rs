//! The model: every frontend of every Service on this node, kept up to date incrementally.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::compute::{compute_service, HealthCheck};
use crate::options::{NodeFacts, Options};
use crate::problem::Problem;
use crate::tracker::{ChangeTracker, Changes};
use crate::types::{Backend, Frontend, FrontendAddr, FrontendKey, Masquerade, NoBackends, Pool, Protocol, ServiceKey};

#[derive(Debug, Default, Clone, PartialEq)]
struct ServiceState {
    /// Sorted.
    keys: Vec<FrontendKey>,
    problems: Vec<Problem>,
    health_check: Option<HealthCheck>,
}

/// What a recompute changed for one Service.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDiff {
    pub added: Vec<FrontendKey>,
    pub removed: Vec<FrontendKey>,
    pub changed: Vec<FrontendKey>,
    pub problems_changed: bool,
    pub health_check_changed: bool,
}

impl ServiceDiff {
    /// Whether any frontend was added, removed or changed (what the engine must hear about).
    pub fn frontends_changed(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

/// What a recompute changed, per Service; Services without change are absent.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ModelDiff {
    pub services: BTreeMap<ServiceKey, ServiceDiff>,
    /// Conntrack entries to delete once the new rules are committed.
    pub conntrack: Vec<ConntrackCleanup>,
}

/// A conntrack deletion for UDP and SCTP frontends, as kube-proxy's CleanStaleEntries does
/// after a sync (TCP is left alone: its connections end on their own or get reset). Never a
/// wholesale flush: each entry names one frontend, and one backend where there is one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ConntrackCleanup {
    /// A backend left the frontend: delete its flows that were DNATed to it, or they keep
    /// going to a dead endpoint (`conntrack -D -p udp --orig-dst ADDR --orig-port-dst PORT
    /// --reply-src BACKEND --reply-port-src BACKEND_PORT`; for [`FrontendAddr::AnyLocal`] match
    /// the port only).
    BackendGone {
        protocol: Protocol,
        addr: FrontendAddr,
        port: u16,
        backend: IpAddr,
        backend_port: u16,
    },
    /// The frontend had no backend (or did not exist) and now has one: delete the entries
    /// created while it had none (not DNATed, so later packets would never reach the new backend):
    /// `conntrack -D -p udp --orig-dst ADDR --orig-port-dst PORT`.
    FrontendRevived {
        protocol: Protocol,
        addr: FrontendAddr,
        port: u16,
    },
}

/// Every backend a frontend may send to (its pool and its short-circuit pool).
fn all_backends(f: &Frontend) -> BTreeSet<(IpAddr, u16)> {
    let sc = f.short_circuit.iter().flat_map(|s| s.pool.backends.iter());
    f.pool.backends.iter().chain(sc).map(|b| (b.ip, b.port)).collect()
}

fn conntrack_cleanup(k: &FrontendKey, old: Option<&Frontend>, new: Option<&Frontend>, out: &mut Vec<ConntrackCleanup>) {
    if k.protocol == Protocol::Tcp {
        return;
    }
    let before = old.map(all_backends).unwrap_or_default();
    let after = new.map(all_backends).unwrap_or_default();
    for &(backend, backend_port) in before.difference(&after) {
        out.push(ConntrackCleanup::BackendGone {
            protocol: k.protocol,
            addr: k.addr,
            port: k.port,
            backend,
            backend_port,
        });
    }
    if before.is_empty() && !after.is_empty() {
        out.push(ConntrackCleanup::FrontendRevived {
            protocol: k.protocol,
            addr: k.addr,
            port: k.port,
        });
    }
}

impl ModelDiff {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.conntrack.is_empty()
    }

    /// The Services whose frontends changed: the ones to send to the engine.
    pub fn services_with_frontend_changes(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services
            .iter()
            .filter(|(_, d)| d.frontends_changed())
            .map(|(k, _)| k)
    }
}

/// Every frontend of every Service, for one node.
#[derive(Debug, Clone)]
pub struct Model {
    node: NodeFacts,
    options: Options,
    frontends: BTreeMap<FrontendKey, Frontend>,
    /// Per-Service state; a HashMap because recompute touches it once per Service.
    services: HashMap<ServiceKey, ServiceState>,
    recomputed_total: u64,
}

impl PartialEq for Model {
    /// Equal results; the recompute counter is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
            && self.options == other.options
            && self.frontends == other.frontends
            && self.services == other.services
    }
}

impl Model {
    /// An empty model; fill it with [`Model::recompute`].
    pub fn new(node: NodeFacts, options: Options) -> Self {
        Self {
            node,
            options,
            frontends: BTreeMap::new(),
            services: HashMap::new(),
            recomputed_total: 0,
        }
    }

    /// A model computed from everything in `inputs`.
    pub fn build(inputs: &ChangeTracker, node: NodeFacts, options: Options) -> Self {
        let mut m = Self::new(node, options);
        m.recompute(inputs, &inputs.all_keys());
        m
    }

    /// Recomputes the Services in `changed` from `inputs` and returns what changed.
    pub fn recompute(&mut self, inputs: &ChangeTracker, changed: &Changes) -> ModelDiff {
        let mut diff = ModelDiff::default();
        for key in changed.iter() {
            self.recomputed_total += 1;
            let out = compute_service(key, inputs.service(key), inputs.slices(key), &self.node, &self.options);
            let mut new_frontends = out.frontends;
            new_frontends.sort_by(|a, b| a.0.cmp(&b.0));
            new_frontends.dedup_by(|a, b| a.0 == b.0);
            let old = self.services.remove(key).unwrap_or_default();
            let mut d = ServiceDiff {
                problems_changed: old.problems != out.problems,
                health_check_changed: old.health_check != out.health_check,
                ..Default::default()
            };
            let new_keys: Vec<FrontendKey> = new_frontends.iter().map(|(k, _)| k.clone()).collect();
            for k in &old.keys {
                if new_keys.binary_search(k).is_err() {
                    if let Some(old_f) = self.frontends.remove(k) {
                        conntrack_cleanup(k, Some(&old_f), None, &mut diff.conntrack);
                    }
                    d.removed.push(k.clone());
                }
            }
            for (k, f) in new_frontends {
                match self.frontends.entry(k) {
                    Entry::Vacant(v) => {
                        conntrack_cleanup(v.key(), None, Some(&f), &mut diff.conntrack);
                        d.added.push(v.key().clone());
                        v.insert(f);
                    }
                    Entry::Occupied(mut o) => {
                        if *o.get() != f {
                            conntrack_cleanup(o.key(), Some(o.get()), Some(&f), &mut diff.conntrack);
                            d.changed.push(o.key().clone());
                            o.insert(f);
                        }
                    }
                }
            }
            let state = ServiceState {
                keys: new_keys,
                problems: out.problems,
                health_check: out.health_check,
            };
            if state.keys.is_empty() && state.problems.is_empty() && state.health_check.is_none() {
                // Nothing left to remember about this Service.
            } else {
                self.services.insert(key.clone(), state);
            }
            if d.frontends_changed() || d.problems_changed || d.health_check_changed {
                diff.services.insert(key.clone(), d);
            }
        }
        diff.conntrack.sort();
        diff.conntrack.dedup();
        diff
    }

    /// New node facts (addresses, zone, …) affect every Service: recomputes all.
    pub fn set_node(&mut self, node: NodeFacts, inputs: &ChangeTracker) -> ModelDiff {
        self.node = node;
        self.recompute_all(inputs)
    }

    /// New options affect every Service: recomputes all.
    pub fn set_options(&mut self, options: Options, inputs: &ChangeTracker) -> ModelDiff {
        self.options = options;
        self.recompute_all(inputs)
    }

    fn recompute_all(&mut self, inputs: &ChangeTracker) -> ModelDiff {
        let mut all = inputs.all_keys();
        for k in self.services.keys() {
            all.insert(k.clone());
        }
        self.recompute(inputs, &all)
    }

    pub fn node(&self) -> &NodeFacts {
        &self.node
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// All frontends, grouped by Service (the key's first field).
    pub fn frontends(&self) -> &BTreeMap<FrontendKey, Frontend> {
        &self.frontends
    }

    /// One Service's frontends.
    pub fn service_frontends<'a>(
        &'a self,
        key: &ServiceKey,
    ) -> impl Iterator<Item = (&'a FrontendKey, &'a Frontend)> + 'a {
        let keys = self.services.get(key).map(|s| s.keys.as_slice()).unwrap_or_default();
        keys.iter().filter_map(move |k| self.frontends.get_key_value(k))
    }

    /// The Services the model holds state for, sorted.
    fn sorted_services(&self) -> Vec<(&ServiceKey, &ServiceState)> {
        let mut v: Vec<(&ServiceKey, &ServiceState)> = self.services.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Every problem, by Service (sorted).
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.sorted_services().into_iter().flat_map(|(_, s)| s.problems.iter())
    }

    pub fn service_problems(&self, key: &ServiceKey) -> &[Problem] {
        self.services
            .get(key)
            .map(|s| s.problems.as_slice())
            .unwrap_or_default()
    }

    /// Health checks of LoadBalancer Services with `externalTrafficPolicy: Local`.
    pub fn health_checks(&self) -> impl Iterator<Item = (&ServiceKey, &HealthCheck)> {
        self.sorted_services()
            .into_iter()
            .filter_map(|(k, s)| s.health_check.as_ref().map(|h| (k, h)))
    }

    pub fn health_check(&self, key: &ServiceKey) -> Option<&HealthCheck> {
        self.services.get(key).and_then(|s| s.health_check.as_ref())
    }

    /// Every ClusterIP that has a frontend: for kube-proxy's "traffic to a ClusterIP on a port
    /// no Service uses is rejected" rule.
    pub fn cluster_ips(&self) -> BTreeSet<IpAddr> {
        self.frontends
            .keys()
            .filter(|k| k.kind == crate::types::FrontendKind::ClusterIp)
            .filter_map(|k| match k.addr {
                FrontendAddr::Ip(ip) => Some(ip),
                FrontendAddr::AnyLocal(_) => None,
            })
            .collect()
    }

    /// How many Service computations this model has run (for tests and a metric).
    pub fn recomputed_services_total(&self) -> u64 {
        self.recomputed_total
    }
}

fn write_backend(f: &mut fmt::Formatter<'_>, indent: &str, b: &Backend) -> fmt::Result {
    write!(f, "{indent}backend {}", b.endpoint_string())?;
    if let Some(n) = &b.node_name {
        write!(f, " node={n}")?;
    }
    if let Some(z) = &b.zone {
        write!(f, " zone={z}")?;
    }
    for (flag, name) in [
        (b.local, "local"),
        (b.ready, "ready"),
        (b.serving, "serving"),
        (b.terminating, "terminating"),
    ] {
        if flag {
            write!(f, " {name}")?;
        }
    }
    writeln!(f)
}

fn write_pool(f: &mut fmt::Formatter<'_>, indent: &str, pool: &Pool) -> fmt::Result {
    for b in &pool.backends {
        write_backend(f, indent, b)?;
    }
    if let Some(t) = &pool.maglev {
        let mut counts = vec![0usize; pool.backends.len()];
        for &s in t.slots() {
            counts[usize::from(s)] += 1;
        }
        let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
        let head: Vec<String> = t.slots().iter().take(8).map(|s| s.to_string()).collect();
        writeln!(
            f,
            "{indent}maglev {} slots, per backend {}, first {}",
            t.size(),
            counts.join("/"),
            head.join(",")
        )?;
    }
    Ok(())
}

fn masq_text(m: &Masquerade) -> String {
    match m {
        Masquerade::Never => "never".into(),
        Masquerade::Always => "always".into(),
        Masquerade::UnlessSourceIn(n) => {
            let n: Vec<String> = n.iter().map(|n| n.to_string()).collect();
            format!("unless-source-in {}", n.join(","))
        }
    }
}

/// A stable text form, one Service after another (the golden files).
impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, state) in self.sorted_services() {
            writeln!(f, "service {key}")?;
            for p in &state.problems {
                writeln!(f, "  problem {p}")?;
            }
            if let Some(h) = &state.health_check {
                writeln!(
                    f,
                    "  health-check node-port {} local-endpoints {}",
                    h.node_port, h.local_endpoints
                )?;
            }
            for k in &state.keys {
                let Some(fe) = self.frontends.get(k) else { continue };
                let addr = match k.addr {
                    FrontendAddr::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
                    other => other.to_string(),
                };
                writeln!(
                    f,
                    "  {} {addr}:{}/{} port-name {:?}",
                    k.kind, k.port, k.protocol, k.port_name
                )?;
                write!(
                    f,
                    "    algorithm {} masquerade {}",
                    fe.algorithm,
                    masq_text(&fe.masquerade)
                )?;
                if let Some(t) = fe.affinity_timeout {
                    write!(f, " affinity client-ip {t}s")?;
                }
                writeln!(f)?;
                if !fe.source_ranges.is_empty() {
                    let r: Vec<String> = fe.source_ranges.iter().map(|n| n.to_string()).collect();
                    writeln!(f, "    source-ranges {}", r.join(","))?;
                }
                if fe.pool.backends.is_empty() {
                    let v = match fe.no_backends {
                        NoBackends::Reject => "reject",
                        NoBackends::Drop => "drop",
                    };
                    writeln!(f, "    no backends: {v}")?;
                }
                write_pool(f, "    ", &fe.pool)?;
                if let Some(sc) = &fe.short_circuit {
                    let p: Vec<String> = sc.pod_sources.iter().map(|n| n.to_string()).collect();
                    writeln!(
                        f,
                        "    short-circuit pod-sources {} and node-local (masqueraded):",
                        if p.is_empty() { "-".to_string() } else { p.join(",") }
                    )?;
                    write_pool(f, "      ", &sc.pool)?;
                }
            }
        }
        Ok(())
    }
}
