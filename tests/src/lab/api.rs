//! The lab's API emulator as a process: stop it and start it again on the
//! same addresses (an API server restart or outage). It keeps its objects
//! and resourceVersion counter in `<lab>/apiserver/` (`--state`) across a
//! restart, unless the restart is told to start empty (a lost etcd).

use anyhow::{Context, Result};

use super::up::{start_apiserver, APISERVER_ROLE};
use super::{objects, state, Lab};

impl Lab {
    /// Stop the emulator (SIGTERM, then SIGKILL): an API server outage.
    /// Clients see connections refused until [`Lab::start_apiserver`].
    pub fn stop_apiserver(&self) -> Result<()> {
        let st = self.state()?;
        if let Some(p) = st.procs.iter().find(|p| p.role == APISERVER_ROLE) {
            p.stop().context("stop the API emulator")?;
        }
        state::update(&self.dir, |st| {
            st.procs.retain(|p| p.role != APISERVER_ROLE);
            Ok(())
        })
    }

    /// Start the emulator again on the addresses it had (host and
    /// underlay), from its saved objects and resourceVersion counter; with
    /// `empty`, its saved objects are deleted first, so it starts as a new
    /// cluster whose versions restart low (clients hold versions it never
    /// issued), and the lab's Node objects are registered again, as kubelets
    /// re-register a missing Node (without the agents' annotations). Fails
    /// when it already runs.
    pub fn start_apiserver(&self, empty: bool) -> Result<()> {
        let st = self.state()?;
        if let Some(p) = st.live_proc(APISERVER_ROLE) {
            anyhow::bail!("the API emulator already runs (pid {})", p.pid);
        }
        let api = st.api.context("lab never had an API emulator")?;
        let host = api
            .host_url
            .strip_prefix("http://")
            .unwrap_or(&api.host_url)
            .to_string();
        if empty {
            crate::apiserver::remove_saved_state(&self.dir.join("apiserver"))?;
        }
        start_apiserver(self, &host)?;
        if empty {
            objects::create_nodes(&self.api_url()?, &self.name, &st.nodes).context("register the Nodes again")?;
        }
        Ok(())
    }

    /// [`Lab::stop_apiserver`] then [`Lab::start_apiserver`].
    pub fn restart_apiserver(&self, empty: bool) -> Result<()> {
        self.stop_apiserver()?;
        self.start_apiserver(empty)
    }
}
