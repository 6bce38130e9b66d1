//! The in-process connector: the simulator's service API behind the configured latencies.

use super::Simulator;
use crate::remote::{Command, CommandOutput, Connector, RemoteError, RemoteSession, SessionTarget};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use std::time::Duration;

/// Opens sessions on a [`Simulator`].
#[derive(Debug, Clone)]
pub struct SimConnector {
    sim: Simulator,
}

impl SimConnector {
    pub fn new(sim: Simulator) -> Self {
        Self { sim }
    }

    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }
}

/// Sleeps the real time of a simulated latency (`latency / time_speedup`); shared with the wire server.
pub(crate) async fn pause(sim: &Simulator, simulated: Duration) {
    let real = sim.real_delay(simulated);
    if !real.is_zero() {
        tokio::time::sleep(real).await;
    }
}

#[async_trait]
impl Connector for SimConnector {
    async fn open(&self, target: &SessionTarget) -> Result<Box<dyn RemoteSession>, RemoteError> {
        pause(&self.sim, self.sim.latency().0).await;
        let shell_id = self.sim.open_shell(
            &target.admin_upn,
            target.credential.expose_secret(),
            &target.tenant,
            &target.configuration_name,
        )?;
        // In process the answer cannot be lost: the client knows the shell.
        self.sim.mark_used(&shell_id);
        Ok(Box::new(SimSession { sim: self.sim.clone(), shell_id }))
    }
}

/// One shell on the simulator.
#[derive(Debug)]
pub struct SimSession {
    sim: Simulator,
    shell_id: String,
}

#[async_trait]
impl RemoteSession for SimSession {
    fn remote_id(&self) -> String {
        self.shell_id.clone()
    }

    async fn invoke(&self, command: &Command) -> Result<CommandOutput, RemoteError> {
        pause(&self.sim, self.sim.latency().1).await;
        Ok(self.sim.run(&self.shell_id, command.invocation_id, &command.cmdlet, &command.parameters)?)
    }

    async fn close(&self) -> Result<(), RemoteError> {
        pause(&self.sim, self.sim.latency().2).await;
        Ok(self.sim.close_shell(&self.shell_id)?)
    }
}
