//! A blocking CRI (v1) client over containerd's unix socket: the calls
//! kubelet makes to run a pod, one method per step of the test.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxStatus, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::cmd;

/// Upper bound of one CRI call (RunPodSandbox includes the CNI ADD).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build tokio runtime")?;
        let socket = socket.to_owned();
        // gRPC needs an http URI; the connector ignores it and dials the socket.
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(10))
            .timeout(CALL_TIMEOUT);
        let channel = rt
            .block_on(endpoint.connect_with_connector(service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
            })))
            .context("connect to containerd's CRI socket")?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The runtime's name, e.g. `containerd`.
    pub fn runtime_name(&mut self) -> Result<String> {
        let req = VersionRequest::default();
        let resp = self.rt.block_on(self.runtime.version(req)).context("CRI Version")?;
        Ok(resp.into_inner().runtime_name)
    }

    /// Wait until the runtime reports `NetworkReady`: containerd has loaded
    /// a CNI config from its conf_dir.
    pub fn wait_network_ready(&mut self, timeout: Duration) -> Result<()> {
        cmd::poll("CRI NetworkReady", timeout, Duration::from_millis(200), || {
            let resp = self
                .rt
                .block_on(self.runtime.status(StatusRequest { verbose: false }))
                .context("CRI Status")?;
            let status = resp.into_inner().status.context("Status without status")?;
            let network = status.conditions.iter().find(|c| c.r#type == "NetworkReady");
            match network {
                Some(c) if c.status => Ok(Some(())),
                Some(c) => anyhow::bail!("NetworkReady=false: {} {}", c.reason, c.message),
                None => anyhow::bail!("no NetworkReady condition in {:?}", status.conditions),
            }
        })
    }

    /// Wait until the CRI's image store knows `reference` (it learns about
    /// images imported with ctr from containerd's events).
    pub fn wait_image(&mut self, reference: &str, timeout: Duration) -> Result<()> {
        cmd::poll("CRI ImageStatus", timeout, Duration::from_millis(200), || {
            let req = ImageStatusRequest {
                image: Some(image_spec(reference)),
                verbose: false,
            };
            let resp = self
                .rt
                .block_on(self.images.image_status(req))
                .context("CRI ImageStatus")?;
            Ok(resp.into_inner().image.map(drop))
        })
    }

    /// RunPodSandbox: returns the sandbox ID.
    pub fn run_pod(&mut self, config: &PodSandboxConfig) -> Result<String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let resp = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(req))
            .context("CRI RunPodSandbox")?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    pub fn pod_status(&mut self, id: &str) -> Result<PodSandboxStatus> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        let resp = self
            .rt
            .block_on(self.runtime.pod_sandbox_status(req))
            .context("CRI PodSandboxStatus")?;
        resp.into_inner().status.context("PodSandboxStatus without status")
    }

    /// The pod's IPv4 address as the runtime reports it (from the CNI result).
    pub fn pod_ip(&mut self, id: &str) -> Result<Ipv4Addr> {
        let status = self.pod_status(id)?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .with_context(|| format!("pod {id} has no IPv4 address (network.ip = {ip:?})"))
    }

    /// CreateContainer + StartContainer: returns the container ID.
    pub fn create_and_start(
        &mut self,
        pod_id: &str,
        config: ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let id = self
            .rt
            .block_on(self.runtime.create_container(req))
            .context("CRI CreateContainer")?
            .into_inner()
            .container_id;
        let req = StartContainerRequest {
            container_id: id.clone(),
        };
        self.rt
            .block_on(self.runtime.start_container(req))
            .context("CRI StartContainer")?;
        Ok(id)
    }

    pub fn container_state(&mut self, id: &str) -> Result<ContainerState> {
        let req = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let resp = self
            .rt
            .block_on(self.runtime.container_status(req))
            .context("CRI ContainerStatus")?;
        let status = resp.into_inner().status.context("ContainerStatus without status")?;
        ContainerState::try_from(status.state).context("unknown container state")
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is
    /// deleted (containerd runs the CNI DEL in the stop, and again in the
    /// remove if the stop's DEL did not complete).
    pub fn stop_and_remove_pod(&mut self, id: &str) -> Result<()> {
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(stop))
            .context("CRI StopPodSandbox")?;
        let remove = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(remove))
            .context("CRI RemovePodSandbox")?;
        Ok(())
    }

    pub fn pod_ids(&mut self) -> Result<Vec<String>> {
        let req = ListPodSandboxRequest { filter: None };
        let resp = self
            .rt
            .block_on(self.runtime.list_pod_sandbox(req))
            .context("CRI ListPodSandbox")?;
        Ok(resp.into_inner().items.into_iter().map(|p| p.id).collect())
    }

    pub fn container_ids(&mut self) -> Result<Vec<String>> {
        let req = ListContainersRequest { filter: None };
        let resp = self
            .rt
            .block_on(self.runtime.list_containers(req))
            .context("CRI ListContainers")?;
        Ok(resp.into_inner().containers.into_iter().map(|c| c.id).collect())
    }
}

pub fn image_spec(reference: &str) -> ImageSpec {
    ImageSpec {
        image: reference.to_owned(),
        ..Default::default()
    }
}

/// Fail unless `state` is RUNNING.
pub fn ensure_running(state: ContainerState) -> Result<()> {
    ensure!(
        state == ContainerState::ContainerRunning,
        "container is {state:?}, not running"
    );
    Ok(())
}
