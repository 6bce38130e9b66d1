//! One remote session: a WinRM shell hosting a PowerShell runspace pool (MS-PSRP over MS-WSMV).
//!
//! Open: Create (creationXml = SESSION_CAPABILITY + INIT_RUNSPACEPOOL fragments), then Receive on
//! the pool until RUNSPACEPOOL_STATE says Opened. Invoke: Command (Arguments = the first
//! CREATE_PIPELINE fragments, the rest by Send on `stdin`), Receive with the CommandId until the
//! PIPELINE_STATE and CommandState Done, then Signal terminate. Close: Delete.
//!
//! Faults, step by step (docs/chaos.md has the whole table): a request refused with 503 never
//! reached a server, so Receive, Send, Signal and Delete are simply repeated; Delete is
//! idempotent (a shell already gone is "not found") and is also repeated after a lost answer.
//! Command is never repeated here: the broker decides, from the class, whether the invocation
//! may run again. Once a Command may have been processed, every failure is reported with a class
//! that says the outcome is unknown (a shell that vanished is then `SessionLost`, not
//! `SessionExpired`). A Create whose answer was lost may have created the shell under the id we
//! proposed: it is deleted before the open fails, on the server the conversation is pinned to.

// RemoteError is the connector seam's error type; these helpers return it as is.
#![allow(clippy::result_large_err)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::transport::{CallError, Channel};
use crate::remote::psrp::{
    messages, Defragmenter, Fragment, Message, PipelineState, RunspacePoolState, ServerMessage, HEADER_LEN,
};
use crate::remote::wsman::{envelope, response, upper, ReceiveResponse, RequestContext, SIGNAL_TERMINATE};
use crate::remote::{
    classify, classify_error_record, Command, CommandOutput, ErrorRecord, FaultClass, RemoteError, RemoteSession,
};

/// Room kept free in every envelope besides the measured skeleton (a redirect may lengthen wsa:To).
const ENVELOPE_MARGIN: usize = 128;
/// The only stream a PowerShell shell writes.
const STDOUT: &str = "stdout";
/// The stream PSRP input (extra fragments) goes to.
const STDIN: &str = "stdin";
/// How often a request refused with 503 (it never reached a server) is repeated.
const UNAVAILABLE_RETRIES: u32 = 8;
/// The longest wait for a `Retry-After` before repeating a request.
const MAX_UNAVAILABLE_WAIT: Duration = Duration::from_secs(10);
/// Attempts at deleting a shell when the answer is lost or the server is unavailable.
const DELETE_ATTEMPTS: u32 = 4;
/// First wait between Delete attempts (doubles each time).
const DELETE_BACKOFF: Duration = Duration::from_millis(100);
/// Shells per Enumerate page of the affinity probe: a user has a handful, so one page holds them.
const PROBE_BATCH: u32 = 100;

fn protocol(message: impl Into<String>) -> RemoteError {
    RemoteError::new(FaultClass::Protocol, message)
}

/// How many raw bytes fit as base64 in an envelope whose skeleton (the same envelope with an
/// empty payload) is `skeleton_len` bytes long.
fn payload_room(max_envelope_size: u32, skeleton_len: usize) -> usize {
    (max_envelope_size as usize).saturating_sub(skeleton_len + ENVELOPE_MARGIN) / 4 * 3
}

/// Cuts `messages` (each with its ObjectId) into fragments and packs them into payloads: the
/// first at most `first_room` bytes (creationXml or Command arguments), the others at most
/// `rest_room` (one Send each). Fragments never straddle payloads.
pub(crate) fn pack(
    messages: &[(u64, Vec<u8>)],
    first_room: usize,
    rest_room: usize,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), RemoteError> {
    if first_room <= HEADER_LEN || rest_room <= HEADER_LEN {
        return Err(protocol(format!(
            "MaxEnvelopeSize leaves no room for a PSRP fragment ({first_room}/{rest_room} bytes)"
        )));
    }
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::new();
    let mut room = first_room;
    for (object_id, message) in messages {
        let mut offset = 0;
        let mut fragment_id = 0;
        loop {
            let free = room - current.len();
            if free <= HEADER_LEN {
                payloads.push(std::mem::take(&mut current));
                room = rest_room;
                continue;
            }
            let n = (free - HEADER_LEN).min(message.len() - offset);
            let fragment = Fragment {
                object_id: *object_id,
                fragment_id,
                start: offset == 0,
                end: offset + n == message.len(),
                data: message[offset..offset + n].to_vec(),
            };
            fragment.encode_into(&mut current);
            offset += n;
            fragment_id += 1;
            if offset == message.len() {
                break;
            }
        }
    }
    payloads.push(current);
    let mut payloads = payloads.into_iter();
    let first = payloads.next().unwrap_or_default();
    Ok((first, payloads.collect()))
}

/// Decodes the stdout bytes of one Receive into server messages, as each one completes.
fn drain(
    defrag: &mut Defragmenter,
    receive: &ReceiveResponse,
    mut each: impl FnMut(Message, ServerMessage) -> Result<(), RemoteError>,
) -> Result<(), RemoteError> {
    for stream in receive.streams.iter().filter(|s| s.name == STDOUT) {
        let completed = defrag.push(&stream.data).map_err(|e| protocol(e.to_string()))?;
        for bytes in completed {
            let message = Message::decode(&bytes).map_err(|e| protocol(e.to_string()))?;
            let parsed = ServerMessage::parse(&message).map_err(|e| protocol(e.to_string()))?;
            each(message, parsed)?;
        }
    }
    Ok(())
}

/// The failure of a pool that broke (or closed) while opening, from the server's error record.
fn pool_failure(state: RunspacePoolState, error: Option<ErrorRecord>) -> RemoteError {
    match error {
        Some(record) => {
            let text = format!("{}\n{}", record.message, record.fully_qualified_error_id);
            let class = classify(None, None, &text);
            RemoteError::from_record(class, record)
        }
        None => protocol(format!("the runspace pool went to state {state:?} while opening")),
    }
}

/// A failure once the command may have started (its Command was sent): whatever the class, the
/// outcome is unknown now, and the class must say so, because the broker repeats a write only
/// on a class that proves the command never started. A shell not found is `SessionLost`.
fn after_start(e: CallError) -> RemoteError {
    if e.is_shell_not_found() {
        let e = e.into_remote();
        return RemoteError::new(
            FaultClass::SessionLost,
            format!("the shell disappeared while the command was running: {}", e.message),
        );
    }
    let e = e.into_remote();
    if e.class.proves_not_started() {
        let message = format!("{} (after the command was sent, so its outcome is unknown)", e.message);
        return RemoteError::new(FaultClass::ConnectionLost, message);
    }
    e
}

/// Repeats a request while the service answers 503: such a request never reached a server, so
/// repeating it is safe whatever it does. Gives up with the last 503 after a few tries.
async fn patiently<T, F: std::future::Future<Output = Result<T, CallError>>>(
    mut request: impl FnMut() -> F,
) -> Result<T, CallError> {
    let mut tries = 0;
    loop {
        match request().await {
            Err(e) if tries < UNAVAILABLE_RETRIES => match e.unavailable() {
                Some(wait) => {
                    tries += 1;
                    tokio::time::sleep(wait.min(MAX_UNAVAILABLE_WAIT)).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Deletes a shell by id. Deleting is idempotent (a shell already gone answers "not found",
/// which counts as deleted), so a Delete whose answer was lost, that timed out, or that the
/// service refused with 503 is repeated a few times before giving up.
async fn delete_shell(channel: &Channel, shell_id: &str) -> Result<(), RemoteError> {
    delete_known(channel, shell_id).await.map(drop)
}

/// [`delete_shell`], telling whether the server knew the shell (`false`: "not found").
async fn delete_known(channel: &Channel, shell_id: &str) -> Result<bool, RemoteError> {
    let mut attempt = 1;
    loop {
        let result = channel
            .call(
                "Delete",
                channel.request_timeout(),
                |ctx| envelope::delete(ctx, shell_id),
                response::parse_empty_response,
            )
            .await;
        let e = match result {
            Ok(_) => return Ok(true),
            Err(e) if e.is_shell_not_found() => return Ok(false),
            Err(e) => e,
        };
        let wait = match e.unavailable() {
            Some(wait) => wait.min(MAX_UNAVAILABLE_WAIT),
            None if e.class().outcome_unknown() => DELETE_BACKOFF * 2u32.pow(attempt - 1),
            None => return Err(e.into_remote()),
        };
        if attempt >= DELETE_ATTEMPTS {
            return Err(e.into_remote());
        }
        tracing::debug!(shell = shell_id, attempt, "deleting a shell failed; trying again");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// Makes the load balancer pin this conversation to one server before anything is created on
/// it: the Create then carries the affinity cookie, so if its answer is lost the shell it may
/// have created can still be reached (and deleted) under the id we proposed. Without the cookie
/// a lost Create answer leaks a shell on a server the client cannot address until it expires.
async fn pin_affinity(channel: &Channel) -> Result<(), RemoteError> {
    channel
        .call(
            "Enumerate",
            channel.request_timeout(),
            |ctx| envelope::enumerate_shells(ctx, PROBE_BATCH),
            response::parse_enumerate_response,
        )
        .await
        .map(drop)
        .map_err(CallError::into_remote)
}

/// A live shell: everything later requests need, shared with the clean-up guard.
#[derive(Debug)]
pub(crate) struct Shell {
    pub(crate) channel: Channel,
    /// The RunspacePool id (also the ShellId we proposed).
    pub(crate) rpid: Uuid,
    /// The ShellId the server uses in the SelectorSet.
    pub(crate) shell_id: String,
    next_object_id: AtomicU64,
    closed: AtomicBool,
}

impl Shell {
    fn object_id(&self) -> u64 {
        self.next_object_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn receive(&self, command_id: Option<&str>) -> Result<ReceiveResponse, CallError> {
        let timeout = self.channel.timeout_for_receive();
        patiently(|| {
            self.channel.call(
                "Receive",
                timeout,
                |ctx| envelope::receive(ctx, &self.shell_id, command_id),
                response::parse_receive_response,
            )
        })
        .await
    }

    async fn send(&self, command_id: Option<&str>, data: &[u8]) -> Result<(), CallError> {
        patiently(|| {
            self.channel.call(
                "Send",
                self.channel.request_timeout(),
                |ctx| envelope::send(ctx, &self.shell_id, command_id, STDIN, data),
                response::parse_empty_response,
            )
        })
        .await
        .map(drop)
    }

    fn send_room(&self, ctx: &RequestContext, command_id: Option<&str>) -> usize {
        let (_, skeleton) = envelope::send(ctx, &self.shell_id, command_id, STDIN, b"");
        payload_room(ctx.max_envelope_size, skeleton.len())
    }

    /// Deletes the shell (Remove-PSSession); a shell the server no longer knows is gone already.
    pub(crate) async fn delete(&self) -> Result<(), RemoteError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        delete_shell(&self.channel, &self.shell_id).await
    }

    /// Receives on the pool until it is Opened.
    async fn wait_opened(&self) -> Result<(), RemoteError> {
        let mut defrag = Defragmenter::new();
        loop {
            let received = match self.receive(None).await {
                Ok(r) => r,
                Err(e) if e.is_operation_timeout() => continue,
                Err(e) => return Err(e.into_remote()),
            };
            let mut opened = false;
            drain(&mut defrag, &received, |_, message| {
                match message {
                    ServerMessage::RunspacePoolState { state: RunspacePoolState::Opened, .. } => opened = true,
                    ServerMessage::RunspacePoolState {
                        state: state @ (RunspacePoolState::Broken | RunspacePoolState::Closed),
                        error,
                    } => return Err(pool_failure(state, error)),
                    _ => {}
                }
                Ok(())
            })?;
            if opened {
                return Ok(());
            }
        }
    }

    /// Runs one command to its end.
    async fn run(&self, command: &Command) -> Result<CommandOutput, RemoteError> {
        let pid = command.invocation_id;
        let create = messages::create_pipeline(self.rpid, pid, &command.cmdlet, &command.parameters).encode();
        let ctx = self.channel.context();
        let (_, skeleton) = envelope::command(&ctx, &self.shell_id, pid, b"");
        let first_room = payload_room(ctx.max_envelope_size, skeleton.len());
        let rest_room = self.send_room(&ctx, Some(&upper(pid)));
        let (arguments, rest) = pack(&[(self.object_id(), create)], first_room, rest_room)?;

        let started = self
            .channel
            .call(
                "Command",
                self.channel.request_timeout(),
                |ctx| envelope::command(ctx, &self.shell_id, pid, &arguments),
                response::parse_command_response,
            )
            .await
            .map_err(CallError::into_remote)?;
        let command_id = started.command_id;
        for payload in &rest {
            if let Err(e) = self.send(Some(&command_id), payload).await {
                self.terminate(&command_id).await;
                // Conservative: only the last fragment can start the pipeline, but which Send
                // failed is not worth a class of its own; the outcome is reported unknown.
                return Err(after_start(e));
            }
        }

        let outcome = self.collect(pid, &command_id).await;
        match &outcome {
            // The transport failed or the shell is gone: the signal would fail the same way.
            Err(e) if e.class.outcome_unknown() => {}
            _ => self.terminate(&command_id).await,
        }
        let (output, state, error) = outcome?;
        match state {
            PipelineState::Completed => Ok(output),
            PipelineState::Failed => Err(match error {
                Some(record) => RemoteError::from_record(classify_error_record(&record), record),
                None => RemoteError::new(FaultClass::CmdletError, format!("{} failed", command.cmdlet)),
            }),
            PipelineState::Stopped => {
                Err(RemoteError::new(FaultClass::CmdletError, format!("{} was stopped", command.cmdlet)))
            }
            other => Err(protocol(format!("pipeline ended in state {other:?}"))),
        }
    }

    /// Receives the command's output until its final PIPELINE_STATE and CommandState Done.
    async fn collect(
        &self,
        pid: Uuid,
        command_id: &str,
    ) -> Result<(CommandOutput, PipelineState, Option<ErrorRecord>), RemoteError> {
        let mut defrag = Defragmenter::new();
        let mut output = CommandOutput::default();
        let mut last: Option<(PipelineState, Option<ErrorRecord>)> = None;
        loop {
            let received = match self.receive(Some(command_id)).await {
                Ok(r) => r,
                // The pipeline already ended; the server just has no CommandState to add.
                Err(e) if e.is_operation_timeout() && last.is_some() => break,
                Err(e) if e.is_operation_timeout() => continue,
                Err(e) => return Err(after_start(e)),
            };
            drain(&mut defrag, &received, |message, parsed| {
                if message.pid != pid && !message.pid.is_nil() {
                    tracing::debug!(pid = %message.pid, "ignoring a message for another pipeline");
                    return Ok(());
                }
                match parsed {
                    ServerMessage::PipelineOutput(value) => output.objects.push(value),
                    ServerMessage::ErrorRecord(record) => output.errors.push(record),
                    ServerMessage::Warning(text) => output.warnings.push(text),
                    ServerMessage::PipelineState { state, error } if state.is_terminal() => last = Some((state, error)),
                    _ => {}
                }
                Ok(())
            })?;
            let done = received.command_state.as_ref().is_some_and(|s| s.is_done());
            if done {
                break;
            }
        }
        match last {
            Some((state, error)) => Ok((output, state, error)),
            None => Err(protocol("the command ended without a final PIPELINE_STATE")),
        }
    }

    /// Signal terminate for a finished command (best effort, as pypsrp does: the command's
    /// result stands whatever happens to the signal).
    async fn terminate(&self, command_id: &str) {
        let result = patiently(|| {
            self.channel.call(
                "Signal",
                self.channel.request_timeout(),
                |ctx| envelope::signal(ctx, &self.shell_id, command_id, SIGNAL_TERMINATE),
                response::parse_empty_response,
            )
        })
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e.into_remote(), "signal terminate failed");
        }
    }
}

/// Deletes a shell in the background when the session is dropped without `close` (or when an
/// open is abandoned half way), so its quota comes back without waiting for the idle timeout.
fn delete_in_background(shell: &Arc<Shell>) {
    if shell.closed.load(Ordering::Acquire) {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let shell = Arc::clone(shell);
        handle.spawn(async move {
            if let Err(e) = shell.delete().await {
                tracing::debug!(shell = %shell.shell_id, error = %e, "deleting an abandoned shell failed");
            }
        });
    }
}

/// Opens a shell: (affinity probe,) Create, extra pool fragments if any, Receive until Opened. On
/// failure after the Create, or when the Create's answer was lost, the shell is deleted before
/// the error is returned, so a failed open does not hold quota.
/// How many more times a timed-out Create's shell is looked for (and deleted) before it is
/// taken as never created.
const LATE_CREATE_LOOKS: u32 = 3;

pub(crate) async fn open(
    channel: Channel,
    name: &str,
    probe_affinity: bool,
    bearer: Option<super::Bearer>,
) -> Result<WinrmSession, RemoteError> {
    let rpid = Uuid::new_v4();
    let ctx = channel.context();
    let (_, skeleton) = envelope::create_named_shell(&ctx, rpid, Some(name), b"", None);
    let first_room = payload_room(ctx.max_envelope_size, skeleton.len());
    let (_, send_skeleton) = envelope::send(&ctx, &upper(rpid), None, STDIN, b"");
    let rest_room = payload_room(ctx.max_envelope_size, send_skeleton.len());
    let pool_messages =
        [(1, messages::client_session_capability(rpid).encode()), (2, messages::init_runspace_pool(rpid).encode())];
    let (creation_xml, rest) = pack(&pool_messages, first_room, rest_room)?;

    if probe_affinity && channel.cookies().is_empty() {
        pin_affinity(&channel).await?;
    }
    let created = channel
        .call(
            "Create",
            channel.request_timeout(),
            |ctx| envelope::create_named_shell(ctx, rpid, Some(name), &creation_xml, None),
            response::parse_create_response,
        )
        .await;
    let created = match created {
        Ok(created) => created,
        Err(e) => {
            let e = e.into_remote();
            if e.class.outcome_unknown() {
                // The server may have created the shell and lost the answer: WinRM keeps the
                // ShellId a PSRP client proposes (the RunspacePool id), so it can be deleted.
                // A Create that timed out may also still be on its way through a busy server,
                // behind our Delete: if the shell is not there yet, look again after one, two and
                // three more request timeouts (the slot stays taken meanwhile, as the shell may
                // hold quota; a server that busy answers late, not never).
                let shell_id = upper(rpid);
                let mut known = delete_known(&channel, &shell_id).await;
                for wait in 1..=LATE_CREATE_LOOKS {
                    if e.class != FaultClass::Timeout || !matches!(known, Ok(false)) {
                        break;
                    }
                    tokio::time::sleep(channel.request_timeout() * wait).await;
                    known = delete_known(&channel, &shell_id).await;
                }
                if let Err(d) = known {
                    tracing::warn!(error = %d, "a Create whose answer was lost may have left a shell behind");
                }
            }
            return Err(e);
        }
    };
    let shell = Arc::new(Shell {
        channel,
        rpid,
        shell_id: created.shell_id,
        next_object_id: AtomicU64::new(3),
        closed: AtomicBool::new(false),
    });
    // Armed until the pool is open: the caller giving up on this future deletes the shell in
    // the background. An error deletes it here, before the open reports failure.
    let guard = OpenGuard(Some(Arc::clone(&shell)));
    let opened = async {
        for payload in &rest {
            shell.send(None, payload).await.map_err(CallError::into_remote)?;
        }
        shell.wait_opened().await
    };
    if let Err(e) = opened.await {
        if let Err(d) = shell.delete().await {
            tracing::debug!(error = %d, "deleting a shell whose pool did not open failed");
        }
        guard.disarm();
        return Err(e);
    }
    guard.disarm();
    Ok(WinrmSession { shell, bearer })
}

struct OpenGuard(Option<Arc<Shell>>);

impl OpenGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(shell) = self.0.take() {
            delete_in_background(&shell);
        }
    }
}

/// A session on a WinRM endpoint. Dropping it without [`RemoteSession::close`] deletes the
/// shell in the background.
#[derive(Debug)]
pub struct WinrmSession {
    shell: Arc<Shell>,
    /// The admin's OAuth identity, when the session signs in with bearer tokens: each command
    /// carries a current token.
    bearer: Option<super::Bearer>,
}

impl WinrmSession {
    /// The endpoint URL the session talks to (after any redirect).
    pub fn endpoint(&self) -> String {
        self.shell.channel.url().to_string()
    }
}

impl Drop for WinrmSession {
    fn drop(&mut self) {
        delete_in_background(&self.shell);
    }
}

#[async_trait]
impl RemoteSession for WinrmSession {
    fn remote_id(&self) -> String {
        self.shell.shell_id.clone()
    }

    /// What another process needs to delete this shell: behind a load balancer the shell is
    /// only reachable with the conversation's URL and affinity cookies.
    fn resume_token(&self) -> Option<String> {
        let channel = &self.shell.channel;
        let token = super::ResumeToken {
            url: channel.url().to_string(),
            shell_id: self.shell.shell_id.clone(),
            resource_uri: channel.context().resource_uri,
            cookies: channel.cookies(),
        };
        serde_json::to_string(&token).ok()
    }

    async fn invoke(&self, command: &Command) -> Result<CommandOutput, RemoteError> {
        if self.shell.closed.load(Ordering::Acquire) {
            return Err(RemoteError::new(FaultClass::SessionExpired, "the session was closed"));
        }
        if let Some(bearer) = &self.bearer {
            self.shell.channel.set_auth(bearer.header().await?);
        }
        self.shell.run(command).await
    }

    async fn close(&self) -> Result<(), RemoteError> {
        self.shell.delete().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::psrp::Defragmenter;

    #[test]
    fn pack_fills_the_first_payload_then_sends() {
        let a: Vec<u8> = (0..200u8).collect();
        let b: Vec<u8> = (0..50u8).collect();
        let (first, rest) = pack(&[(1, a.clone()), (2, b.clone())], 100, 60).unwrap();
        assert!(first.len() <= 100);
        assert!(rest.iter().all(|p| p.len() <= 60 && p.len() > HEADER_LEN));
        let mut d = Defragmenter::new();
        let mut out = d.push(&first).unwrap();
        for p in &rest {
            out.extend(d.push(p).unwrap());
        }
        assert_eq!(out, vec![a, b]);
        // Everything fits: one payload, both messages in it.
        let (first, rest) = pack(&[(1, vec![1; 10]), (2, vec![2; 10])], 1000, 1000).unwrap();
        assert!(rest.is_empty());
        assert_eq!(first.len(), 2 * (HEADER_LEN + 10));
        assert!(pack(&[(1, vec![1])], HEADER_LEN, 100).is_err());
    }

    #[test]
    fn payload_room_is_base64_aware() {
        assert_eq!(payload_room(1000, 472), 300);
        assert_eq!(payload_room(100, 472), 0);
    }
}
