//! The lab's node and agent control, as root, with real agents: a killed
//! agent is restarted with a back-off (kubelet's part), a stopped one is
//! not, nodes are added and deleted through the CLI, a node can be left
//! without an agent for a test to run one there, and the API emulator
//! restarts on the same address with its objects.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lab_bin, up, up_with, wait_for};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::ResourceExt;
use weft_tests::lab::{netns, objects, Endpoint, Lab, PodSpec};

const WAIT: Duration = Duration::from_secs(30);

fn node_names(lab: &Lab) -> Vec<String> {
    let url = lab.api_url().unwrap();
    objects::with_client(&url, |client| async move {
        let nodes: Api<Node> = Api::all(client);
        Ok(nodes
            .list(&Default::default())
            .await?
            .items
            .iter()
            .map(|n| n.name_any())
            .collect())
    })
    .unwrap()
}

fn get_node(lab: &Lab, name: &str) -> Node {
    let url = lab.api_url().unwrap();
    let name = name.to_string();
    objects::with_client(
        &url,
        |client| async move { Ok(Api::<Node>::all(client).get(&name).await?) },
    )
    .unwrap()
}

/// `weft-lab --root R --name N ARGS…`: its stdout, panicking on failure.
fn cli(lab: &Lab, args: &[&str]) -> String {
    let out = cli_output(lab, args);
    assert!(
        out.status.success(),
        "weft-lab {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_output(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new(lab_bin())
        .arg("--root")
        .arg(lab.dir.parent().unwrap())
        .args(["--name", &lab.name])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn healthy(lab: &Lab, node: &str) -> bool {
    lab.healthz(node).is_ok_and(|(code, _)| code == 200)
}

#[test]
fn a_killed_agent_is_restarted_with_a_back_off_and_a_stopped_one_is_not() {
    let guard = up("restart-", 2);
    let lab = &guard.0;
    let st = lab.state().unwrap();
    assert!(
        st.procs.iter().any(|p| p.role == "supervisor" && p.alive()),
        "up starts the supervisor: {:?}",
        st.procs
    );
    let pid1 = lab.agent_pid("node-1").unwrap().expect("node-1's agent runs");
    assert!(healthy(lab, "node-1"));
    let starts = |lab: &Lab| lab.agent_log("node-1").unwrap().matches("weft-agent starting").count();
    assert_eq!(starts(lab), 1);

    // A crash: gone at once, back after the first back-off (1 s), same command.
    let killed = Instant::now();
    lab.kill_agent("node-1").unwrap();
    assert_eq!(lab.agent_pid("node-1").unwrap(), None, "SIGKILL waited for");
    let pid2 = wait_for("node-1's agent to be restarted", WAIT, || {
        lab.agent_pid("node-1").unwrap().filter(|p| *p != pid1)
    });
    let first = killed.elapsed();
    assert!(
        first >= Duration::from_millis(900),
        "restarted after {first:?}, before its back-off"
    );
    assert_eq!(lab.agent_restarts("node-1").unwrap(), 1);
    wait_for("the restarted agent's healthz", WAIT, || {
        healthy(lab, "node-1").then_some(())
    });
    lab.wait_peers("node-1", 1).unwrap();
    assert_eq!(starts(lab), 2, "the log is appended to across restarts");
    let cmd = lab.agent_command("node-1").unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid2}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(
        args[0],
        cmd.program.display().to_string(),
        "ip netns exec became the agent"
    );
    assert_eq!(args[1..], cmd.args[..], "restarted with the same flags");

    // A second crash soon after: the back-off doubles (2 s).
    let killed = Instant::now();
    lab.kill_agent("node-1").unwrap();
    wait_for("node-1's agent to be restarted again", WAIT, || {
        lab.agent_pid("node-1").unwrap().filter(|p| *p != pid2)
    });
    let second = killed.elapsed();
    assert!(second >= Duration::from_millis(1900), "second restart after {second:?}");
    assert_eq!(lab.agent_restarts("node-1").unwrap(), 2);

    // Stopped on purpose: the supervisor leaves it.
    assert!(cli(lab, &["node", "stop", "node-2"]).contains("agent on node-2 stopped"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.agent_pid("node-2").unwrap(), None, "a stopped agent stays stopped");
    assert_eq!(lab.agent_restarts("node-2").unwrap(), 0);
    let status = cli(lab, &["status"]);
    assert!(
        status.contains("agent stopped") && status.contains("restarts 2"),
        "{status}"
    );
    assert!(lab.kill_agent("node-2").is_err(), "nothing to kill");
    let pid = lab.start_agent("node-2").unwrap();
    assert_eq!(lab.agent_pid("node-2").unwrap(), Some(pid));
    assert!(lab.start_agent("node-2").is_err(), "one agent per node");
    lab.wait_agent_ready("node-2").unwrap();
    wait_for("node-2's healthz", WAIT, || healthy(lab, "node-2").then_some(()));
    let m = lab.metrics("node-2").unwrap();
    assert!(m.contains("weft_agent_wireguard_peers"), "{m}");
    lab.down().unwrap();
}

#[test]
fn without_restarts_a_killed_agent_stays_dead() {
    let guard = up_with("norestart-", 1, |c| c.restart_agents = false);
    let lab = &guard.0;
    let st = lab.state().unwrap();
    assert!(!st.procs.iter().any(|p| p.role == "supervisor"), "{:?}", st.procs);
    lab.kill_agent("node-1").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.agent_pid("node-1").unwrap(), None);
    assert!(lab.healthz("node-1").is_err(), "nothing serves healthz");
    lab.start_agent("node-1").unwrap();
    lab.wait_agent_ready("node-1").unwrap();
    wait_for("node-1's healthz", WAIT, || healthy(lab, "node-1").then_some(()));
    lab.down().unwrap();
}

#[test]
fn nodes_are_added_and_deleted_through_the_cli() {
    let guard = up("nodes-", 2);
    let lab = &guard.0;
    let out = cli(lab, &["node", "add"]);
    assert!(out.contains("node node-3 added: 172.30.0.13"), "{out}");
    let n3 = lab.state().unwrap().node("node-3").cloned().expect("node-3 recorded");
    assert_eq!(n3.pod_cidrs, ["10.244.3.0/24", "fd00:10:244:3::/64"]);
    assert!(netns::path(&n3.netns).exists());
    assert!(lab.agent_pid("node-3").unwrap().is_some());
    assert_eq!(node_names(lab), ["node-1", "node-2", "node-3"]);
    let obj = get_node(lab, "node-3");
    assert_eq!(obj.spec.unwrap().pod_cidrs.unwrap(), n3.pod_cidrs);
    for n in ["node-1", "node-2", "node-3"] {
        lab.wait_peers(n, 2).unwrap();
    }
    // The new node is on the underlay and in the mesh: pod to pod across nodes.
    lab.add_pod(&PodSpec::new("node-3", "c").serve(Some(8080), None))
        .unwrap();
    lab.add_pod(&PodSpec::new("node-1", "a")).unwrap();
    let to = lab.pod_addr("c", false, 8080).unwrap();
    let reply = weft_tests::traffic::retry(WAIT, || lab.http_get(&Endpoint::Pod("a".into()), to)).unwrap();
    assert_eq!(reply.server, "c");
    assert_eq!(Some(reply.peer.ip()), lab.state().unwrap().pod("a").unwrap().ip(false));

    let out = cli_output(lab, &["node", "add", "node-3"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
    let out = cli_output(lab, &["node", "add", "node-99"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid node"), "{out:?}");

    // Delete: agent, its userspace WireGuard, pods, Node object, netns, dirs.
    let id = netns::id(&n3.netns).unwrap();
    assert!(netns::pids_in(&[id]).len() >= 2, "agent and weft-wg run in node-3");
    let out = cli(lab, &["node", "del", "node-3"]);
    assert!(out.contains("node node-3 deleted"), "{out}");
    assert!(netns::pids_in(&[id]).is_empty(), "processes left in node-3's netns");
    assert!(!netns::path(&n3.netns).exists());
    assert!(!n3.dir.exists(), "{} left", n3.dir.display());
    let st = lab.state().unwrap();
    assert!(st.node("node-3").is_none() && st.pod("c").is_none());
    assert!(!st.netns.contains(&n3.netns));
    assert_eq!(node_names(lab), ["node-1", "node-2"]);
    lab.wait_peers("node-1", 1).unwrap();
    assert!(cli_output(lab, &["node", "del", "node-3"]).status.code() == Some(2));
    // The index is free again.
    let out = cli(lab, &["node", "add"]);
    assert!(out.contains("node node-3 added"), "{out}");
    lab.down().unwrap();
}

#[test]
fn a_node_without_a_lab_agent_runs_the_test_s_own() {
    let guard = up_with("noagent-", 2, |c| c.no_agent_on = vec!["node-2".into()]);
    let lab = &guard.0;
    let n2 = lab.state().unwrap().node("node-2").cloned().unwrap();
    assert!(!n2.lab_agent);
    assert_eq!(lab.agent_pid("node-2").unwrap(), None);
    assert!(n2.kubeconfig().is_file() && n2.conf_dir().is_dir() && n2.bin_dir().is_dir());
    assert!(!n2.readiness_file().exists(), "nobody made node-2 ready");
    assert_eq!(node_names(lab), ["node-1", "node-2"]);
    lab.wait_peers("node-1", 0).unwrap();

    // The test runs the lab's command for node-2 itself.
    let cmd = lab.agent_command("node-2").unwrap();
    assert!(
        cmd.args.windows(2).any(|w| w == ["--node-name", "node-2"]),
        "{:?}",
        cmd.args
    );
    assert!(cmd.program.ends_with("weft-agent"));
    let mut own = cmd
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_agent_ready("node-2").unwrap();
    lab.wait_peers("node-1", 1).unwrap();
    lab.wait_peers("node-2", 1).unwrap();
    assert_eq!(lab.agent_pid("node-2").unwrap(), None, "not the lab's agent");
    // down stops it too: it runs in the lab's namespace.
    lab.down().unwrap();
    // down runs in this process and reaps what it stops: "no such child" is an exit.
    wait_for("the test's agent to be stopped by down", WAIT, || {
        (!matches!(own.try_wait(), Ok(None))).then_some(())
    });
}

#[test]
fn the_api_emulator_restarts_on_the_same_address_with_its_objects() {
    let guard = up("apirestart-", 2);
    let lab = &guard.0;
    let url = lab.api_url().unwrap();
    let before = get_node(lab, "node-1");
    let key = before.annotations()["weft.io/wireguard-public-key"].clone();
    assert!(cli(lab, &["api", "stop"]).contains("API emulator: stopped"));
    assert!(objects::with_client(&url, |c| async move {
        Ok(Api::<Node>::all(c).list(&Default::default()).await?)
    })
    .is_err());
    assert!(cli(lab, &["api", "start"]).contains("API emulator: running"));
    assert!(lab.start_apiserver(false).is_err(), "one emulator at a time");
    assert_eq!(lab.api_url().unwrap(), url, "same address");
    let after = get_node(lab, "node-1");
    assert_eq!(after.uid(), before.uid());
    assert_eq!(after.annotations()["weft.io/wireguard-public-key"], key);
    // The agents follow the new incarnation: a node added now joins the mesh.
    lab.add_node(3).unwrap();
    lab.wait_peers("node-1", 2).unwrap();
    lab.wait_peers("node-3", 2).unwrap();

    // Restarted empty (a lost etcd): the lab registers the Nodes again, as
    // kubelets would, without the agents' annotations. The agents' watches
    // hold versions the new server never issued: they must get 410, relist,
    // and publish their keys again.
    lab.restart_apiserver(true).unwrap();
    assert_eq!(node_names(lab), ["node-1", "node-2", "node-3"]);
    let fresh = get_node(lab, "node-1");
    assert_ne!(fresh.uid(), before.uid());
    assert!(!fresh.annotations().contains_key("weft.io/wireguard-public-key"));
    wait_for("node-1's agent to publish its key to the new server", WAIT, || {
        (get_node(lab, "node-1")
            .annotations()
            .get("weft.io/wireguard-public-key")
            == Some(&key))
        .then_some(())
    });
    lab.down().unwrap();
}
