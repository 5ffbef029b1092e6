//! containerd's CRI path driving the CNI network end to end, as kubelet
//! would: a private containerd in its own network namespace runs a pod whose
//! HTTP server must answer from the node, then removes it; nothing may be
//! left behind. Root only; fails (never skips) when a requirement is missing.
//!
//! Needs the weft binaries built into the same target dir first
//! (`cargo build --workspace --bins`).

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, KeyValue, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
    PortMapping, Protocol,
};
use weft_cri_test::cni::{self, Network, BRIDGE};
use weft_cri_test::cri::{self, Cri};
use weft_cri_test::netns::{self, Link};
use weft_cri_test::node::{random_hex, Node};
use weft_cri_test::{cmd, image, require};

/// The HTTP server's port in the pod, and the hostPort portmap forwards.
const POD_PORT: u16 = 8080;
const HOST_PORT: u16 = 18080;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn weft_pod_serves_http_through_containerd_cri() -> Result<()> {
    run_scenario(Network::Weft)
}

/// The same scenario on Debian's reference bridge + host-local: if this
/// passes and the weft one fails, the fault is weft's, not the harness's.
#[test]
fn reference_bridge_pod_serves_http_through_containerd_cri() -> Result<()> {
    run_scenario(Network::Reference)
}

fn run_scenario(network: Network) -> Result<()> {
    let tools = require::check().context("requirements of the containerd CRI test")?;
    let reference = format!("localhost/weft-cri-test:{}", random_hex(8)?);
    let node = Node::start(&tools, network, &reference).context("start the containerd node")?;
    eprintln!(
        "[{}] containerd in netns {} with snapshotter {}, state in {}",
        network.name(),
        node.netns,
        node.snapshotter,
        node.root.display()
    );
    let result = scenario(&tools, &node, &reference);
    // Shown with --nocapture: what containerd did around CNI (DEL twice,
    // DEL without netns, errors).
    eprintln!("[{}] network log:\n{}", network.name(), node.network_log());
    if result.is_err() {
        eprintln!("{}", node.log_tails());
    }
    result
}

fn scenario(tools: &require::Tools, node: &Node, reference: &str) -> Result<()> {
    let network = node.network;
    let mut cri = Cri::connect(&node.socket())?;
    let runtime = cri.runtime_name()?;
    ensure!(runtime == "containerd", "CRI runtime is {runtime:?}");
    cri.wait_network_ready(READY_TIMEOUT)?;

    let archive = node.root.join("image.tar");
    image::write_busybox_archive(&tools.busybox, reference, &archive)?;
    node.import_image(&archive)?;
    cri.wait_image(reference, READY_TIMEOUT)?;

    // Run the pod and check the address the CNI ADD gave it.
    let sandbox = pod_config(node)?;
    let pod_id = cri.run_pod(&sandbox)?;
    let pod_ip = cri.pod_ip(&pod_id)?;
    eprintln!("[{}] pod {pod_id} has IP {pod_ip}", network.name());
    ensure!(
        cni::in_subnet(pod_ip),
        "pod IP {pod_ip} is outside {}",
        cni::subnet_string()
    );
    let gateway = bridge_address(tools, node)?;
    ensure!(gateway != pod_ip, "pod got the bridge's own address {pod_ip}");
    let held = cni::ipam_files_mentioning(&node.ipam_dir(), network, &pod_id)?;
    ensure!(
        !held.is_empty(),
        "IPAM state records no allocation for sandbox {pod_id}"
    );
    let veths = links_of_kind(tools, node, "veth")?;
    ensure!(!veths.is_empty(), "no host-side veth for the pod in the node netns");

    // The app: busybox httpd serving a token only this run knows.
    let token = format!("weft-cri-test {}", random_hex(16)?);
    let app = cri.create_and_start(&pod_id, httpd_container(reference, &token), &sandbox)?;
    cri::ensure_running(cri.container_state(&app)?)?;

    // From the node: the pod IP directly, then the hostPort through portmap
    // (OUTPUT DNAT on the node's own address).
    let body = get_when_up(node, SocketAddr::from((pod_ip, POD_PORT)))?;
    ensure!(body.trim() == token, "pod answered {body:?}, expected {token:?}");
    let body = get_when_up(node, SocketAddr::from((gateway, HOST_PORT)))?;
    ensure!(body.trim() == token, "hostPort answered {body:?}, expected {token:?}");
    eprintln!("[{}] HTTP through pod IP and hostPort: ok", network.name());

    // Delete the pod as kubelet does, then look for leftovers.
    cri.stop_and_remove_pod(&pod_id)?;
    ensure!(cri.pod_ids()?.is_empty(), "sandboxes left after RemovePodSandbox");
    ensure!(
        cri.container_ids()?.is_empty(),
        "containers left after RemovePodSandbox"
    );
    ensure_only_lo_and_bridge(tools, node)?;
    let held = cni::ipam_files_mentioning(&node.ipam_dir(), network, &pod_id)?;
    ensure!(held.is_empty(), "IPAM still holds an address for {pod_id}: {held:?}");
    let cache = cni::libcni_cache_files(&pod_id)?;
    ensure!(cache.is_empty(), "libcni cache left behind: {cache:?}");
    Ok(())
}

/// The sandbox as kubelet would describe it, with a hostPort so that the
/// chained portmap plugin is exercised on weft's result.
fn pod_config(node: &Node) -> Result<PodSandboxConfig> {
    let log_directory = node.pod_log_dir().join("web");
    fs::create_dir_all(&log_directory)?;
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: random_hex(32)?,
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        port_mappings: vec![PortMapping {
            protocol: Protocol::Tcp.into(),
            container_port: POD_PORT.into(),
            host_port: HOST_PORT.into(),
            host_ip: String::new(),
        }],
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: node.cgroup_parent(),
            ..Default::default()
        }),
        labels: HashMap::from([("app".into(), "web".into())]),
        ..Default::default()
    })
}

/// busybox httpd serving `token` as its index page; the token comes in
/// through the CRI's env, so the answer proves this very container runs.
fn httpd_container(reference: &str, token: &str) -> ContainerConfig {
    let script = format!(
        "b=/bin/busybox; $b mkdir -p /www && $b echo \"$WEFT_TOKEN\" > /www/index.html \
         && exec $b httpd -f -p {POD_PORT} -h /www"
    );
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "httpd".into(),
            attempt: 0,
        }),
        image: Some(cri::image_spec(reference)),
        command: vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script],
        envs: vec![KeyValue {
            key: "WEFT_TOKEN".into(),
            value: token.into(),
        }],
        log_path: "httpd.log".into(),
        ..Default::default()
    }
}

/// GET / from the node netns, retrying while the server starts.
fn get_when_up(node: &Node, addr: SocketAddr) -> Result<String> {
    cmd::poll(
        &format!("HTTP GET {addr} from the node"),
        HTTP_TIMEOUT,
        Duration::from_millis(250),
        || netns::http_get(&node.netns_path(), addr, Duration::from_secs(3)).map(Some),
    )
}

/// The node bridge's address in the pod subnet: the pods' gateway.
fn bridge_address(tools: &require::Tools, node: &Node) -> Result<Ipv4Addr> {
    let addrs = netns::ipv4_addresses(&tools.ip, &node.netns, BRIDGE)?;
    addrs
        .iter()
        .copied()
        .find(|a| cni::in_subnet(*a))
        .with_context(|| format!("bridge {BRIDGE} has no address in the pod subnet: {addrs:?}"))
}

fn links_of_kind(tools: &require::Tools, node: &Node, kind: &str) -> Result<Vec<Link>> {
    let links = netns::links(&tools.ip, &node.netns)?;
    Ok(links.into_iter().filter(|l| l.kind == kind).collect())
}

/// After the pod is gone the node netns holds `lo` and the bridge, nothing
/// else: no veth, no stray device.
fn ensure_only_lo_and_bridge(tools: &require::Tools, node: &Node) -> Result<()> {
    let links = netns::links(&tools.ip, &node.netns)?;
    let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    ensure!(
        names == ["lo", BRIDGE],
        "node netns should hold only lo and {BRIDGE} after the pod is removed, has {links:?}"
    );
    Ok(())
}
