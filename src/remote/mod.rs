//! Remote side: the connector seam and the wire protocols behind it.
//!
//! Nothing here knows about pools, queues or HTTP callers. A connector opens one session for an
//! (admin, tenant, endpoint) triple, runs single commands on it, and closes it.

pub mod clixml;
pub mod exo;
pub mod fault;
mod http;
pub mod psrp;
pub mod value;
pub mod winrm;
pub mod wsman;
mod xml_ref;

use async_trait::async_trait;
use secrecy::SecretString;

pub use fault::{classify, classify_error_record, ErrorRecord, FaultClass, RemoteError};
pub use value::{PsObject, PsValue};

/// Everything needed to open one session: who, for which tenant, where.
#[derive(Clone)]
pub struct SessionTarget {
    pub admin_upn: String,
    pub credential: SecretString,
    pub tenant: String,
    /// The connection URI with `{tenant}` already substituted.
    pub connection_uri: String,
    pub configuration_name: String,
    /// The admin's OAuth identity, for endpoints that take bearer tokens (Exchange Online REST,
    /// WinRM's bearer-in-Basic). `None`: the admin signs in with `credential`.
    pub tokens: Option<std::sync::Arc<dyn crate::identity::TokenSource>>,
}

impl std::fmt::Debug for SessionTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTarget")
            .field("admin_upn", &self.admin_upn)
            .field("credential", &self.credential)
            .field("tenant", &self.tenant)
            .field("connection_uri", &self.connection_uri)
            .field("configuration_name", &self.configuration_name)
            .field("tokens", &self.tokens.as_ref().map(|_| "TokenSource"))
            .finish()
    }
}

/// One cmdlet with named, typed parameters. Never script text.
#[derive(Debug, Clone)]
pub struct Command {
    /// Also used as the remote pipeline id, so a server can tell retries of one invocation apart
    /// from different invocations.
    pub invocation_id: uuid::Uuid,
    pub cmdlet: String,
    pub parameters: Vec<(String, PsValue)>,
}

/// What a command that ran to completion produced. A terminating failure is a `RemoteError`;
/// non-terminating error records arrive here next to the output.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    pub objects: Vec<PsValue>,
    pub errors: Vec<ErrorRecord>,
    pub warnings: Vec<String>,
    /// The id the command was sent under (Exchange Online's `client-request-id`), when the
    /// transport has one; failures carry it in [`RemoteError::request_id`].
    pub request_id: Option<String>,
}

/// Opens sessions. One connector serves one endpoint profile kind.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    async fn open(&self, target: &SessionTarget) -> Result<Box<dyn RemoteSession>, RemoteError>;

    /// Deletes the sessions named `name` (this broker's shell name) that the admin of `target`
    /// still holds at the target's endpoint, e.g. after a crash, so they stop eating quota; the
    /// admin's other sessions are left alone. Returns how many were deleted. Connectors whose
    /// sessions cannot outlive the process have nothing to do.
    /// Deletes one shell a previous process opened, from its [`RemoteSession::resume_token`].
    /// `Ok(false)`: the server no longer knew it.
    async fn delete_orphan(&self, target: &SessionTarget, token: &str) -> Result<bool, RemoteError> {
        let _ = (target, token);
        Ok(false)
    }

    async fn reap_orphans(&self, target: &SessionTarget, name: &str) -> Result<u32, RemoteError> {
        let _ = (target, name);
        Ok(0)
    }
}

/// A live remote session (a WinRM shell hosting a runspace pool).
#[async_trait]
pub trait RemoteSession: Send + Sync {
    /// The server's identifier of the session (the ShellId on WS-Management).
    fn remote_id(&self) -> String;
    async fn invoke(&self, command: &Command) -> Result<CommandOutput, RemoteError>;
    /// Runs several commands, answering for each in order. Sessions whose transport can send
    /// them together (Exchange Online's `$batch`) do; the default runs them one by one.
    async fn invoke_many(&self, commands: &[Command]) -> Vec<Result<CommandOutput, RemoteError>> {
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            results.push(self.invoke(command).await);
        }
        results
    }
    /// Opaque text that lets another process delete this session after a crash (e.g. the
    /// endpoint and load-balancer cookies it is pinned to). `None`: nothing to remember.
    fn resume_token(&self) -> Option<String> {
        None
    }
    /// Removes the session on the server (Remove-PSSession), releasing its quota.
    async fn close(&self) -> Result<(), RemoteError>;
}
