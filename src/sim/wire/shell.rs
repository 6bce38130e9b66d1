//! The WS-Management shell resource with a PSRP runspace pool inside: one [`Wire`] per server,
//! keeping what the [`Simulator`] does not know about a shell (its name, affinity cookie, PSRP
//! ids, pending output and pipelines in flight).

use super::WireOptions;
use crate::remote::fault::{WSMAN_QUOTA_LIMIT, WSMAN_SHELL_NOT_FOUND};
use crate::remote::psrp::messages::{self as pm, CreatePipeline, PipelineState, RunspacePoolState};
use crate::remote::psrp::{ClientMessage, Defragmenter, Fragment, Message, MessageType, HEADER_LEN};
use crate::remote::wsman::server::{self, DEFAULT_IDLE_TIMEOUT};
use crate::remote::wsman::{
    ns, upper, Action, CommandState, Request, RequestBody, ShellInfo as WsShell, StreamData, WsmanFault,
    COMMAND_STATE_DONE, COMMAND_STATE_RUNNING,
};
use crate::remote::PsValue;
use crate::sim::connector::pause;
use crate::sim::{FaultKind, SimCredential, SimFault, Simulator};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The MaxEnvelopeSize a request gets when it names none.
const DEFAULT_MAX_ENVELOPE: usize = 153_600;
/// The smallest MaxEnvelopeSize served; below it a Receive could not carry a useful fragment.
const MIN_ENVELOPE: usize = 4096;
/// Bytes kept free in every Receive response for variations the size estimate does not see.
const ENVELOPE_MARGIN: usize = 128;
/// WSManFault code of "the resource URI was not found" (an unknown configuration).
const WSMAN_RESOURCE_NOT_FOUND: u32 = 2_150_858_811;

/// An answer: HTTP status and SOAP body.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    fn ok(body: String) -> Self {
        Self { status: 200, body }
    }

    pub(super) fn fault(status: u16, relates_to: Option<&str>, fault: WsmanFault) -> Self {
        Self { status, body: server::fault_response(relates_to, &fault) }
    }
}

/// Who sent a request and how it reached the server.
#[derive(Debug)]
pub(super) struct Caller {
    pub upn: String,
    /// The password, or the token without its `Bearer ` prefix.
    pub secret: String,
    pub bearer: bool,
    /// `DelegatedOrg` (or `tenant`) from the query.
    pub tenant: Option<String>,
    /// The affinity cookie the request carried, or the one its response sets.
    pub cookie: String,
    pub client_ip: String,
    /// The host name the client addressed (WSManFault/@Machine).
    pub machine: String,
    /// The URL the request was posted to (the ResourceCreated address).
    pub address: String,
}

impl Caller {
    fn credential(&self) -> SimCredential<'_> {
        if self.bearer {
            SimCredential::BearerToken(&self.secret)
        } else {
            SimCredential::Password(&self.secret)
        }
    }

    fn owner_key(&self) -> String {
        key(&self.upn)
    }
}

fn key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// One PSRP message waiting to be sent, cut into fragments as Receives make room for them.
#[derive(Debug)]
struct Outgoing {
    object_id: u64,
    next_fragment_id: u64,
    offset: usize,
    data: Vec<u8>,
}

/// Output of the pool or of one pipeline, in order.
#[derive(Debug, Default)]
struct OutQueue(VecDeque<Outgoing>);

impl OutQueue {
    fn push(&mut self, next_object_id: &mut u64, message: &Message) {
        let object_id = *next_object_id;
        *next_object_id += 1;
        self.0.push_back(Outgoing { object_id, next_fragment_id: 0, offset: 0, data: message.encode() });
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes as many fragments as fit in `budget` bytes of response, each costing `per_stream`
    /// bytes of rsp:Stream markup plus its base64 text. A message that does not fit whole is
    /// split; the rest waits for the next Receive.
    fn drain(&mut self, budget: usize, per_stream: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut left = budget;
        while let Some(msg) = self.0.front_mut() {
            let Some(room) = left.checked_sub(per_stream) else { break };
            let max_raw = room / 4 * 3;
            if max_raw <= HEADER_LEN {
                break;
            }
            let chunk = (max_raw - HEADER_LEN).min(msg.data.len() - msg.offset);
            let end = msg.offset + chunk == msg.data.len();
            let fragment = Fragment {
                object_id: msg.object_id,
                fragment_id: msg.next_fragment_id,
                start: msg.offset == 0,
                end,
                data: msg.data[msg.offset..msg.offset + chunk].to_vec(),
            }
            .encode();
            msg.offset += chunk;
            msg.next_fragment_id += 1;
            left -= per_stream + fragment.len().div_ceil(3) * 4;
            out.push(fragment);
            if end {
                self.0.pop_front();
            }
        }
        out
    }
}

/// A pipeline of the pool (a WS-Management command).
#[derive(Debug, Default)]
struct Pipeline {
    /// The PSRP pipeline id (from CREATE_PIPELINE), once the message is complete.
    pid: Option<Uuid>,
    input: Defragmenter,
    create: Option<CreatePipeline>,
    executed: bool,
    out: OutQueue,
}

impl Pipeline {
    /// Feeds fragment bytes from rsp:Arguments or a Send.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        for raw in self.input.push(bytes).map_err(|e| e.to_string())? {
            let msg = Message::decode(&raw).map_err(|e| e.to_string())?;
            // PIPELINE_INPUT, END_OF_PIPELINE_INPUT, host responses: nothing to do.
            if let ClientMessage::CreatePipeline(create) = ClientMessage::parse(&msg).map_err(|e| e.to_string())? {
                if self.create.is_some() {
                    return Err("a second CREATE_PIPELINE for one command".into());
                }
                self.pid = Some(msg.pid);
                self.create = Some(create);
            }
        }
        Ok(())
    }
}

/// What never changes about a shell.
#[derive(Debug)]
struct ShellMeta {
    id: String,
    /// The PSRP RunspacePool id.
    rpid: Uuid,
    owner: String,
    owner_key: String,
    name: Option<String>,
    resource_uri: String,
    cookie: String,
    client_ip: String,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct ShellState {
    next_object_id: u64,
    pool_out: OutQueue,
    pool_in: Defragmenter,
    /// By CommandId (upper case).
    pipelines: HashMap<String, Pipeline>,
}

#[derive(Debug)]
struct ShellEntry {
    meta: ShellMeta,
    last_activity: Mutex<Instant>,
    state: tokio::sync::Mutex<ShellState>,
}

#[derive(Debug)]
struct Enumeration {
    owner_key: String,
    rest: VecDeque<WsShell>,
}

/// The server's state. Shell map lock (sync, never held across an await) → shell state lock
/// (async, held while a pipeline executes, so one shell runs one thing at a time).
#[derive(Debug)]
pub(super) struct Wire {
    sim: Simulator,
    options: WireOptions,
    shells: Mutex<HashMap<String, Arc<ShellEntry>>>,
    enumerations: Mutex<HashMap<String, Enumeration>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sender_fault(machine: &str, subcode: &str, text: String) -> WsmanFault {
    WsmanFault {
        code: None,
        subcode: Some(format!("w:{subcode}")),
        reason: text.clone(),
        message: text,
        soap_code: Some("s:Sender".into()),
        machine: Some(machine.to_string()),
    }
}

/// A simulator failure as WinRM would report it.
fn sim_fault(f: &SimFault, machine: &str) -> WsmanFault {
    let (subcode, soap_code) = match f.wsman_code {
        Some(WSMAN_QUOTA_LIMIT) => ("w:QuotaLimit", "s:Sender"),
        Some(WSMAN_SHELL_NOT_FOUND) => ("w:InvalidSelectors", "s:Sender"),
        _ if f.message.contains("maximum number of concurrent shells") => ("w:QuotaLimit", "s:Sender"),
        _ if f.http_status == 401 => ("w:AccessDenied", "s:Sender"),
        _ => ("w:InternalError", "s:Receiver"),
    };
    WsmanFault {
        code: f.wsman_code,
        subcode: Some(subcode.into()),
        reason: f.message.clone(),
        message: f.message.clone(),
        soap_code: Some(soap_code.into()),
        machine: Some(machine.to_string()),
    }
}

impl Wire {
    pub(super) fn new(sim: Simulator, options: WireOptions) -> Self {
        Self { sim, options, shells: Mutex::new(HashMap::new()), enumerations: Mutex::new(HashMap::new()) }
    }

    pub(super) fn sim(&self) -> &Simulator {
        &self.sim
    }

    pub(super) fn redirect_first(&self) -> bool {
        self.options.redirect_first
    }

    pub(super) fn options(&self) -> &WireOptions {
        &self.options
    }

    /// A logon refused with the service's words (HTTP 401 with a SOAP fault).
    pub(super) fn refusal(&self, fault: &SimFault, machine: &str) -> Reply {
        Reply::fault(401, None, sim_fault(fault, machine))
    }

    /// Every request authenticates; a failure is HTTP 401 with the service's text.
    pub(super) fn authenticate(&self, caller: &Caller) -> Result<(), Reply> {
        self.sim
            .authenticate(&caller.upn, caller.credential())
            .map_err(|f| Reply::fault(401, None, sim_fault(&f, &caller.machine)))
    }

    pub(super) async fn handle(&self, caller: &Caller, req: Request) -> Reply {
        let rel = req.message_id.clone();
        let max_envelope = req.max_envelope_size.map_or(DEFAULT_MAX_ENVELOPE, |m| m as usize);
        if max_envelope < MIN_ENVELOPE {
            let text = format!(
                "The WS-Management service cannot process the request because the MaxEnvelopeSize {max_envelope} is \
                 smaller than the minimum of {MIN_ENVELOPE} bytes."
            );
            return Reply::fault(500, Some(&rel), sender_fault(&caller.machine, "EncodingLimit", text));
        }
        match &req.action {
            Action::Create => self.create(caller, req).await,
            Action::Enumerate => self.enumerate(caller, &req),
            Action::Pull => self.pull(caller, &req),
            Action::Delete | Action::Command | Action::Send | Action::Receive | Action::Signal => {
                self.shell_request(caller, req).await
            }
            Action::Other(uri) => Reply::fault(
                500,
                Some(&rel),
                sender_fault(
                    &caller.machine,
                    "ActionNotSupported",
                    format!("The WS-Management service does not support the action {uri} on this endpoint."),
                ),
            ),
        }
    }

    /// Delete, Command, Send, Receive or Signal: a request for one of the caller's shells.
    async fn shell_request(&self, caller: &Caller, req: Request) -> Reply {
        let rel = req.message_id.clone();
        let max_envelope = req.max_envelope_size.map_or(DEFAULT_MAX_ENVELOPE, |m| m as usize);
        let entry = match self.shell_for(caller, &req) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        self.sim.mark_used(&entry.meta.id);
        if self.sim.roll_shell_expiry(req.action.name()) {
            // Injected: the server forgot the shell before its lifetime.
            self.sim.expire_shell(&entry.meta.id);
            lock(&self.shells).remove(&entry.meta.id);
            if let Some(pid) = req.command_id().and_then(|c| Uuid::parse_str(c.trim()).ok()) {
                self.sim.note_pipeline_fault(pid, FaultKind::ShellExpiry);
            }
            return self.not_found(caller, &rel, &entry.meta.id);
        }
        *lock(&entry.last_activity) = Instant::now();
        match req.body.clone() {
            RequestBody::Delete => self.delete(caller, &entry, &rel).await,
            RequestBody::Command { command_id, arguments } => {
                self.command(caller, &entry, &rel, command_id, arguments).await
            }
            RequestBody::Send { command_id, data, .. } => self.send(caller, &entry, &rel, command_id, &data).await,
            RequestBody::Receive { command_id } => self.receive(caller, &entry, &req, command_id, max_envelope).await,
            RequestBody::Signal { command_id, .. } => {
                if let Some(cid) = command_id {
                    entry.state.lock().await.pipelines.remove(&cid.trim().to_ascii_uppercase());
                }
                Reply::ok(server::signal_response(&rel))
            }
            _ => Reply::fault(
                500,
                Some(&rel),
                sender_fault(&caller.machine, "InvalidMessage", "the body does not fit the action".into()),
            ),
        }
    }

    fn not_found(&self, caller: &Caller, rel: &str, shell_id: &str) -> Reply {
        Reply::fault(500, Some(rel), WsmanFault::shell_not_found(shell_id, Some(&caller.machine)))
    }

    /// The shell a request names, if it is this caller's and the request came with the cookie
    /// the shell was created under (else, as on a farm, the shell is not on "this" server).
    fn shell_for(&self, caller: &Caller, req: &Request) -> Result<Arc<ShellEntry>, Reply> {
        let Some(id) = req.selector_shell_id.as_deref().map(|s| s.trim().to_ascii_uppercase()) else {
            let text = "The WS-Management service cannot process the request because the request contained invalid \
                        selectors for the resource: the ShellId selector is missing."
                .to_string();
            let mut fault = sender_fault(&caller.machine, "InvalidSelectors", text);
            fault.code = Some(WSMAN_SHELL_NOT_FOUND);
            return Err(Reply::fault(500, Some(&req.message_id), fault));
        };
        let entry = lock(&self.shells).get(&id).cloned();
        match entry {
            Some(e) if e.meta.owner_key == caller.owner_key() && e.meta.cookie == caller.cookie => Ok(e),
            _ => Err(self.not_found(caller, &req.message_id, &id)),
        }
    }

    /// Whether the simulator still has the shell (it may have expired); forgets it if not.
    fn alive(&self, entry: &ShellEntry) -> bool {
        let alive = self.sim.list_shells(&entry.meta.owner).iter().any(|s| s.shell_id == entry.meta.id);
        if !alive {
            lock(&self.shells).remove(&entry.meta.id);
        }
        alive
    }

    async fn create(&self, caller: &Caller, req: Request) -> Reply {
        let rel = req.message_id.as_str();
        let m = caller.machine.as_str();
        let RequestBody::CreateShell { shell_id_attr, name, creation_xml, idle_timeout, .. } = req.body else {
            return Reply::fault(500, Some(rel), sender_fault(m, "InvalidMessage", "Create without rsp:Shell".into()));
        };
        let resource_uri = req.resource_uri.unwrap_or_default();
        let prefix = format!("{}/", ns::POWERSHELL);
        let configuration = match resource_uri.get(..prefix.len()) {
            Some(p) if p.eq_ignore_ascii_case(&prefix) && resource_uri.len() > prefix.len() => {
                resource_uri[prefix.len()..].to_string()
            }
            _ => {
                let text = format!(
                    "The WS-Management service cannot process the request. The resource URI ({resource_uri}) was not \
                     found in the WS-Management catalog."
                );
                let mut fault = sender_fault(m, "DestinationUnreachable", text);
                fault.code = Some(WSMAN_RESOURCE_NOT_FOUND);
                return Reply::fault(500, Some(rel), fault);
            }
        };
        let Some(tenant) = caller.tenant.clone().or_else(|| self.options.default_tenant.clone()) else {
            let text = "The request names no tenant: add DelegatedOrg=<tenant domain> to the connection URI.".into();
            return Reply::fault(500, Some(rel), sender_fault(m, "InvalidParameter", text));
        };
        let Some(creation_xml) = creation_xml else {
            let text = "This endpoint hosts PowerShell runspace pools only: Create needs a creationXml with the \
                        SESSION_CAPABILITY and INIT_RUNSPACEPOOL messages."
                .into();
            return Reply::fault(500, Some(rel), sender_fault(m, "InvalidParameter", text));
        };
        let (rpid, min_runspaces, max_runspaces) = match parse_creation(&creation_xml) {
            Ok(v) => v,
            Err(e) => {
                let text = format!("The creationXml does not hold a valid PSRP runspace pool opening: {e}");
                return Reply::fault(500, Some(rel), sender_fault(m, "InvalidParameter", text));
            }
        };
        let proposed = shell_id_attr.as_deref().and_then(|s| Uuid::parse_str(s.trim()).ok()).unwrap_or(rpid);

        pause(&self.sim, self.sim.latency().0).await;
        let shell_id =
            match self.sim.open_shell_as(&caller.upn, caller.credential(), &tenant, &configuration, Some(proposed)) {
                Ok(id) => id,
                Err(f) => return Reply::fault(f.http_status, Some(rel), sim_fault(&f, m)),
            };
        let owner = self
            .sim
            .list_shells(&caller.upn)
            .into_iter()
            .find(|s| s.shell_id == shell_id)
            .map_or_else(|| caller.upn.clone(), |s| s.owner);

        let mut state = ShellState {
            next_object_id: 1,
            pool_out: OutQueue::default(),
            pool_in: Defragmenter::new(),
            pipelines: HashMap::new(),
        };
        for msg in [
            pm::server_session_capability(rpid),
            pm::application_private_data(rpid, &[]),
            pm::runspace_pool_init_data(rpid, min_runspaces, max_runspaces),
            pm::runspace_pool_state(rpid, RunspacePoolState::Opened, None),
        ] {
            state.pool_out.push(&mut state.next_object_id, &msg);
        }
        let meta = ShellMeta {
            id: shell_id.clone(),
            rpid,
            owner,
            owner_key: caller.owner_key(),
            name,
            resource_uri,
            cookie: caller.cookie.clone(),
            client_ip: caller.client_ip.clone(),
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        };
        let info = self.describe(&meta, Duration::ZERO, Duration::ZERO);
        let entry =
            ShellEntry { meta, last_activity: Mutex::new(Instant::now()), state: tokio::sync::Mutex::new(state) };
        lock(&self.shells).insert(shell_id, Arc::new(entry));
        Reply::ok(server::create_response(rel, &caller.address, &info))
    }

    fn describe(&self, meta: &ShellMeta, run_time: Duration, inactivity: Duration) -> WsShell {
        WsShell {
            shell_id: meta.id.clone(),
            name: meta.name.clone(),
            resource_uri: Some(meta.resource_uri.clone()),
            owner: Some(meta.owner.clone()),
            client_ip: Some(meta.client_ip.clone()),
            process_id: Some(std::process::id()),
            idle_timeout: Some(meta.idle_timeout),
            input_streams: vec!["stdin".into(), "pr".into()],
            output_streams: vec!["stdout".into()],
            state: Some("Connected".into()),
            shell_run_time: Some(run_time),
            shell_inactivity: Some(inactivity),
        }
    }

    async fn delete(&self, caller: &Caller, entry: &ShellEntry, rel: &str) -> Reply {
        pause(&self.sim, self.sim.latency().2).await;
        lock(&self.shells).remove(&entry.meta.id);
        match self.sim.close_shell(&entry.meta.id) {
            Ok(()) => Reply::ok(server::delete_response(rel)),
            Err(f) => Reply::fault(f.http_status, Some(rel), sim_fault(&f, &caller.machine)),
        }
    }

    async fn command(
        &self,
        caller: &Caller,
        entry: &ShellEntry,
        rel: &str,
        command_id: Option<String>,
        arguments: Vec<Vec<u8>>,
    ) -> Reply {
        if !self.alive(entry) {
            return self.not_found(caller, rel, &entry.meta.id);
        }
        let command_id = command_id.map_or_else(|| upper(Uuid::new_v4()), |c| c.trim().to_ascii_uppercase());
        let mut state = entry.state.lock().await;
        if state.pipelines.contains_key(&command_id) {
            let text = format!("A command with CommandId {command_id} already exists in this shell.");
            return Reply::fault(500, Some(rel), sender_fault(&caller.machine, "AlreadyExists", text));
        }
        let mut pipeline = Pipeline::default();
        for arg in &arguments {
            if let Err(e) = pipeline.feed(arg) {
                let text = format!("The command arguments are not a valid PSRP CREATE_PIPELINE: {e}");
                return Reply::fault(500, Some(rel), sender_fault(&caller.machine, "InvalidParameter", text));
            }
        }
        if let Err(f) = self.execute(entry, &mut state, &mut pipeline).await {
            return Reply::fault(f.http_status, Some(rel), sim_fault(&f, &caller.machine));
        }
        state.pipelines.insert(command_id.clone(), pipeline);
        Reply::ok(server::command_response(rel, &command_id))
    }

    /// Runs a pipeline as soon as its CREATE_PIPELINE is complete, as WinRM starts a command on
    /// Command (not on the first Receive): the command latency, then the simulator. Output waits
    /// for Receives. A shell-level failure (shell gone, too many commands) is the fault of the
    /// request that completed the pipeline: the command did not start.
    async fn execute(
        &self,
        entry: &ShellEntry,
        state: &mut ShellState,
        pipeline: &mut Pipeline,
    ) -> Result<(), SimFault> {
        let (Some(pid), Some(create), false) = (pipeline.pid, pipeline.create.clone(), pipeline.executed) else {
            return Ok(());
        };
        pause(&self.sim, self.sim.latency().1).await;
        let rpid = entry.meta.rpid;
        let next = &mut state.next_object_id;
        match self.sim.run(&entry.meta.id, pid, &create.command, &create.parameters) {
            Ok(output) => {
                for obj in &output.objects {
                    pipeline.out.push(next, &pm::pipeline_output(rpid, pid, obj));
                }
                for text in &output.warnings {
                    pipeline.out.push(next, &pm::warning_record(rpid, pid, text));
                }
                for record in &output.errors {
                    pipeline.out.push(next, &pm::error_record(rpid, pid, record));
                }
                pipeline.out.push(next, &pm::pipeline_state(rpid, pid, PipelineState::Completed, None));
            }
            Err(SimFault { record: Some(record), .. }) => {
                pipeline.out.push(next, &pm::pipeline_state(rpid, pid, PipelineState::Failed, Some(&record)));
            }
            Err(f) => {
                if f.wsman_code == Some(WSMAN_SHELL_NOT_FOUND) {
                    lock(&self.shells).remove(&entry.meta.id);
                }
                return Err(f);
            }
        }
        pipeline.executed = true;
        Ok(())
    }

    async fn send(
        &self,
        caller: &Caller,
        entry: &ShellEntry,
        rel: &str,
        command_id: Option<String>,
        data: &[u8],
    ) -> Reply {
        if !self.alive(entry) {
            return self.not_found(caller, rel, &entry.meta.id);
        }
        let mut guard = entry.state.lock().await;
        let state = &mut *guard;
        let result = match command_id {
            Some(cid) => {
                let cid = cid.trim().to_ascii_uppercase();
                match state.pipelines.remove(&cid) {
                    Some(mut p) => {
                        let fed = p.feed(data);
                        if fed.is_ok() {
                            if let Err(f) = self.execute(entry, state, &mut p).await {
                                return Reply::fault(f.http_status, Some(rel), sim_fault(&f, &caller.machine));
                            }
                        }
                        state.pipelines.insert(cid, p);
                        fed
                    }
                    None => Err(format!("no command with CommandId {cid} in this shell")),
                }
            }
            None => pool_input(state, entry.meta.rpid, data),
        };
        match result {
            Ok(()) => Reply::ok(server::send_response(rel)),
            Err(e) => Reply::fault(
                500,
                Some(rel),
                sender_fault(&caller.machine, "InvalidParameter", format!("The input cannot be used: {e}")),
            ),
        }
    }

    /// The Receive response skeleton's size and the cost of one more rsp:Stream.
    fn receive_overhead(rel: &str, command_id: Option<&str>) -> (usize, usize) {
        let state = command_id.map(|c| CommandState {
            command_id: Some(c.to_string()),
            state: COMMAND_STATE_RUNNING.into(),
            exit_code: None,
        });
        let base = server::receive_response(rel, &[], state.as_ref()).len();
        let one =
            StreamData { name: "stdout".into(), command_id: command_id.map(str::to_string), data: vec![], end: true };
        let with_one = server::receive_response(rel, &[one], state.as_ref()).len();
        (base, with_one - base)
    }

    async fn nothing_to_say(&self, caller: &Caller, req: &Request) -> Reply {
        let wait = req.operation_timeout.unwrap_or(Duration::from_secs(20)).min(self.options.idle_receive_wait);
        tokio::time::sleep(wait).await;
        Reply::fault(500, Some(&req.message_id), WsmanFault::operation_timeout(Some(&caller.machine)))
    }

    async fn receive(
        &self,
        caller: &Caller,
        entry: &ShellEntry,
        req: &Request,
        command_id: Option<String>,
        max_envelope: usize,
    ) -> Reply {
        let rel = req.message_id.as_str();
        let command_id = command_id.map(|c| c.trim().to_ascii_uppercase());
        let (base, per_stream) = Self::receive_overhead(rel, command_id.as_deref());
        let budget = max_envelope.saturating_sub(base + ENVELOPE_MARGIN);
        let Some(cid) = command_id else {
            if !self.alive(entry) {
                return self.not_found(caller, rel, &entry.meta.id);
            }
            let mut state = entry.state.lock().await;
            if state.pool_out.is_empty() {
                drop(state);
                return self.nothing_to_say(caller, req).await;
            }
            let fragments = state.pool_out.drain(budget, per_stream);
            let streams: Vec<StreamData> = fragments
                .into_iter()
                .map(|data| StreamData { name: "stdout".into(), command_id: None, data, end: false })
                .collect();
            return Reply::ok(server::receive_response(rel, &streams, None));
        };

        // A shell that reaches its lifetime while a command's output waits still delivers it:
        // its end shows at the next Command. (A shell killed under a running command is the
        // injected early expiry.)
        let mut guard = entry.state.lock().await;
        let state = &mut *guard;
        let Some(pipeline) = state.pipelines.get_mut(&cid) else {
            let text = format!("The Windows Remote Shell has no command with CommandId {cid}.");
            return Reply::fault(500, Some(rel), sender_fault(&caller.machine, "InvalidSelectors", text));
        };
        if !pipeline.executed {
            // The CREATE_PIPELINE is still incomplete: nothing to say yet.
            drop(guard);
            return self.nothing_to_say(caller, req).await;
        }
        let fragments = pipeline.out.drain(budget, per_stream);
        let done = pipeline.out.is_empty();
        if done {
            state.pipelines.remove(&cid);
        }
        let count = fragments.len();
        let streams: Vec<StreamData> = fragments
            .into_iter()
            .enumerate()
            .map(|(i, data)| StreamData {
                name: "stdout".into(),
                command_id: Some(cid.clone()),
                data,
                end: done && i + 1 == count,
            })
            .collect();
        let command_state = CommandState {
            command_id: Some(cid.clone()),
            state: if done { COMMAND_STATE_DONE } else { COMMAND_STATE_RUNNING }.into(),
            exit_code: None,
        };
        Reply::ok(server::receive_response(rel, &streams, Some(&command_state)))
    }

    /// The caller's shells as WinRM lists them; forgets shells the simulator no longer has.
    fn list(&self, caller: &Caller) -> Vec<WsShell> {
        let live = self.sim.list_shells(&caller.upn);
        let now = self.sim.now();
        let owner_key = caller.owner_key();
        let mut shells = lock(&self.shells);
        // An expired shell is forgotten here, unless a command's output still waits in it (or
        // a request is working on it): that is delivered first.
        let settled = |e: &ShellEntry| e.state.try_lock().is_ok_and(|s| s.pipelines.is_empty());
        shells.retain(|id, e| e.meta.owner_key != owner_key || live.iter().any(|s| &s.shell_id == id) || !settled(e));
        live.iter()
            .map(|s| {
                let run_time = Duration::from_secs_f64((now - s.created).max(0.0));
                match shells.get(&s.shell_id) {
                    Some(e) => self.describe(&e.meta, run_time, lock(&e.last_activity).elapsed()),
                    None => WsShell {
                        shell_id: s.shell_id.clone(),
                        owner: Some(s.owner.clone()),
                        resource_uri: Some(crate::remote::wsman::powershell_resource_uri("Microsoft.Exchange")),
                        state: Some("Connected".into()),
                        shell_run_time: Some(run_time),
                        ..WsShell::default()
                    },
                }
            })
            .collect()
    }

    fn enumerate(&self, caller: &Caller, req: &Request) -> Reply {
        let rel = req.message_id.as_str();
        let RequestBody::Enumerate { optimize, max_elements } = req.body else {
            let text = "Enumerate without wsen:Enumerate".to_string();
            return Reply::fault(500, Some(rel), sender_fault(&caller.machine, "InvalidMessage", text));
        };
        let mut rest: VecDeque<WsShell> = self.list(caller).into();
        let first: Vec<WsShell> = if optimize {
            let n = max_elements.map_or(rest.len(), |m| m as usize);
            rest.drain(..n.min(rest.len())).collect()
        } else {
            Vec::new()
        };
        let context = if rest.is_empty() && optimize {
            None
        } else {
            let id = format!("uuid:{}", upper(Uuid::new_v4()));
            lock(&self.enumerations).insert(id.clone(), Enumeration { owner_key: caller.owner_key(), rest });
            Some(id)
        };
        Reply::ok(server::enumerate_response(rel, context.as_deref(), &first, context.is_none()))
    }

    fn pull(&self, caller: &Caller, req: &Request) -> Reply {
        let rel = req.message_id.as_str();
        let RequestBody::Pull { context, max_elements } = &req.body else {
            let text = "Pull without wsen:Pull".to_string();
            return Reply::fault(500, Some(rel), sender_fault(&caller.machine, "InvalidMessage", text));
        };
        let mut enumerations = lock(&self.enumerations);
        let Some(en) = enumerations.get_mut(context).filter(|e| e.owner_key == caller.owner_key()) else {
            let text = format!("The enumeration context {context} is not valid (unknown or finished).");
            return Reply::fault(500, Some(rel), sender_fault(&caller.machine, "InvalidEnumerationContext", text));
        };
        let n = max_elements.map_or(en.rest.len(), |m| (m as usize).max(1)).min(en.rest.len());
        let items: Vec<WsShell> = en.rest.drain(..n).collect();
        let end = en.rest.is_empty();
        if end {
            enumerations.remove(context);
        }
        Reply::ok(server::pull_response(rel, (!end).then_some(context.as_str()), &items, end))
    }
}

/// The RunspacePool id and runspace counts from creationXml (SESSION_CAPABILITY and
/// INIT_RUNSPACEPOOL).
fn parse_creation(bytes: &[u8]) -> Result<(Uuid, i32, i32), String> {
    let mut defrag = Defragmenter::new();
    let messages = defrag.push(bytes).map_err(|e| e.to_string())?;
    if !defrag.is_idle() {
        return Err("a message is incomplete".into());
    }
    let mut capability = false;
    let mut init = None;
    let mut rpid = None;
    for raw in messages {
        let msg = Message::decode(&raw).map_err(|e| e.to_string())?;
        rpid.get_or_insert(msg.rpid);
        match ClientMessage::parse(&msg).map_err(|e| e.to_string())? {
            ClientMessage::SessionCapability(_) => capability = true,
            ClientMessage::InitRunspacePool(i) => init = Some(i),
            _ => {}
        }
    }
    match (capability, init, rpid) {
        (true, Some(init), Some(rpid)) => Ok((rpid, init.min_runspaces, init.max_runspaces)),
        (false, ..) => Err("no SESSION_CAPABILITY".into()),
        _ => Err("no INIT_RUNSPACEPOOL".into()),
    }
}

/// Messages to the pool itself (Send without a CommandId): runspace-count calls are answered;
/// key exchange, host responses and the rest are ignored.
fn pool_input(state: &mut ShellState, rpid: Uuid, data: &[u8]) -> Result<(), String> {
    for raw in state.pool_in.push(data).map_err(|e| e.to_string())? {
        let msg = Message::decode(&raw).map_err(|e| e.to_string())?;
        let answer = match msg.message_type {
            MessageType::SetMaxRunspaces | MessageType::SetMinRunspaces => Some(PsValue::Bool(true)),
            MessageType::GetAvailableRunspaces => Some(PsValue::Int64(1)),
            _ => None,
        };
        if let Some(answer) = answer {
            let call_id = match msg.value() {
                Ok(PsValue::Object(o)) => o.get("ci").and_then(PsValue::as_i64).unwrap_or(0),
                _ => 0,
            };
            let reply = pm::runspace_availability(rpid, call_id, &answer);
            state.pool_out.push(&mut state.next_object_id, &reply);
        }
    }
    Ok(())
}
