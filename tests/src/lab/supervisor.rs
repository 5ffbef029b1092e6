//! The agent supervisor (`weft-lab supervise`, started by `up` unless
//! `restart_agents` is off): it plays kubelet restarting a crashed
//! container. Every [`POLL`] it reads the lab state; a node whose agent the
//! lab runs, that was not stopped on purpose, and whose agent is not alive,
//! gets it started again with the same command after a back-off: 1 s, then
//! doubled on each crash up to 16 s, back to 1 s once an agent has run for
//! 30 s (kubelet: 10 s doubling to 5 min, reset after 10 min — shortened so
//! that tests wait seconds, not minutes). Each restart counts in
//! `NodeState::agent_restarts` and is logged to `<lab>/supervisor.log`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::process::{reap_children, spawn_detached};
use super::{agents, state, Lab};

/// The supervisor's role in the lab's process records.
pub const SUPERVISOR_ROLE: &str = "supervisor";
/// How often the supervisor looks at the agents.
pub const POLL: Duration = Duration::from_millis(200);
/// The first restart delay after a crash.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(16);
/// An agent that ran this long starts over at [`BACKOFF_INITIAL`] when it dies.
pub const BACKOFF_RESET: Duration = Duration::from_secs(30);

/// Start the supervisor of `lab` in the background and record it.
pub(super) fn start(lab: &Lab) -> Result<()> {
    let st = lab.state()?;
    let root = lab.dir.parent().context("lab dir has no parent")?;
    let mut cmd = Command::new(&st.lab_bin);
    cmd.arg("--root").arg(root).args(["--name", &lab.name, "supervise"]);
    let rec = spawn_detached(cmd, &lab.dir.join("supervisor.log"), SUPERVISOR_ROLE)?;
    state::update(&lab.dir, |st| {
        st.procs.retain(|p| p.role != SUPERVISOR_ROLE);
        st.procs.push(rec);
        Ok(())
    })
}

/// Restart bookkeeping of one node's agent.
#[derive(Debug)]
struct Backoff {
    /// The pid last seen alive and when it was first seen (≈ its start).
    seen: Option<(i32, Instant)>,
    /// The delay applied to the latest crash.
    delay: Duration,
    /// When the agent was found dead, and when it may start again.
    restart_at: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            seen: None,
            delay: Duration::ZERO,
            restart_at: None,
        }
    }

    /// The agent runs as `pid`.
    fn alive(&mut self, pid: i32, now: Instant) {
        if self.seen.map(|(p, _)| p) != Some(pid) {
            self.seen = Some((pid, now));
        }
        self.restart_at = None;
    }

    /// The agent is not running: when may it start again?
    fn dead(&mut self, now: Instant) -> Instant {
        if let Some(at) = self.restart_at {
            return at;
        }
        let ran = self.seen.map(|(_, since)| now.duration_since(since));
        self.delay = if self.delay.is_zero() || ran.is_some_and(|r| r >= BACKOFF_RESET) {
            BACKOFF_INITIAL
        } else {
            (self.delay * 2).min(BACKOFF_MAX)
        };
        self.seen = None;
        let at = now + self.delay;
        self.restart_at = Some(at);
        at
    }
}

/// Run the supervisor of lab `name` under `root` until the lab is gone.
pub fn run(root: &Path, name: &str) -> Result<()> {
    let dir = root.join(name);
    let mut nodes: HashMap<String, Backoff> = HashMap::new();
    eprintln!("weft-lab supervisor of lab {name}: restarting dead agents");
    loop {
        reap_children();
        if !state::state_file(&dir).exists() {
            eprintln!("lab {name} is gone; supervisor exits");
            return Ok(());
        }
        match state::load(&dir) {
            Ok(st) => {
                let now = Instant::now();
                nodes.retain(|n, _| st.node(n).is_some());
                for n in st.nodes.iter().filter(|n| n.lab_agent && !n.agent_stopped) {
                    let b = nodes.entry(n.name.clone()).or_insert_with(Backoff::new);
                    match st.live_proc(&n.agent_role()) {
                        Some(p) => b.alive(p.pid, now),
                        None if now >= b.dead(now) => match restart(&dir, &n.name) {
                            Ok(Some((pid, count))) => {
                                b.alive(pid, Instant::now());
                                eprintln!(
                                    "restarted weft-agent on {} as pid {pid} (restart {count}, back-off {:?})",
                                    n.name, b.delay
                                );
                            }
                            Ok(None) => {}
                            Err(e) => eprintln!("restart weft-agent on {}: {e:#}", n.name),
                        },
                        None => {}
                    }
                }
            }
            // Written by atomic rename, so a failed read means the lab is going.
            Err(e) => eprintln!("read the lab state: {e:#}"),
        }
        std::thread::sleep(POLL);
    }
}

/// Start `node`'s agent again unless, under the lock, it is no longer
/// wanted or already runs. Returns its pid and restart count.
fn restart(dir: &Path, node: &str) -> Result<Option<(i32, u32)>> {
    state::update(dir, |st| {
        let Some(n) = st.node(node) else { return Ok(None) };
        if !n.lab_agent || n.agent_stopped || st.live_proc(&n.agent_role()).is_some() {
            return Ok(None);
        }
        let pid = agents::spawn_recorded(st, node)?;
        let n = st
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .expect("node checked above");
        n.agent_restarts += 1;
        Ok(Some((pid, n.agent_restarts)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        b.alive(10, t0);
        assert_eq!(b.dead(t0) - t0, BACKOFF_INITIAL);
        assert_eq!(
            b.dead(t0 + Duration::from_millis(300)) - t0,
            BACKOFF_INITIAL,
            "one crash, one delay"
        );
        let mut t = t0;
        let mut delays = Vec::new();
        for pid in 11..17 {
            t += Duration::from_secs(1);
            b.alive(pid, t);
            delays.push(b.dead(t + Duration::from_secs(1)) - (t + Duration::from_secs(1)));
        }
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 16, 16]);
        t += Duration::from_secs(5);
        b.alive(99, t);
        let later = t + BACKOFF_RESET;
        assert_eq!(b.dead(later) - later, BACKOFF_INITIAL, "a long run resets the back-off");
    }
}
