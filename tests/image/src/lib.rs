//! Kubelet's part, for one pod template and one real container runtime
//! (podman): read a DaemonSet from a manifest file and turn each of its
//! containers into the `podman run` that gives the container what kubelet
//! would give it — command and args, env (downward API and ConfigMap
//! references resolved), hostPath and emptyDir volumes, securityContext, the
//! host network namespace — plus its probes, for the test to execute.
//!
//! Everything in the template this does not know how to translate is an
//! error, not a silent skip: a manifest change the runtime test cannot
//! honour fails the test instead of testing something else.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, SecurityContext, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The DaemonSet named `name` in a multi-document YAML manifest.
pub fn daemonset(manifest: &str, name: &str) -> Result<DaemonSet> {
    for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).context("parse manifest YAML")?;
        if value["kind"] == "DaemonSet" && value["metadata"]["name"] == name {
            return serde_json::from_value(value).with_context(|| format!("DaemonSet {name}"));
        }
    }
    bail!("no DaemonSet {name} in the manifest")
}

/// What the node provides: kubelet's side of the translation.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// `spec.nodeName` (the downward API's `NODE_NAME`).
    pub name: String,
    /// The node's network namespace (hostNetwork pods join it).
    pub netns: PathBuf,
    /// hostPath `path` → where that path is on this (lab) node. A hostPath
    /// missing here is an error.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// ConfigMaps of the pod's namespace: name → data.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Where emptyDir volumes are made (one directory per volume).
    pub empty_dirs: PathBuf,
    /// Env added after the template's, with why (a stand-in the test declares).
    pub extra_env: Vec<(String, String)>,
    /// Bind mounts added after the template's: (host, container path, read-only).
    pub extra_mounts: Vec<(PathBuf, String, bool)>,
    /// Runtime settings that are the node's, not the template's (e.g.
    /// `--ulimit`: containerd passes its own limits; podman's defaults can
    /// exceed what a sandboxed machine allows).
    pub runtime_args: Vec<String>,
}

impl Node {
    /// Where a path inside `container` is on the node, through its volume
    /// mounts (the runtime's view of a container path); `None` when no
    /// hostPath mount covers it.
    pub fn host_path_of(&self, spec: &PodSpec, container: &Container, path: &str) -> Option<PathBuf> {
        let mounts = container.volume_mounts.as_deref().unwrap_or_default();
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        mounts
            .iter()
            .filter_map(|m| {
                let rest = path.strip_prefix(m.mount_path.trim_end_matches('/'))?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                let hp = volumes.iter().find(|v| v.name == m.name)?.host_path.as_ref()?;
                let base = self.host_paths.get(&hp.path)?;
                Some((m.mount_path.len(), base.join(rest.trim_start_matches('/'))))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }
}

/// An HTTP probe, resolved to an address in the node's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub kind: &'static str,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub period_seconds: i32,
    pub failure_threshold: i32,
}

/// One container, ready to run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The template's container name.
    pub container: String,
    /// The podman container name.
    pub name: String,
    pub image: String,
    /// `podman` arguments: `run -d …`.
    pub args: Vec<String>,
    pub probes: Vec<HttpProbe>,
    /// `terminationGracePeriodSeconds` (podman's stop timeout).
    pub grace_seconds: i64,
    /// An init container: runs to completion, in order, before the others.
    pub init: bool,
}

/// Translate every container of the DaemonSet's pod template. `prefix`
/// names the podman containers (`PREFIX-CONTAINER`).
pub fn runs(ds: &DaemonSet, node: &Node, prefix: &str) -> Result<Vec<Run>> {
    let spec = ds
        .spec
        .template
        .spec
        .as_ref()
        .context("DaemonSet without a pod template spec")?;
    if spec.host_network != Some(true) {
        bail!("pod template is not hostNetwork: this translation only joins the node's namespace");
    }
    if spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        bail!("hostPID/hostIPC are not translated");
    }
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let inits = spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| (c, true));
    inits
        .chain(spec.containers.iter().map(|c| (c, false)))
        .map(|(c, init)| {
            let mut r = run(spec, c, node, prefix, grace).with_context(|| format!("container {}", c.name))?;
            r.init = init;
            Ok(r)
        })
        .collect()
}

fn run(spec: &PodSpec, c: &Container, node: &Node, prefix: &str, grace: i64) -> Result<Run> {
    let image = c.image.clone().context("no image")?;
    let name = format!("{prefix}-{}", c.name);
    let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    a.push(format!("--network=ns:{}", node.netns.display()));
    // Kubernetes starts each container of a pod in its own PID namespace
    // (shareProcessNamespace unset) and never pulls an IfNotPresent image
    // it has; the test loaded it.
    if spec.share_process_namespace == Some(true) {
        bail!("shareProcessNamespace is not translated");
    }
    match c.image_pull_policy.as_deref() {
        Some("IfNotPresent") | Some("Never") => a.push("--pull=never".into()),
        other => bail!("imagePullPolicy {other:?}: the test never pulls, set IfNotPresent"),
    }
    a.push(format!("--stop-timeout={grace}"));
    a.extend(node.runtime_args.iter().cloned());
    security(c.security_context.as_ref(), &mut a)?;
    for (k, v) in env(c, node)? {
        a.push(format!("--env={k}={v}"));
    }
    for (k, v) in &node.extra_env {
        a.push(format!("--env={k}={v}"));
    }
    for m in c.volume_mounts.as_deref().unwrap_or_default() {
        if m.mount_propagation.is_some() || m.sub_path.is_some() || m.sub_path_expr.is_some() {
            bail!("volumeMount {}: subPath/mountPropagation are not translated", m.name);
        }
        let vol = spec
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == m.name)
            .with_context(|| format!("volumeMount {} names no volume", m.name))?;
        let host = volume_source(vol, node)?;
        let ro = if m.read_only == Some(true) { ":ro" } else { "" };
        a.push(format!("--volume={}:{}{ro}", host.display(), m.mount_path));
    }
    for (host, path, ro) in &node.extra_mounts {
        a.push(format!(
            "--volume={}:{path}{}",
            host.display(),
            if *ro { ":ro" } else { "" }
        ));
    }
    // Kubernetes' command replaces the image's ENTRYPOINT and args its CMD;
    // weft's image has neither, so both come from the template.
    let command = c.command.clone().unwrap_or_default();
    let (entry, rest) = command
        .split_first()
        .context("no command (weft's image has no entrypoint)")?;
    a.push(format!("--entrypoint={entry}"));
    a.push(image.clone());
    a.extend(rest.iter().cloned());
    a.extend(c.args.clone().unwrap_or_default());
    let mut probes = Vec::new();
    for (kind, p) in [
        ("startup", &c.startup_probe),
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
    ] {
        if let Some(p) = p {
            probes.push(http_probe(kind, p, c)?);
        }
    }
    Ok(Run {
        container: c.name.clone(),
        name,
        image,
        args: a,
        probes,
        grace_seconds: grace,
        init: false,
    })
}

fn security(sc: Option<&SecurityContext>, a: &mut Vec<String>) -> Result<()> {
    let Some(sc) = sc else { return Ok(()) };
    if sc.privileged == Some(true) {
        a.push("--privileged".into());
    }
    if let Some(caps) = &sc.capabilities {
        for d in caps.drop.as_deref().unwrap_or_default() {
            a.push(format!("--cap-drop={d}"));
        }
        for add in caps.add.as_deref().unwrap_or_default() {
            a.push(format!("--cap-add={add}"));
        }
    }
    if let Some(uid) = sc.run_as_user {
        a.push(format!("--user={uid}"));
    }
    if sc.allow_privilege_escalation == Some(false) {
        a.push("--security-opt=no-new-privileges".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts no tmpfs anywhere on a read-only root; podman
        // would put one on /run, /tmp and /var/tmp unless told not to.
        a.push("--read-only".into());
        a.push("--read-only-tmpfs=false".into());
    }
    if sc.run_as_group.is_some() || sc.se_linux_options.is_some() || sc.proc_mount.is_some() {
        bail!("securityContext runAsGroup/seLinuxOptions/procMount are not translated");
    }
    Ok(())
}

/// The container's env as kubelet resolves it: values, `spec.nodeName`,
/// ConfigMap keys (an optional reference to a missing key sets nothing).
fn env(c: &Container, node: &Node) -> Result<Vec<(String, String)>> {
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        bail!("envFrom is not translated");
    }
    let mut out = Vec::new();
    for e in c.env.as_deref().unwrap_or_default() {
        if let Some(v) = &e.value {
            out.push((e.name.clone(), v.clone()));
            continue;
        }
        let Some(from) = &e.value_from else {
            out.push((e.name.clone(), String::new()));
            continue;
        };
        if let Some(f) = &from.field_ref {
            match f.field_path.as_str() {
                "spec.nodeName" => out.push((e.name.clone(), node.name.clone())),
                other => bail!("env {}: fieldRef {other} is not translated", e.name),
            }
        } else if let Some(r) = &from.config_map_key_ref {
            let value = node.config_maps.get(&r.name).and_then(|m| m.get(&r.key));
            match (value, r.optional) {
                (Some(v), _) => out.push((e.name.clone(), v.clone())),
                (None, Some(true)) => {}
                (None, _) => bail!(
                    "env {}: ConfigMap {} has no key {} (not optional)",
                    e.name,
                    r.name,
                    r.key
                ),
            }
        } else {
            bail!("env {}: only fieldRef and configMapKeyRef are translated", e.name);
        }
    }
    Ok(out)
}

/// The node directory behind a volume (made as kubelet would).
fn volume_source(v: &Volume, node: &Node) -> Result<PathBuf> {
    if let Some(hp) = &v.host_path {
        let at = node
            .host_paths
            .get(&hp.path)
            .with_context(|| format!("hostPath {} of volume {} is not mapped onto the node", hp.path, v.name))?;
        match hp.type_.as_deref() {
            Some("DirectoryOrCreate") => {
                std::fs::create_dir_all(at).with_context(|| format!("create {}", at.display()))?;
            }
            Some("Directory") if !at.is_dir() => bail!("hostPath {}: {} is no directory", hp.path, at.display()),
            Some("CharDevice") => {
                use std::os::unix::fs::FileTypeExt;
                let meta = std::fs::metadata(at).with_context(|| format!("hostPath {}", at.display()))?;
                if !meta.file_type().is_char_device() {
                    bail!("hostPath {}: {} is no character device", hp.path, at.display());
                }
            }
            Some("") | None | Some("Directory") => {}
            Some(other) => bail!("hostPath type {other} is not translated"),
        }
        return Ok(at.clone());
    }
    if let Some(ed) = &v.empty_dir {
        if ed.medium.as_deref().is_some_and(|m| !m.is_empty()) {
            bail!("emptyDir medium {:?} is not translated", ed.medium);
        }
        let at = node.empty_dirs.join(&v.name);
        std::fs::create_dir_all(&at).with_context(|| format!("create {}", at.display()))?;
        return Ok(at);
    }
    bail!("volume {}: only hostPath and emptyDir are translated", v.name)
}

fn http_probe(kind: &'static str, p: &Probe, c: &Container) -> Result<HttpProbe> {
    let get = p
        .http_get
        .as_ref()
        .with_context(|| format!("{kind} probe: only httpGet is translated"))?;
    let port = match &get.port {
        IntOrString::Int(n) => u16::try_from(*n).context("probe port")?,
        IntOrString::String(name) => c
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| u16::try_from(p.container_port))
            .with_context(|| format!("{kind} probe: no container port named {name}"))?
            .context("port number")?,
    };
    if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        bail!("{kind} probe: scheme {:?} is not translated", get.scheme);
    }
    Ok(HttpProbe {
        kind,
        // kubelet probes the pod IP when no host is given: the node's for hostNetwork.
        host: get.host.clone().context("probe without host: set it (hostNetwork)")?,
        port,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
        period_seconds: p.period_seconds.unwrap_or(10),
        failure_threshold: p.failure_threshold.unwrap_or(3),
    })
}

/// Rewrite every string in `v` that is a container path under a hostPath
/// mount of `container` to where it is on the node (the conflist the agent
/// wrote names container paths; on a real node they are the same paths).
pub fn relocate(v: &mut serde_json::Value, spec: &PodSpec, container: &Container, node: &Node) {
    match v {
        serde_json::Value::String(s) if s.starts_with('/') => {
            if let Some(p) = node.host_path_of(spec, container, s) {
                *s = p.display().to_string();
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| relocate(x, spec, container, node)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| relocate(x, spec, container, node)),
        _ => {}
    }
}

/// A generated manifest of the repository (`weft.yaml`, `weft-cleanup.yaml`).
pub fn manifest_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests").join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(tag: &str) -> Node {
        Node {
            name: "node-3".into(),
            netns: "/run/netns/x".into(),
            host_paths: [
                ("/opt/cni/bin", "/lab/n3/bin"),
                ("/etc/cni/net.d", "/lab/n3/net.d"),
                ("/var/lib/weft", "/lab/n3/state"),
                ("/run/weft", "/lab/n3/run"),
                ("/var/log/weft", "/lab/n3/log"),
                ("/dev/net/tun", "/dev/net/tun"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), PathBuf::from(b)))
            .collect(),
            empty_dirs: std::env::temp_dir().join(format!("weft-image-test-{}-{tag}", std::process::id())),
            ..Node::default()
        }
    }

    fn weft_ds() -> DaemonSet {
        let text = std::fs::read_to_string(manifest_path("weft.yaml")).unwrap();
        daemonset(&text, "weft-agent").unwrap()
    }

    #[test]
    fn the_manifest_translates_to_two_unprivileged_containers() {
        let ds = weft_ds();
        let mut n = node("agent");
        // Volumes are created; point the directories somewhere harmless.
        for (_, p) in n.host_paths.iter_mut().filter(|(k, _)| k.as_str() != "/dev/net/tun") {
            *p = n.empty_dirs.join(p.strip_prefix("/").unwrap());
        }
        n.config_maps.insert(
            "weft-config".into(),
            [("KUBERNETES_SERVICE_HOST".to_string(), "10.0.0.1".to_string())].into(),
        );
        let runs = runs(&ds, &n, "t").unwrap();
        assert_eq!(
            runs.iter().map(|r| r.container.as_str()).collect::<Vec<_>>(),
            ["weft-agent", "wireguard"]
        );
        let agent = &runs[0];
        let has = |a: &str| agent.args.iter().any(|x| x == a);
        assert!(has("--env=NODE_NAME=node-3"), "{:?}", agent.args);
        assert!(has("--env=KUBERNETES_SERVICE_HOST=10.0.0.1"));
        // Optional key missing from the ConfigMap: not set at all.
        assert!(!agent
            .args
            .iter()
            .any(|x| x.starts_with("--env=KUBERNETES_SERVICE_PORT")));
        assert!(has("--cap-drop=ALL") && has("--cap-add=NET_ADMIN") && !has("--privileged"));
        assert!(has("--read-only") && has("--security-opt=no-new-privileges"));
        assert!(agent
            .args
            .iter()
            .any(|x| x.starts_with("--volume=") && x.ends_with(":/etc/cni/net.d")));
        assert!(!agent.image.ends_with(":latest"), "{}", agent.image);
        assert_eq!(agent.probes.len(), 2);
        assert!(agent.probes.iter().all(|p| p.port == 10256 && p.host == "127.0.0.1"));
        let sidecar = &runs[1];
        assert!(sidecar.args.iter().any(|x| x == "--volume=/dev/net/tun:/dev/net/tun"));
        std::fs::remove_dir_all(&n.empty_dirs).unwrap();
    }

    #[test]
    fn the_cleanup_daemonset_runs_its_init_container_first() {
        let text = std::fs::read_to_string(manifest_path("weft-cleanup.yaml")).unwrap();
        let ds = daemonset(&text, "weft-cleanup").unwrap();
        let mut n = node("cleanup");
        for (_, p) in n.host_paths.iter_mut().filter(|(k, _)| k.as_str() != "/dev/net/tun") {
            *p = n.empty_dirs.join(p.strip_prefix("/").unwrap());
        }
        let runs = runs(&ds, &n, "t").unwrap();
        assert_eq!(
            runs.iter().map(|r| (r.container.as_str(), r.init)).collect::<Vec<_>>(),
            [("cleanup", true), ("done", false)]
        );
        assert_eq!(runs[0].args.last().map(String::as_str), Some("cleanup"));
        std::fs::remove_dir_all(&n.empty_dirs).unwrap();
    }

    #[test]
    fn what_it_cannot_translate_is_an_error() {
        let mut ds = weft_ds();
        let spec = ds.spec.template.spec.as_mut().unwrap();
        spec.volumes.as_mut().unwrap()[1].host_path.as_mut().unwrap().path = "/somewhere/else".into();
        let e = runs(&ds, &node("bad"), "t").unwrap_err();
        assert!(format!("{e:#}").contains("hostPath /somewhere/else"), "{e:#}");

        let mut ds = weft_ds();
        let spec = ds.spec.template.spec.as_mut().unwrap();
        spec.host_network = Some(false);
        assert!(format!("{:#}", runs(&ds, &node("bad"), "t").unwrap_err()).contains("hostNetwork"));
    }

    #[test]
    fn container_paths_relocate_through_host_path_mounts() {
        let ds = weft_ds();
        let spec = ds.spec.template.spec.as_ref().unwrap();
        let agent = &spec.containers[0];
        let n = node("relocate");
        let mut v = serde_json::json!({
            "dataDir": "/var/lib/weft/ipam",
            "logFile": "/var/log/weft/cni.log",
            "readinessFile": "/run/weft/ready",
            "other": ["/usr/lib/x", "/run/weftx"],
        });
        relocate(&mut v, spec, agent, &n);
        assert_eq!(v["dataDir"], "/lab/n3/state/ipam");
        assert_eq!(v["logFile"], "/lab/n3/log/cni.log");
        assert_eq!(v["readinessFile"], "/lab/n3/run/ready");
        assert_eq!(v["other"], serde_json::json!(["/usr/lib/x", "/run/weftx"]));
    }
}
