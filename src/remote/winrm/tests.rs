//! The connector against a small in-test WS-Management server (axum, the `wsman::server` and
//! PSRP server builders): enough of WinRM's behaviour to drive every path of the client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use secrecy::SecretString;
use uuid::Uuid;

use super::*;
use crate::remote::psrp::messages::{self, ClientMessage, PipelineState, RunspacePoolState};
use crate::remote::psrp::{Defragmenter, Fragmenter, Message};
use crate::remote::wsman::server::{self, Action, RequestBody};
use crate::remote::wsman::{CommandState, ShellInfo, StreamData, WsmanFault, COMMAND_STATE_DONE};
use crate::remote::{Command, ErrorRecord, PsValue};

const UPN: &str = "admin@contoso.onmicrosoft.com";
const PASSWORD: &str = "correct horse";
const NAME: &str = "psbroker:test-instance";
const EXCHANGE: &str = "http://schemas.microsoft.com/powershell/Microsoft.Exchange";

// ---------------------------------------------------------------------------------------------
// The fake server

#[derive(Default)]
struct Behaviour {
    /// Answer Create with this fault.
    create_fault: Option<WsmanFault>,
    /// Break the pool while opening, with this error record.
    pool_broken: Option<ErrorRecord>,
    /// How many Receives get the benign operation-timeout fault before a real answer.
    receive_timeouts: usize,
    /// Set `MS-WSMAN` on Create and answer requests without it with shell-not-found.
    require_cookie: bool,
    /// The expected credential (Basic `upn:password`).
    password: Option<String>,
}

struct FakeCommand {
    pid: Uuid,
    input: Defragmenter,
    output: Vec<u8>,
    finished: bool,
}

struct FakeShell {
    name: Option<String>,
    resource_uri: String,
    rpid: Uuid,
    input: Defragmenter,
    output: Vec<u8>,
    fragmenter: Fragmenter,
    commands: BTreeMap<String, FakeCommand>,
}

impl FakeShell {
    fn new(name: Option<String>, resource_uri: String, rpid: Uuid) -> Self {
        Self {
            name,
            resource_uri,
            rpid,
            input: Defragmenter::new(),
            output: Vec::new(),
            // Small fragments: the client must reassemble across fragments and streams.
            fragmenter: Fragmenter::new(90).unwrap(),
            commands: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
struct Fake {
    behaviour: Behaviour,
    shells: BTreeMap<String, FakeShell>,
    /// Every request: action, command id, stream.
    log: Vec<String>,
    /// The Cookie header of every request.
    cookies: Vec<Option<String>>,
    /// The shell names given at Create.
    created_names: Vec<Option<String>>,
    /// The parameters of every pipeline started.
    pipelines: Vec<(String, Vec<(String, PsValue)>)>,
    timeouts_sent: usize,
    /// The wsa:To of every request.
    to: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn soap(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, crate::remote::wsman::CONTENT_TYPE)], body).into_response()
}

fn fault(relates_to: &str, f: &WsmanFault) -> Response {
    soap(StatusCode::INTERNAL_SERVER_ERROR, server::fault_response(Some(relates_to), f))
}

fn emit(fragmenter: &mut Fragmenter, out: &mut Vec<u8>, message: Message) {
    for f in fragmenter.fragment_encoded(&message.encode()) {
        out.extend_from_slice(&f);
    }
}

fn record(message: &str, id: &str) -> ErrorRecord {
    ErrorRecord {
        message: message.into(),
        category: "NotSpecified".into(),
        fully_qualified_error_id: id.into(),
        target: None,
    }
}

/// What the fake's cmdlets do.
fn run_cmdlet(shell: &mut FakeShell, cid: &str, cmdlet: &str, params: &[(String, PsValue)]) {
    let rpid = shell.rpid;
    let cmd = shell.commands.get_mut(cid).unwrap();
    let pid = cmd.pid;
    let mut msgs = Vec::new();
    let state = match cmdlet {
        "Get-Thing" => {
            msgs.push(messages::pipeline_output(rpid, pid, &PsValue::String("first".into())));
            msgs.push(messages::warning_record(rpid, pid, "This cmdlet is deprecated."));
            msgs.push(messages::pipeline_output(
                rpid,
                pid,
                &PsValue::Dict(vec![(PsValue::String("n".into()), PsValue::Int32(42))]),
            ));
            (PipelineState::Completed, None)
        }
        "Get-Partly" => {
            msgs.push(messages::pipeline_output(rpid, pid, &PsValue::Int32(1)));
            msgs.push(messages::error_record(
                rpid,
                pid,
                &record("The object 'x' couldn't be found.", "NotFound,Get-Partly"),
            ));
            (PipelineState::Completed, None)
        }
        "Stop-Me" => (PipelineState::Stopped, None),
        "Echo" => {
            for (_, v) in params {
                msgs.push(messages::pipeline_output(rpid, pid, v));
            }
            (PipelineState::Completed, None)
        }
        other => (
            PipelineState::Failed,
            Some(record(
                &format!("The term '{other}' is not recognized as the name of a cmdlet."),
                "CommandNotFoundException",
            )),
        ),
    };
    msgs.push(messages::pipeline_state(rpid, pid, state.0, state.1.as_ref()));
    for m in msgs {
        emit(&mut shell.fragmenter, &mut cmd.output, m);
    }
    cmd.finished = true;
}

fn feed_pool(fake: &mut Fake, shell_id: &str, data: &[u8]) {
    let broken = fake.behaviour.pool_broken.clone();
    let shell = fake.shells.get_mut(shell_id).unwrap();
    for bytes in shell.input.push(data).unwrap() {
        let msg = Message::decode(&bytes).unwrap();
        if let ClientMessage::InitRunspacePool(_) = ClientMessage::parse(&msg).unwrap() {
            let rpid = shell.rpid;
            let answers = match &broken {
                Some(record) => vec![messages::runspace_pool_state(rpid, RunspacePoolState::Broken, Some(record))],
                None => vec![
                    messages::server_session_capability(rpid),
                    messages::application_private_data(rpid, &[]),
                    messages::runspace_pool_init_data(rpid, 1, 1),
                    messages::runspace_pool_state(rpid, RunspacePoolState::Opened, None),
                ],
            };
            for m in answers {
                emit(&mut shell.fragmenter, &mut shell.output, m);
            }
        }
    }
}

fn feed_command(fake: &mut Fake, shell_id: &str, cid: &str, data: &[u8]) {
    let shell = fake.shells.get_mut(shell_id).unwrap();
    let completed = shell.commands.get_mut(cid).unwrap().input.push(data).unwrap();
    for bytes in completed {
        let msg = Message::decode(&bytes).unwrap();
        if let ClientMessage::CreatePipeline(cp) = ClientMessage::parse(&msg).unwrap() {
            assert_eq!(msg.rpid, shell.rpid);
            run_cmdlet(shell, cid, &cp.command, &cp.parameters);
            fake.pipelines.push((cp.command, cp.parameters));
        }
    }
}

/// Splits output bytes over several rsp:Stream elements.
fn streams(data: Vec<u8>, command_id: Option<&str>) -> Vec<StreamData> {
    data.chunks(150)
        .map(|c| StreamData {
            name: "stdout".into(),
            command_id: command_id.map(str::to_string),
            data: c.to_vec(),
            end: false,
        })
        .collect()
}

fn handle(fake: &mut Fake, headers: &HeaderMap, body: &str, address: &str) -> Response {
    let expected = format!("{UPN}:{}", fake.behaviour.password.as_deref().unwrap_or(PASSWORD));
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| B64.decode(v).ok())
        .is_some_and(|v| v == expected.as_bytes());
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "Access is denied.").into_response();
    }
    let req = server::parse_request(body).unwrap_or_else(|e| panic!("unparseable request: {e}\n{body}"));
    let mid = req.message_id.clone();
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).map(str::to_string);
    fake.cookies.push(cookie.clone());
    let detail = match &req.body {
        RequestBody::Send { command_id, stream, .. } => format!(" {stream} {}", command_id.is_some()),
        RequestBody::Receive { command_id } => format!(" {}", command_id.is_some()),
        _ => String::new(),
    };
    fake.log.push(format!("{:?}{detail}", req.action));
    fake.to.push(req.to.clone().unwrap_or_default());
    let shell_id = req.selector_shell_id.clone().unwrap_or_default();
    // The affinity cookie pins a shell; enumerating the user's shells needs none.
    if fake.behaviour.require_cookie && !matches!(req.action, Action::Create | Action::Enumerate | Action::Pull) {
        let want = format!("MS-WSMAN={shell_id}");
        if !cookie.is_some_and(|c| c.split("; ").any(|p| p == want)) {
            return fault(&mid, &WsmanFault::shell_not_found(&shell_id, None));
        }
    }
    let needs_shell = !matches!(req.action, Action::Create | Action::Enumerate | Action::Pull);
    if needs_shell && !fake.shells.contains_key(&shell_id) {
        return fault(&mid, &WsmanFault::shell_not_found(&shell_id, None));
    }
    match req.body {
        RequestBody::CreateShell { shell_id_attr, name, creation_xml, .. } => {
            if let Some(f) = &fake.behaviour.create_fault {
                return fault(&mid, f);
            }
            let id = shell_id_attr.unwrap();
            fake.created_names.push(name.clone());
            let uri = req.resource_uri.clone().unwrap();
            fake.shells.insert(id.clone(), FakeShell::new(name.clone(), uri.clone(), Uuid::parse_str(&id).unwrap()));
            feed_pool(fake, &id, &creation_xml.unwrap());
            let info = ShellInfo { shell_id: id.clone(), name, resource_uri: Some(uri), ..Default::default() };
            let mut response = soap(StatusCode::OK, server::create_response(&mid, address, &info));
            if fake.behaviour.require_cookie {
                let value = format!("MS-WSMAN={id}; path=/; secure; HttpOnly").parse().unwrap();
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        RequestBody::Send { command_id, data, .. } => {
            match command_id {
                Some(cid) => feed_command(fake, &shell_id, &cid, &data),
                None => feed_pool(fake, &shell_id, &data),
            }
            soap(StatusCode::OK, server::send_response(&mid))
        }
        RequestBody::Command { command_id, arguments } => {
            let cid = command_id.unwrap();
            let shell = fake.shells.get_mut(&shell_id).unwrap();
            let cmd = FakeCommand {
                pid: Uuid::parse_str(&cid).unwrap(),
                input: Defragmenter::new(),
                output: vec![],
                finished: false,
            };
            shell.commands.insert(cid.clone(), cmd);
            for a in arguments {
                feed_command(fake, &shell_id, &cid, &a);
            }
            soap(StatusCode::OK, server::command_response(&mid, &cid))
        }
        RequestBody::Receive { command_id } => {
            if fake.timeouts_sent < fake.behaviour.receive_timeouts {
                fake.timeouts_sent += 1;
                return fault(&mid, &WsmanFault::operation_timeout(None));
            }
            let shell = fake.shells.get_mut(&shell_id).unwrap();
            match command_id {
                None if shell.output.is_empty() => fault(&mid, &WsmanFault::operation_timeout(None)),
                None => {
                    let data = std::mem::take(&mut shell.output);
                    soap(StatusCode::OK, server::receive_response(&mid, &streams(data, None), None))
                }
                Some(cid) => {
                    let cmd = shell.commands.get_mut(&cid).unwrap();
                    if !cmd.finished {
                        return fault(&mid, &WsmanFault::operation_timeout(None));
                    }
                    let data = std::mem::take(&mut cmd.output);
                    let state = CommandState {
                        command_id: Some(cid.clone()),
                        state: COMMAND_STATE_DONE.into(),
                        exit_code: Some(0),
                    };
                    soap(StatusCode::OK, server::receive_response(&mid, &streams(data, Some(&cid)), Some(&state)))
                }
            }
        }
        RequestBody::Signal { .. } => soap(StatusCode::OK, server::signal_response(&mid)),
        RequestBody::Delete => {
            fake.shells.remove(&shell_id);
            soap(StatusCode::OK, server::delete_response(&mid))
        }
        RequestBody::Enumerate { .. } | RequestBody::Pull { .. } => {
            let items: Vec<ShellInfo> = fake
                .shells
                .iter()
                .map(|(id, s)| ShellInfo {
                    shell_id: id.clone(),
                    name: s.name.clone(),
                    resource_uri: Some(s.resource_uri.clone()),
                    owner: Some(UPN.into()),
                    ..Default::default()
                })
                .collect();
            // One item in the EnumerateResponse, the rest by Pull.
            if req.action == Action::Enumerate {
                let end = items.len() <= 1;
                let first = &items[..items.len().min(1)];
                soap(StatusCode::OK, server::enumerate_response(&mid, Some("ctx-1"), first, end))
            } else {
                soap(StatusCode::OK, server::pull_response(&mid, None, items.get(1..).unwrap_or(&[]), true))
            }
        }
        other => panic!("unexpected request {other:?}"),
    }
}

struct Server {
    addr: SocketAddr,
    fake: Shared,
}

impl Server {
    async fn start(behaviour: Behaviour) -> Server {
        let fake: Shared = Arc::new(Mutex::new(Fake { behaviour, ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let address = format!("http://{addr}/wsman");
        let app = Router::new()
            .route(
                "/wsman",
                post(move |State(fake): State<Shared>, headers: HeaderMap, body: String| {
                    let address = address.clone();
                    async move { handle(&mut fake.lock().unwrap(), &headers, &body, &address) }
                }),
            )
            .route(
                "/old",
                post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/wsman?moved=1")]).into_response() }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    StatusCode::OK
                }),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { addr, fake }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn target(&self, path: &str) -> SessionTarget {
        SessionTarget {
            admin_upn: UPN.into(),
            credential: SecretString::from(PASSWORD),
            tenant: "contoso.onmicrosoft.com".into(),
            connection_uri: self.url(path),
            configuration_name: "Microsoft.Exchange".into(),
            tokens: None,
        }
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.fake.lock().unwrap()
    }

    fn count(&self, entry: &str) -> usize {
        self.fake().log.iter().filter(|l| l.as_str() == entry).count()
    }

    /// Waits for a background delete.
    async fn wait_for_no_shells(&self) {
        for _ in 0..100 {
            if self.fake().shells.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("shells left: {:?}", self.fake().shells.keys().collect::<Vec<_>>());
    }
}

fn options() -> WinrmOptions {
    WinrmOptions {
        allow_plain_http: true,
        request_timeout: Duration::from_secs(10),
        operation_timeout: Duration::from_secs(2),
        shell_name: NAME.into(),
        ..Default::default()
    }
}

fn connector(options: WinrmOptions) -> WinrmConnector {
    WinrmConnector::new(options).unwrap()
}

fn command(cmdlet: &str, parameters: Vec<(String, PsValue)>) -> Command {
    Command { invocation_id: Uuid::new_v4(), cmdlet: cmdlet.into(), parameters }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn open_invoke_close() {
    let server = Server::start(Behaviour::default()).await;
    let c = connector(options());
    let session = c.open(&server.target("/wsman")).await.unwrap();
    assert_eq!(server.fake().created_names, vec![Some(NAME.to_string())]);
    let id = session.remote_id();
    assert!(server.fake().shells.contains_key(&id), "{id}");

    let out = session.invoke(&command("Get-Thing", vec![])).await.unwrap();
    assert_eq!(out.objects[0], PsValue::String("first".into()));
    assert_eq!(out.objects[1], PsValue::Dict(vec![(PsValue::String("n".into()), PsValue::Int32(42))]));
    assert_eq!(out.warnings, vec!["This cmdlet is deprecated.".to_string()]);
    assert!(out.errors.is_empty());
    assert_eq!(server.count("Signal"), 1, "{:?}", server.fake().log);

    session.close().await.unwrap();
    assert!(server.fake().shells.is_empty());
    // Closing twice is fine; invoking on a closed session is not.
    session.close().await.unwrap();
    let err = session.invoke(&command("Get-Thing", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::SessionExpired);
}

#[tokio::test]
async fn non_terminating_errors_come_with_the_output() {
    let server = Server::start(Behaviour::default()).await;
    let session = connector(options()).open(&server.target("/wsman")).await.unwrap();
    let out = session.invoke(&command("Get-Partly", vec![])).await.unwrap();
    assert_eq!(out.objects, vec![PsValue::Int32(1)]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].fully_qualified_error_id, "NotFound,Get-Partly");
    session.close().await.unwrap();
}

#[tokio::test]
async fn terminating_errors_are_classified_from_the_record() {
    let server = Server::start(Behaviour::default()).await;
    let session = connector(options()).open(&server.target("/wsman")).await.unwrap();
    let err = session.invoke(&command("Get-Nothing", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UnknownCmdlet);
    assert!(err.message.contains("Get-Nothing"), "{}", err.message);
    assert_eq!(err.record.unwrap().fully_qualified_error_id, "CommandNotFoundException");
    let err = session.invoke(&command("Stop-Me", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::CmdletError);
    // The session is still usable, and every command was signalled.
    session.invoke(&command("Get-Thing", vec![])).await.unwrap();
    assert_eq!(server.count("Signal"), 3);
    session.close().await.unwrap();
}

#[tokio::test]
async fn create_faults_are_classified() {
    let tenant_text = "The WS-Management service cannot process the request. The maximum number of concurrent shells for this tenant has been exceeded. Close existing shells or raise the quota for this tenant.";
    let permission = "The user 'admin@contoso.onmicrosoft.com' does not have permission to manage this tenant. Permissions can be granted by assigning the user to the appropriate RBAC role.";
    let disabled = "The ability to connect to this tenant by using a remote PowerShell session has been disabled. Please contact Lync Help to check Tenant Powershell Policy of this tenant.";
    let with_text = |text: &str| WsmanFault {
        code: Some(2_144_108_477),
        subcode: None,
        reason: text.into(),
        message: text.into(),
        soap_code: Some("s:Sender".into()),
        machine: None,
    };
    let cases = [
        (WsmanFault::user_shell_quota(Some("EXHMB01")), FaultClass::UserShellQuotaExceeded),
        (with_text(tenant_text), FaultClass::TenantShellQuotaExceeded),
        (with_text(permission), FaultClass::TenantPermissionDenied),
        (with_text(disabled), FaultClass::TenantRemotePowerShellDisabled),
        (WsmanFault::shell_not_found("X", None), FaultClass::SessionExpired),
    ];
    for (fault, class) in cases {
        let server = Server::start(Behaviour { create_fault: Some(fault), ..Default::default() }).await;
        let err = connector(options()).open_session(&server.target("/wsman")).await.unwrap_err();
        assert_eq!(err.class, class, "{}", err.message);
    }
}

#[tokio::test]
async fn wrong_password_is_logon_failed() {
    let server = Server::start(Behaviour { password: Some("other".into()), ..Default::default() }).await;
    let err = connector(options()).open_session(&server.target("/wsman")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed);
    assert!(err.message.contains("401") && err.message.contains("Access is denied"), "{}", err.message);
}

#[tokio::test]
async fn a_broken_pool_fails_the_open_and_deletes_the_shell() {
    let text = "Fail to create a runspace because you have exceeded the maximum number of connections allowed : 3 for the policy party : MaxConcurrency";
    let broken = record(text, "System.Management.Automation.Remoting.PSRemotingDataStructureException");
    let server = Server::start(Behaviour { pool_broken: Some(broken), ..Default::default() }).await;
    let err = connector(options()).open_session(&server.target("/wsman")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UserShellQuotaExceeded, "{}", err.message);
    assert!(err.record.is_some());
    server.wait_for_no_shells().await;
}

#[tokio::test]
async fn operation_timeouts_on_receive_are_reissued() {
    let server = Server::start(Behaviour { receive_timeouts: 3, ..Default::default() }).await;
    let session = connector(options()).open(&server.target("/wsman")).await.unwrap();
    assert_eq!(server.fake().timeouts_sent, 3);
    assert!(server.count("Receive false") >= 4, "{:?}", server.fake().log);
    session.invoke(&command("Get-Thing", vec![])).await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test]
async fn small_envelopes_fragment_create_and_pipeline_with_send() {
    let server = Server::start(Behaviour::default()).await;
    let c = connector(WinrmOptions { max_envelope_size: 2600, ..options() });
    let session = c.open(&server.target("/wsman")).await.unwrap();
    assert!(server.count("Send stdin false") >= 1, "pool fragments sent: {:?}", server.fake().log);
    let long = "x".repeat(6000) + "_end";
    let params =
        vec![("Identity".to_string(), PsValue::String(long.clone())), ("ResultSize".into(), PsValue::Int32(7))];
    let out = session.invoke(&command("Echo", params.clone())).await.unwrap();
    assert_eq!(out.objects, vec![PsValue::String(long), PsValue::Int32(7)]);
    assert!(server.count("Send stdin true") >= 3, "{:?}", server.fake().log);
    assert_eq!(server.fake().pipelines, vec![("Echo".to_string(), params)]);
    session.close().await.unwrap();
}

#[tokio::test]
async fn cookies_are_sent_back() {
    let server = Server::start(Behaviour { require_cookie: true, ..Default::default() }).await;
    let c = connector(options());
    let a = c.open(&server.target("/wsman")).await.unwrap();
    let b = c.open(&server.target("/wsman")).await.unwrap();
    a.invoke(&command("Get-Thing", vec![])).await.unwrap();
    b.invoke(&command("Get-Thing", vec![])).await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
    let fake = server.fake();
    // Each session's affinity probe and Create had no cookie (this fake sets it on Create);
    // every later request had its own session's.
    assert_eq!(fake.cookies.iter().filter(|c| c.is_none()).count(), 4);
    assert!(
        fake.cookies.iter().flatten().all(|c| c.starts_with("MS-WSMAN=") && !c.contains(';')),
        "{:?}",
        fake.cookies
    );
}

#[tokio::test]
async fn redirects_are_followed_only_when_allowed() {
    let server = Server::start(Behaviour::default()).await;
    let err = connector(options()).open_session(&server.target("/old")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol);
    assert!(err.message.contains("redirection is not allowed by the profile"), "{}", err.message);
    assert!(server.fake().shells.is_empty());

    let c = connector(WinrmOptions { allow_redirection: true, ..options() });
    let session = c.open_session(&server.target("/old")).await.unwrap();
    assert_eq!(session.endpoint(), server.url("/wsman?moved=1"));
    session.invoke(&command("Get-Thing", vec![])).await.unwrap();
    session.close().await.unwrap();
    assert!(server.fake().shells.is_empty());
}

#[tokio::test]
async fn bearer_tokens_ride_on_basic_with_the_conversion_flag() {
    let token = "Bearer eyJ0eXAiOiJKV1QifQ.e30.sig";
    let server = Server::start(Behaviour { password: Some(token.into()), ..Default::default() }).await;
    let mut target = server.target("/wsman?DelegatedOrg=contoso.onmicrosoft.com");
    target.credential = SecretString::from(token);
    let session = connector(options()).open_session(&target).await.unwrap();
    session.invoke(&command("Get-Thing", vec![])).await.unwrap();
    session.close().await.unwrap();
    let want = server.url("/wsman?DelegatedOrg=contoso.onmicrosoft.com&BasicAuthToOAuthConversion=true");
    assert!(server.fake().to.iter().all(|to| *to == want), "{:?}", server.fake().to);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let server = Server::start(Behaviour::default()).await;
    let c = connector(WinrmOptions { allow_plain_http: false, ..options() });
    let err = c.open_session(&server.target("/wsman")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol);
    assert!(err.message.contains("http://"), "{}", err.message);
    assert!(server.fake().log.is_empty());
}

#[tokio::test]
async fn connection_refused_is_connection_lost() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let target = SessionTarget {
        admin_upn: UPN.into(),
        credential: SecretString::from(PASSWORD),
        tenant: "t".into(),
        connection_uri: format!("http://{addr}/wsman"),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    };
    let err = connector(options()).open_session(&target).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ConnectionLost, "{}", err.message);
}

#[tokio::test]
async fn a_slow_server_is_a_timeout() {
    let server = Server::start(Behaviour::default()).await;
    let c = connector(WinrmOptions { request_timeout: Duration::from_millis(200), ..options() });
    let err = c.open_session(&server.target("/slow")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Timeout, "{}", err.message);
}

#[tokio::test]
async fn reap_orphans_deletes_only_our_shells() {
    let server = Server::start(Behaviour::default()).await;
    {
        let mut fake = server.fake();
        for (id, name) in [("A", Some(NAME)), ("B", Some("other-tool")), ("C", Some(NAME)), ("D", None)] {
            fake.shells.insert(id.into(), FakeShell::new(name.map(str::to_string), EXCHANGE.into(), Uuid::new_v4()));
        }
    }
    let c = connector(options());
    let target = server.target("/wsman");
    let listed = c.enumerate_shells(&target).await.unwrap();
    assert_eq!(listed.len(), 4);
    assert!(server.count("Pull") >= 1);
    assert_eq!(
        listed[1],
        RemoteShell {
            shell_id: "B".into(),
            name: Some("other-tool".into()),
            resource_uri: Some(EXCHANGE.into()),
            owner: Some(UPN.into()),
        }
    );
    assert_eq!(c.reap_orphans(&target, NAME).await.unwrap(), 2);
    let left: Vec<String> = server.fake().shells.keys().cloned().collect();
    assert_eq!(left, ["B", "D"]);
    // Deleting a shell that is already gone is fine.
    c.delete_shell(&target, "A", EXCHANGE).await.unwrap();
    // The trait's default does nothing.
    let sim = crate::sim::Simulator::new(&crate::config::Config::demo().simulator, vec![], vec![]).connector();
    assert_eq!(sim.reap_orphans(&target, NAME).await.unwrap(), 0);
}

#[tokio::test]
async fn dropping_a_session_deletes_its_shell() {
    let server = Server::start(Behaviour::default()).await;
    let session = connector(options()).open(&server.target("/wsman")).await.unwrap();
    assert_eq!(server.fake().shells.len(), 1);
    drop(session);
    server.wait_for_no_shells().await;
}

#[tokio::test]
async fn a_vanished_shell_is_session_expired() {
    let server = Server::start(Behaviour::default()).await;
    let session = connector(options()).open(&server.target("/wsman")).await.unwrap();
    server.fake().shells.clear();
    let err = session.invoke(&command("Get-Thing", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::SessionExpired);
    // Delete of an unknown shell is not an error.
    session.close().await.unwrap();
}

#[test]
fn options_are_validated() {
    assert!(WinrmConnector::new(WinrmOptions { shell_name: " ".into(), ..options() }).is_err());
    assert!(WinrmConnector::new(WinrmOptions { max_envelope_size: 100, ..options() }).is_err());
    assert!(WinrmConnector::new(WinrmOptions { request_timeout: Duration::ZERO, ..options() }).is_err());
    let d = WinrmOptions::default();
    assert_eq!((d.max_envelope_size, d.operation_timeout), (153_600, Duration::from_secs(20)));
    assert!(!d.allow_plain_http && !d.allow_redirection && !d.accept_invalid_certs);
}
