//! `weft-lab`: a multi-node weft lab in network namespaces, with a Kubernetes
//! API emulator. See `tests/README-lab.md`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use weft_tests::apiserver::{self, EmulatorConfig, ListenSpec};
use weft_tests::lab::{self, Endpoint, Lab, LabConfig, PodSpec};
use weft_tests::{demo, traffic};

#[derive(Parser)]
#[command(name = "weft-lab", about = "A multi-node weft lab in network namespaces")]
struct Cli {
    /// Lab name (part of every namespace name) [default: "demo" for demo, else "lab"].
    #[arg(long = "name", id = "lab_name", global = true, env = "WEFT_LAB_NAME")]
    lab: Option<String>,
    /// Directory holding the labs' state.
    #[arg(long, global = true, env = "WEFT_LAB_ROOT", default_value = lab::DEFAULT_ROOT)]
    root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the underlay, the nodes, the API emulator and the Node objects.
    Up(UpArgs),
    /// Remove everything the lab made (idempotent, also after a crash).
    Down,
    /// Show nodes, pods and how to reach the API emulator.
    Status,
    /// Add or delete pods.
    #[command(subcommand)]
    Pod(PodCmd),
    /// Add or delete nodes, or stop, start and kill their agents.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Stop or (re)start the lab's API emulator (an API server outage or restart).
    #[command(subcommand)]
    Api(ApiCmd),
    /// Run a command inside a pod's network namespace.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run a command inside a node's network namespace.
    ExecNode {
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Up with 3 nodes, pods on every node, a connectivity matrix, down.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Leave the lab up afterwards.
        #[arg(long)]
        keep: bool,
        #[arg(long, env = "WEFT_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// No weft-agent on the nodes: the lab writes each node's conflist,
        /// and only same-node pairs are expected to connect.
        #[arg(long)]
        no_agent: bool,
    },
    /// Run the Kubernetes API emulator (plain HTTP, no auth).
    Apiserver {
        /// IP:PORT or NETNS@IP:PORT (bound inside that named netns); repeatable.
        #[arg(long, required = true)]
        listen: Vec<ListenSpec>,
        /// Directory for listening.json (the bound addresses) and the saved
        /// objects: a restart on the same directory keeps objects and versions.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Changes kept for watches to resume from; older versions get 410.
        #[arg(long, default_value_t = 10_000)]
        history: usize,
        #[arg(long)]
        log_requests: bool,
    },
    /// The agent supervisor `up` starts: restarts dead agents with a back-off.
    #[command(hide = true)]
    Supervise,
    /// The in-pod server: HTTP and UDP echo answering with the peer address.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        server_name: String,
        #[arg(long)]
        http: Option<u16>,
        #[arg(long)]
        udp: Option<u16>,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

#[derive(Args)]
struct UpArgs {
    #[arg(long, default_value_t = 2)]
    nodes: u8,
    /// Directory with the `weft`, `weft-ipam` and `weft-agent` binaries (default: next to weft-lab).
    #[arg(long, env = "WEFT_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// No weft-agent on the nodes (the lab writes each node's conflist).
    #[arg(long)]
    no_agent: bool,
    /// Do not restart an agent that died (by default a supervisor does, as
    /// kubelet restarts a crashed container).
    #[arg(long)]
    no_restart: bool,
    /// Nodes (node-N) that get no agent from the lab, for one run by hand; repeatable.
    #[arg(long, value_delimiter = ',')]
    no_agent_on: Vec<String>,
    /// An extra flag for every agent, e.g. --agent-arg=--resync-seconds=2; repeatable.
    #[arg(long, allow_hyphen_values = true)]
    agent_arg: Vec<String>,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add node N (or node-N; default: the lowest free index): netns on the
    /// switch, Node object, directories, and its agent, waited for until ready.
    Add { node: Option<String> },
    /// Stop the node's agent, delete its pods, Node object, netns and directories.
    Del { node: String },
    /// Stop the node's agent on purpose (SIGTERM); the supervisor leaves it stopped.
    Stop { node: String },
    /// Start the node's agent (again) with the lab's flags.
    Start { node: String },
    /// SIGKILL the node's agent, as a crash; the supervisor restarts it.
    Kill { node: String },
}

#[derive(Subcommand)]
enum ApiCmd {
    /// Stop the emulator.
    Stop,
    /// Start it again on the same addresses, with the objects it saved.
    Start {
        /// Start with no objects and versions from 1 again (a lost etcd).
        #[arg(long)]
        empty: bool,
    },
    /// Stop, then start.
    Restart {
        #[arg(long)]
        empty: bool,
    },
}

#[derive(Subcommand)]
enum PodCmd {
    /// Create a pod netns, run CNI ADD on NODE, create the Pod object.
    Add {
        node: String,
        name: String,
        /// Labels, k=v[,k=v…]; repeatable.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Serve HTTP on this port inside the pod.
        #[arg(long)]
        http: Option<u16>,
        /// Serve UDP echo on this port inside the pod.
        #[arg(long)]
        udp: Option<u16>,
    },
    /// Run CNI DEL, delete the netns and the Pod object.
    Del { name: String },
}

impl Cli {
    fn lab_name(&self) -> String {
        let default = if matches!(self.command, Cmd::Demo { .. }) {
            "demo"
        } else {
            "lab"
        };
        self.lab.clone().unwrap_or_else(|| default.to_string())
    }
}

fn config(cli: &Cli, nodes: u8, bin_dir: Option<PathBuf>, no_agent: bool) -> Result<LabConfig> {
    let exe = std::env::current_exe().context("find the weft-lab binary")?;
    let mut c = LabConfig::new(&cli.lab_name(), nodes, exe);
    c.root = cli.root.clone();
    c.cni_bin_dir = bin_dir;
    c.agents = !no_agent;
    Ok(c)
}

fn up_config(cli: &Cli, a: &UpArgs) -> Result<LabConfig> {
    let mut c = config(cli, a.nodes, a.bin_dir.clone(), a.no_agent)?;
    c.restart_agents = !a.no_restart;
    c.no_agent_on = a.no_agent_on.clone();
    c.agent_args = a.agent_arg.clone();
    Ok(c)
}

fn run_node(lab: &Lab, cmd: &NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Add { node } => {
            let index = match node {
                Some(n) => lab::parse_node_index(n)?,
                None => lab.next_node_index()?,
            };
            let n = lab.add_node(index)?;
            println!(
                "node {} added: {} {} pods {} netns {}",
                n.name,
                n.internal_ipv4,
                n.internal_ipv6,
                n.pod_cidrs.join(","),
                n.netns
            );
        }
        NodeCmd::Del { node } => {
            lab.del_node(node)?;
            println!("node {node} deleted");
        }
        NodeCmd::Stop { node } => {
            lab.stop_agent(node)?;
            println!("agent on {node} stopped");
        }
        NodeCmd::Start { node } => {
            let pid = lab.start_agent(node)?;
            println!("agent on {node} started as pid {pid}");
        }
        NodeCmd::Kill { node } => {
            lab.kill_agent(node)?;
            println!("agent on {node} killed");
        }
    }
    Ok(())
}

fn run_api(lab: &Lab, cmd: &ApiCmd) -> Result<()> {
    match cmd {
        ApiCmd::Stop => lab.stop_apiserver()?,
        ApiCmd::Start { empty } => lab.start_apiserver(*empty)?,
        ApiCmd::Restart { empty } => lab.restart_apiserver(*empty)?,
    }
    println!(
        "API emulator: {}",
        if lab.state()?.live_proc("apiserver").is_some() {
            "running"
        } else {
            "stopped"
        }
    );
    Ok(())
}

fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label {kv:?}: want k=v"))
        })
        .collect()
}

fn print_status(lab: &Lab) -> Result<()> {
    let st = lab.state()?;
    let api = st.api.as_ref().context("lab has no emulator")?;
    println!("lab {} in {}", st.name, lab.dir.display());
    println!(
        "API emulator (plain HTTP): {} from the host, {} from nodes",
        api.host_url, api.node_url
    );
    println!("kubectl: KUBECONFIG={} kubectl get nodes", lab.kubeconfig().display());
    for n in &st.nodes {
        let agent = match (n.lab_agent, st.live_proc(&n.agent_role())) {
            (false, _) => "none from the lab".to_string(),
            (true, Some(p)) => format!("pid {} restarts {}", p.pid, n.agent_restarts),
            (true, None) if n.agent_stopped => "stopped".to_string(),
            (true, None) => format!("not running, restarts {}", n.agent_restarts),
        };
        println!(
            "node {:<8} {} {} pods {} netns {} agent {agent}",
            n.name,
            n.internal_ipv4,
            n.internal_ipv6,
            n.pod_cidrs.join(","),
            n.netns
        );
    }
    for p in &st.pods {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        println!("pod  {:<8} on {} {} netns {}", p.name, p.node, ips.join(" "), p.netns);
    }
    Ok(())
}

/// Run a command in an endpoint's namespace with our stdio; its exit code is ours.
fn exec(lab: &Lab, who: &Endpoint, cmd: &[String]) -> Result<ExitCode> {
    let (program, args) = cmd.split_first().context("no command")?;
    let status = lab
        .command(who, program, args)?
        .status()
        .with_context(|| format!("run {program} in {who}"))?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

fn run_demo(cli: &Cli, nodes: u8, keep: bool, bin_dir: Option<PathBuf>, no_agent: bool) -> Result<ExitCode> {
    let lab = Lab::up(&config(cli, nodes, bin_dir, no_agent)?)?;
    println!(
        "lab {} is up: {nodes} nodes, API emulator at {}",
        lab.name,
        lab.api_url()?
    );
    let result = demo::run_matrix(&lab, nodes);
    if keep {
        println!("lab kept; remove it with: weft-lab down --name {}", lab.name);
    } else {
        lab.down().context("tear the demo lab down")?;
        println!("lab {} is down", lab.name);
    }
    Ok(if result? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let name = cli.lab_name();
    let open = || Lab::open(&cli.root, &name);
    match &cli.command {
        Cmd::Up(a) => {
            let lab = Lab::up(&up_config(&cli, a)?)?;
            print_status(&lab)?;
        }
        Cmd::Node(cmd) => {
            lab::check_root()?;
            run_node(&open()?, cmd)?;
        }
        Cmd::Api(cmd) => run_api(&open()?, cmd)?,
        Cmd::Supervise => lab::supervisor::run(&cli.root, &name)?,
        Cmd::Down => {
            lab::check_root()?;
            lab::down(&cli.root, &name)?;
            println!("lab {name} is down");
        }
        Cmd::Status => print_status(&open()?)?,
        Cmd::Pod(PodCmd::Add {
            node,
            name,
            labels,
            namespace,
            http,
            udp,
        }) => {
            let spec = PodSpec {
                node: node.clone(),
                name: name.clone(),
                namespace: namespace.clone(),
                labels: parse_labels(labels)?,
                http: *http,
                udp: *udp,
            };
            let pod = open()?.add_pod(&spec)?;
            let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
            println!("pod {} on {}: {}", pod.name, pod.node, ips.join(" "));
        }
        Cmd::Pod(PodCmd::Del { name }) => {
            open()?.del_pod(name)?;
            println!("pod {name} deleted");
        }
        Cmd::Exec { pod, cmd } => return exec(&open()?, &Endpoint::Pod(pod.clone()), cmd),
        Cmd::ExecNode { node, cmd } => return exec(&open()?, &Endpoint::Node(node.clone()), cmd),
        Cmd::Demo {
            nodes,
            keep,
            bin_dir,
            no_agent,
        } => return run_demo(&cli, *nodes, *keep, bin_dir.clone(), *no_agent),
        Cmd::Apiserver {
            listen,
            state,
            history,
            log_requests,
        } => {
            let config = EmulatorConfig {
                history_limit: *history,
                log_requests: *log_requests,
            };
            apiserver::run(listen, state.as_deref(), config)?;
        }
        Cmd::Serve {
            server_name,
            http,
            udp,
            ready_file,
        } => {
            traffic::serve(server_name, *http, *udp, ready_file.as_deref())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}
