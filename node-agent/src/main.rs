//! `weft-agent`: run the node agent, or `weft-agent cleanup`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnetwork::IpNetwork;
use tokio::sync::Notify;
use weft_agent::config::{BackendChoice, Settings};
use weft_agent::key::PrivateKey;
use weft_agent::metrics::Metrics;
use weft_agent::net::Net;
use weft_agent::reconcile::{self, Agent};
use weft_agent::runloop;
use weft_agent::services::ServicesLoop;
use weft_agent::{cleanup, http, kube};

#[derive(Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "weft's node agent: WireGuard mesh, routes, CNI bootstrap"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Remove everything weft made on this node (device, rules, CNI files, state); idempotent.
    Cleanup,
}

#[derive(Args)]
struct Opts {
    /// This node's name (from the downward API in the DaemonSet).
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    /// Kubeconfig; in-cluster config when neither this nor KUBECONFIG is set.
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin", global = true)]
    cni_bin_dir: PathBuf,
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d", global = true)]
    cni_conf_dir: PathBuf,
    /// Where `weft` and `weft-ipam` are copied from [default: the agent binary's directory].
    #[arg(long, env = "WEFT_CNI_SOURCE_DIR", global = true)]
    cni_source_dir: Option<PathBuf>,
    /// Persistent state: the WireGuard key, IPAM data.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft", global = true)]
    state_dir: PathBuf,
    /// Runtime files: readiness file, userspace WireGuard pid/log/socket.
    #[arg(long, env = "WEFT_RUN_DIR", default_value = "/run/weft", global = true)]
    run_dir: PathBuf,
    /// The file `weft` STATUS waits for [default: RUN_DIR/ready].
    #[arg(long, env = "WEFT_READINESS_FILE", global = true)]
    readiness_file: Option<PathBuf>,
    #[arg(
        long,
        env = "WEFT_CNI_LOG_FILE",
        default_value = "/var/log/weft/cni.log",
        global = true
    )]
    cni_log_file: PathBuf,
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft0", global = true)]
    bridge: String,
    #[arg(long, env = "WEFT_WG_IFACE", default_value = "weft-wg", global = true)]
    wg_iface: String,
    #[arg(long, env = "WEFT_WG_PORT", default_value_t = 51820, global = true)]
    wg_port: u16,
    /// auto (kernel module if present, else userspace), kernel or userspace.
    #[arg(long, env = "WEFT_WG_BACKEND", default_value = "auto", global = true)]
    wg_backend: BackendChoice,
    /// Userspace WireGuard implementation (wireguard-go compatible: `BIN -f IFACE`, UAPI socket)
    /// [default: `weft-wg` next to the agent binary, else `wireguard-go` from PATH]; `external`:
    /// never start one, adopt the one a sidecar runs (its socket in --wg-socket-dir).
    #[arg(long, env = "WEFT_WG_USERSPACE", global = true)]
    wg_userspace: Option<PathBuf>,
    /// Directory of the userspace UAPI socket [default: RUN_DIR/wireguard].
    #[arg(long, env = "WEFT_WG_SOCKET_DIR", global = true)]
    wg_socket_dir: Option<PathBuf>,
    /// Overlay MTU [default: underlay MTU - 60 (IPv4 underlay) or - 80 (IPv6)].
    #[arg(long, env = "WEFT_MTU", global = true)]
    mtu: Option<u32>,
    /// Cluster CIDR(s) pods reach without masquerade (repeat or comma-separate) [default: all nodes' pod CIDRs].
    #[arg(long, env = "WEFT_CLUSTER_CIDR", value_delimiter = ',', global = true)]
    cluster_cidr: Vec<IpNetwork>,
    /// Chain the `portmap` plugin after weft in the conflist.
    #[arg(long, env = "WEFT_CHAIN_PORTMAP", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    chain_portmap: bool,
    /// /healthz and /livez (kube-proxy's flag): IP:PORT, or an IP (port 10256); "" or 0: off.
    #[arg(
        long,
        env = "WEFT_HEALTHZ_BIND_ADDRESS",
        default_value = "0.0.0.0:10256",
        global = true
    )]
    healthz_bind_address: String,
    /// /metrics (kube-proxy's flag): IP:PORT, or an IP (port 10249); "" or 0: off.
    #[arg(
        long,
        env = "WEFT_METRICS_BIND_ADDRESS",
        default_value = "127.0.0.1:10249",
        global = true
    )]
    metrics_bind_address: String,
    /// Move other CNI configs in the conf dir aside (into weft-moved/) so
    /// weft's is used; `cleanup` restores them.
    #[arg(long, env = "WEFT_CNI_EXCLUSIVE", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    cni_exclusive: bool,
    /// Full reconcile at least this often (seconds).
    #[arg(long, env = "WEFT_RESYNC_SECONDS", default_value_t = 30, global = true)]
    resync_seconds: u64,
    /// Drop traffic to other nodes' pod CIDRs that would leave this node
    /// outside the WireGuard tunnel (a moved route, the device down), so pod
    /// traffic never crosses the underlay in clear text.
    #[arg(long, env = "WEFT_STRICT", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    strict: bool,
    /// Program Services (table inet weft-svc); `false` beside kube-proxy
    /// while migrating.
    #[arg(long, env = "WEFT_SERVICES", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    services: bool,
}

impl Opts {
    fn settings(&self) -> Result<Settings> {
        let node_name = self.node_name.clone().unwrap_or_default();
        let source = match &self.cni_source_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .context("find the agent binary")?
                .parent()
                .context("agent binary has no directory")?
                .to_path_buf(),
        };
        Ok(Settings {
            node_name,
            wg_iface: self.wg_iface.clone(),
            wg_port: self.wg_port,
            wg_backend: self.wg_backend,
            wg_userspace_bin: self.wg_userspace.clone().unwrap_or_else(default_userspace),
            wg_socket_dir: self
                .wg_socket_dir
                .clone()
                .unwrap_or_else(|| self.run_dir.join("wireguard")),
            mtu: self.mtu,
            cluster_cidrs: self.cluster_cidr.clone(),
            cni_bin_dir: self.cni_bin_dir.clone(),
            cni_conf_dir: self.cni_conf_dir.clone(),
            cni_source_dir: source,
            state_dir: self.state_dir.clone(),
            run_dir: self.run_dir.clone(),
            readiness_file: self
                .readiness_file
                .clone()
                .unwrap_or_else(|| self.run_dir.join("ready")),
            cni_log_file: self.cni_log_file.clone(),
            bridge: self.bridge.clone(),
            chain_portmap: self.chain_portmap,
            healthz_addr: http::parse_bind(&self.healthz_bind_address, http::HEALTHZ_PORT)
                .map_err(anyhow::Error::msg)
                .context("--healthz-bind-address")?,
            metrics_addr: http::parse_bind(&self.metrics_bind_address, http::METRICS_PORT)
                .map_err(anyhow::Error::msg)
                .context("--metrics-bind-address")?,
            cni_exclusive: self.cni_exclusive,
            resync: Duration::from_secs(self.resync_seconds.max(1)),
            strict: self.strict,
            services: self.services,
        })
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let settings = cli.opts.settings()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => rt.block_on(run(settings, cli.opts.kubeconfig)),
        Cmd::Cleanup => rt.block_on(run_cleanup(settings)),
    }
}

async fn run_cleanup(settings: Settings) -> Result<()> {
    match cleanup::cleanup(&settings).await {
        Ok(done) if done.is_empty() => tracing::info!("nothing to clean up"),
        Ok(done) => done.iter().for_each(|d| tracing::info!(step = %d, "cleaned up")),
        Err(errors) => {
            errors
                .iter()
                .for_each(|e| tracing::error!(error = %e, "cleanup step failed"));
            bail!("cleanup: {} step(s) failed", errors.len());
        }
    }
    Ok(())
}

async fn run(settings: Settings, kubeconfig: Option<PathBuf>) -> Result<()> {
    if settings.node_name.is_empty() {
        bail!("no node name: set NODE_NAME or --node-name");
    }
    let (key, created) = PrivateKey::load_or_create(&settings.key_file()).context("WireGuard private key")?;
    tracing::info!(
        node = %settings.node_name,
        public_key = %key.public(),
        key_file = %settings.key_file().display(),
        created,
        "weft-agent starting"
    );
    let metrics = Arc::new(Metrics::default());
    let bound = http::serve(
        settings.healthz_addr,
        settings.metrics_addr,
        metrics.clone(),
        settings.resync * 3,
    )
    .await?;
    tracing::info!(healthz = ?bound.healthz, metrics = ?bound.metrics, "serving health and metrics");
    let client = kube::client(kubeconfig.as_deref()).await.context("Kubernetes client")?;
    let changed = Arc::new(Notify::new());
    let changes = kube::Changes::default();
    let (svc_changes, slice_changes) = (kube::Changes::default(), kube::Changes::default());
    let store = kube::watch_nodes(client.clone(), changed.clone(), changes.clone(), metrics.clone());
    let net = Net::here().context("netlink")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nodes_listed = Arc::new(Notify::new());
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let services = if settings.services {
        let trigger = Arc::new(Notify::new());
        let inputs = weft_agent::services::Inputs {
            nodes: store.clone(),
            services: kube::watch(
                kube_api_all(&client),
                Default::default(),
                trigger.clone(),
                svc_changes.clone(),
                metrics.clone(),
            ),
            slices: kube::watch(
                kube_api_all(&client),
                Default::default(),
                trigger.clone(),
                slice_changes.clone(),
                metrics.clone(),
            ),
            service_changes: svc_changes,
            slice_changes,
        };
        let lp = ServicesLoop::new(
            settings.node_name.clone(),
            settings.cluster_cidrs.clone(),
            inputs,
            metrics.clone(),
        );
        let pacing = runloop::Pacing::new(settings.resync);
        let (m, stop) = (metrics.clone(), stopped());
        // Only one task may wait for the Node store (kube-rs wakes one waiter
        // of its readiness): the mesh loop does; the Services loop starts
        // once the mesh loop has seen the first list.
        let ready = nodes_listed.clone();
        Some(tokio::spawn(async move {
            ready.notified().await;
            runloop::run("services", lp, trigger, pacing, m, stop).await;
        }))
    } else {
        tracing::info!("--services=false: Services are left to someone else (kube-proxy)");
        None
    };
    let agent = Agent::new(settings, key, client, net, metrics.clone(), store, changes);
    weft_agent::wg::watch_userspace(&agent.settings, changed.clone(), agent.force_full(), metrics);
    let mesh = reconcile::run(agent, changed, nodes_listed, stopped());
    tokio::pin!(mesh);
    tokio::select! {
        _ = &mut mesh => {}
        _ = shutdown() => {
            let _ = stop_tx.send(true);
            mesh.await;
        }
    }
    if let Some(s) = services {
        let _ = s.await;
    }
    Ok(())
}

fn kube_api_all<K>(client: &::kube::Client) -> ::kube::Api<K>
where
    K: ::kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    ::kube::Api::all(client.clone())
}

/// SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// weft's own userspace WireGuard (`weft-wg`, several times faster than
/// Debian's wireguard-go: wg/BENCHMARKS.md) when it ships beside the agent,
/// else `wireguard-go` from PATH.
fn default_userspace() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("weft-wg")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("wireguard-go"))
}
