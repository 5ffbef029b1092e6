//! The agent's Prometheus metrics, kept in one struct and rendered in the
//! text exposition format (version 0.0.4).
//!
//! WireGuard peer numbers (bytes, last handshake) are read from the device
//! when scraped ([`Metrics::render_now`]), never copied from the last pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::key::PublicKey;
use crate::wg::Device;

/// How long a scrape waits for the WireGuard device before it renders
/// without peer numbers.
const DEVICE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// One peer's numbers, labelled by node.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStat {
    pub public_key: String,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Inner {
    peers: BTreeMap<String, PeerStat>,
    /// The device and which node each key stands for, read at scrape time.
    device: Option<(Device, BTreeMap<PublicKey, String>)>,
    /// Reconcile durations by loop.
    loops: BTreeMap<&'static str, Histogram>,
    errors: BTreeMap<String, u64>,
    /// Things the agent owns that someone else changed and it put back, by kind.
    repaired: BTreeMap<String, u64>,
    problems_total: BTreeMap<String, u64>,
    problems_now: BTreeMap<String, u64>,
    ready: bool,
    last_success: Option<Instant>,
    backend: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One pass of loop `name`. Health follows the mesh loop.
    pub fn observe_loop(&self, name: &'static str, took: Duration, ok: bool) {
        self.with(|m| {
            m.loops.entry(name).or_default().observe(took.as_secs_f64());
            if ok && name == "mesh" {
                m.last_success = Some(Instant::now());
            }
        });
    }

    /// Something the agent owns was changed by someone else and put back.
    pub fn repaired(&self, kind: &str) {
        self.with(|m| *m.repaired.entry(kind.to_string()).or_default() += 1);
    }

    /// The device whose peers `/metrics` reports, and the node of each key.
    pub fn set_device(&self, device: Device, nodes: BTreeMap<PublicKey, String>) {
        self.with(|m| m.device = Some((device, nodes)));
    }

    pub fn error(&self, kind: &str) {
        self.with(|m| *m.errors.entry(kind.to_string()).or_default() += 1);
    }

    /// Problems found in this pass, by kind; `new` are the ones not seen in
    /// the previous pass (counted once each).
    pub fn problems(&self, now: &BTreeMap<String, u64>, new: &[&str]) {
        self.with(|m| {
            m.problems_now = now.clone();
            for k in new {
                *m.problems_total.entry(k.to_string()).or_default() += 1;
            }
        });
    }

    pub fn set_peers(&self, peers: BTreeMap<String, PeerStat>, backend: &'static str) {
        self.with(|m| {
            m.peers = peers;
            m.backend = backend;
        });
    }

    pub fn set_ready(&self) {
        self.with(|m| m.ready = true);
    }

    /// Ready, and a reconcile succeeded within `within`.
    pub fn healthy(&self, within: Duration) -> bool {
        self.with(|m| m.ready && m.last_success.is_some_and(|t| t.elapsed() <= within))
    }

    /// The metrics as they are now (peer numbers as of the last
    /// [`Metrics::set_peers`]).
    pub fn render(&self) -> String {
        self.with(|m| render(m, SystemTime::now()))
    }

    /// The metrics with peer numbers read from the device now.
    pub async fn render_now(&self) -> String {
        let Some((device, nodes)) = self.with(|m| m.device.clone()) else {
            return self.render();
        };
        match tokio::time::timeout(DEVICE_READ_TIMEOUT, device.get()).await {
            Ok(Ok(state)) => {
                let stats = peer_stats(state.peers, &nodes);
                self.with(|m| {
                    m.peers = stats;
                    m.backend = device.kind();
                    render(m, SystemTime::now())
                })
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "read WireGuard device for /metrics");
                self.error("metrics_device_read");
                self.render()
            }
            Err(_) => {
                self.error("metrics_device_read");
                self.render()
            }
        }
    }
}

/// Peer numbers by node name (the key itself when no node claims it).
pub fn peer_stats(
    peers: Vec<crate::peers::PeerState>,
    nodes: &BTreeMap<PublicKey, String>,
) -> BTreeMap<String, PeerStat> {
    peers
        .into_iter()
        .filter_map(|p| {
            let key = p.key?;
            let node = nodes.get(&key).cloned().unwrap_or_else(|| key.to_base64());
            Some((
                node,
                PeerStat {
                    public_key: key.to_base64(),
                    last_handshake: p.last_handshake,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                },
            ))
        })
        .collect()
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render(m: &Inner, now: SystemTime) -> String {
    let mut s = String::new();
    header(
        &mut s,
        "weft_agent_ready",
        "gauge",
        "1 once the mesh is up and the CNI config is written.",
    );
    let _ = writeln!(s, "weft_agent_ready {}", u8::from(m.ready));
    header(
        &mut s,
        "weft_agent_wireguard_info",
        "gauge",
        "The WireGuard backend in use.",
    );
    let _ = writeln!(s, "weft_agent_wireguard_info{{backend=\"{}\"}} 1", m.backend);
    header(
        &mut s,
        "weft_agent_wireguard_peers",
        "gauge",
        "WireGuard peers configured on the device.",
    );
    let _ = writeln!(s, "weft_agent_wireguard_peers {}", m.peers.len());
    header(
        &mut s,
        "weft_agent_wireguard_peer_last_handshake_age_seconds",
        "gauge",
        "Seconds since the last handshake with a peer (+Inf: never).",
    );
    for (node, p) in &m.peers {
        let age = p
            .last_handshake
            .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64().to_string())
            .unwrap_or_else(|| "+Inf".into());
        let _ = writeln!(
            s,
            "weft_agent_wireguard_peer_last_handshake_age_seconds{{node=\"{}\",public_key=\"{}\"}} {age}",
            esc(node),
            esc(&p.public_key)
        );
    }
    header(
        &mut s,
        "weft_agent_wireguard_peer_last_handshake_timestamp_seconds",
        "gauge",
        "Unix time of the last handshake with a peer (0: never).",
    );
    for (node, p) in &m.peers {
        let ts = p
            .last_handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(
            s,
            "weft_agent_wireguard_peer_last_handshake_timestamp_seconds{{node=\"{}\",public_key=\"{}\"}} {ts}",
            esc(node),
            esc(&p.public_key)
        );
    }
    for (name, help, get) in [
        (
            "receive",
            "Bytes received from a peer.",
            (|p: &PeerStat| p.rx_bytes) as fn(&PeerStat) -> u64,
        ),
        ("transmit", "Bytes sent to a peer.", |p: &PeerStat| p.tx_bytes),
    ] {
        let metric = format!("weft_agent_wireguard_peer_{name}_bytes_total");
        header(&mut s, &metric, "counter", help);
        for (node, p) in &m.peers {
            let _ = writeln!(s, "{metric}{{node=\"{}\"}} {}", esc(node), get(p));
        }
    }
    header(
        &mut s,
        "weft_agent_reconcile_duration_seconds",
        "histogram",
        "Time of one reconcile pass, by loop.",
    );
    for (name, h) in &m.loops {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "weft_agent_reconcile_duration_seconds_bucket{{loop=\"{name}\",le=\"{b}\"}} {}",
                h.buckets[i]
            );
        }
        let _ = writeln!(
            s,
            "weft_agent_reconcile_duration_seconds_bucket{{loop=\"{name}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            s,
            "weft_agent_reconcile_duration_seconds_sum{{loop=\"{name}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            s,
            "weft_agent_reconcile_duration_seconds_count{{loop=\"{name}\"}} {}",
            h.count
        );
    }
    header(
        &mut s,
        "weft_agent_repairs_total",
        "counter",
        "Things weft owns (routes, addresses, peers, nftables objects, the userspace WireGuard) that were changed or removed by someone else and put back, by kind.",
    );
    for (k, v) in &m.repaired {
        let _ = writeln!(s, "weft_agent_repairs_total{{kind=\"{}\"}} {v}", esc(k));
    }
    header(
        &mut s,
        "weft_agent_reconcile_errors_total",
        "counter",
        "Failed steps, by kind.",
    );
    for (k, v) in &m.errors {
        let _ = writeln!(s, "weft_agent_reconcile_errors_total{{kind=\"{}\"}} {v}", esc(k));
    }
    header(
        &mut s,
        "weft_agent_node_problems_total",
        "counter",
        "Bad or missing data found on Node objects (malformed annotations, no podCIDRs), counted once per occurrence.",
    );
    for (k, v) in &m.problems_total {
        let _ = writeln!(s, "weft_agent_node_problems_total{{kind=\"{}\"}} {v}", esc(k));
    }
    header(
        &mut s,
        "weft_agent_node_problems",
        "gauge",
        "Bad or missing Node data right now, by kind.",
    );
    for (k, v) in &m.problems_now {
        let _ = writeln!(s, "weft_agent_node_problems{{kind=\"{}\"}} {v}", esc(k));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.observe_loop("mesh", Duration::from_millis(30), true);
        m.repaired("route");
        m.error("api_patch");
        let now: BTreeMap<String, u64> = [("bad_key".to_string(), 1)].into();
        m.problems(&now, &["bad_key"]);
        m.problems(&now, &[]);
        let peers = [(
            "node-2".to_string(),
            PeerStat {
                public_key: "k".into(),
                last_handshake: None,
                rx_bytes: 7,
                tx_bytes: 9,
            },
        )]
        .into();
        m.set_peers(peers, "userspace");
        let text = m.render();
        for want in [
            "weft_agent_wireguard_peers 1",
            "weft_agent_wireguard_peer_last_handshake_age_seconds{node=\"node-2\",public_key=\"k\"} +Inf",
            "weft_agent_wireguard_peer_receive_bytes_total{node=\"node-2\"} 7",
            "weft_agent_wireguard_peer_transmit_bytes_total{node=\"node-2\"} 9",
            "weft_agent_reconcile_duration_seconds_bucket{loop=\"mesh\",le=\"0.025\"} 0",
            "weft_agent_reconcile_duration_seconds_bucket{loop=\"mesh\",le=\"0.05\"} 1",
            "weft_agent_reconcile_duration_seconds_count{loop=\"mesh\"} 1",
            "weft_agent_wireguard_peer_last_handshake_timestamp_seconds{node=\"node-2\",public_key=\"k\"} 0",
            "weft_agent_repairs_total{kind=\"route\"} 1",
            "weft_agent_reconcile_errors_total{kind=\"api_patch\"} 1",
            "weft_agent_node_problems_total{kind=\"bad_key\"} 1",
            "weft_agent_wireguard_info{backend=\"userspace\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!m.healthy(Duration::from_secs(60)));
        m.set_ready();
        assert!(m.healthy(Duration::from_secs(60)));
    }
}
