//! Tests of the wire server, driven over HTTP with the crate's own WS-Management and PSRP client
//! builders (the codecs' client halves), so both directions of the codecs meet here.

use super::*;
use crate::config::SimulatorConfig;
use crate::remote::fault::{WSMAN_OPERATION_TIMEOUT, WSMAN_QUOTA_LIMIT, WSMAN_SHELL_NOT_FOUND};
use crate::remote::psrp::messages::{self as pm, PipelineState, RunspacePoolState, ServerMessage};
use crate::remote::psrp::{Defragmenter, Fragmenter, Message};
use crate::remote::wsman::fault::USER_QUOTA_TEXT;
use crate::remote::wsman::{envelope, response, RequestContext, StreamData, WsmanFault, CONTENT_TYPE};
use crate::remote::{FaultClass, PsValue};
use crate::sim::{sim_token, FaultKind, SimAccount};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use uuid::Uuid;

const CONTOSO: &str = "contoso.onmicrosoft.com";
const FABRIKAM: &str = "fabrikam.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";
const BOB: &str = "bob@partner.onmicrosoft.com";

fn sim_with(cfg: SimulatorConfig) -> Simulator {
    let accounts = vec![
        SimAccount { upn: ALICE.into(), password: "pa".into(), tenants: vec!["*".into()] },
        SimAccount { upn: BOB.into(), password: "pb".into(), tenants: vec![CONTOSO.into()] },
    ];
    Simulator::new(&cfg, accounts, vec![CONTOSO.into(), FABRIKAM.into()])
}

fn cfg() -> SimulatorConfig {
    SimulatorConfig {
        mailboxes_per_tenant: 30,
        open_latency_ms: 0,
        command_latency_ms: 0,
        close_latency_ms: 0,
        ..SimulatorConfig::default()
    }
}

fn quick() -> WireOptions {
    WireOptions { idle_receive_wait: Duration::from_millis(50), ..WireOptions::default() }
}

async fn start(sim: &Simulator, options: WireOptions) -> SocketAddr {
    let (addr, _task) = spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    addr
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn fault(&self) -> WsmanFault {
        WsmanFault::parse(&self.body).unwrap_or_else(|e| panic!("not a fault ({e}): {}", self.body))
    }
}

/// A WS-Management client over reqwest that keeps the affinity cookie by hand.
struct Client {
    http: reqwest::Client,
    url: String,
    user: String,
    password: String,
    cookie: Option<String>,
    ctx: RequestContext,
}

impl Client {
    fn new(addr: SocketAddr, user: &str, password: &str) -> Self {
        let url = format!("http://{addr}/powershell-liveid?DelegatedOrg={CONTOSO}");
        Self {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            ctx: RequestContext::powershell(url.clone(), "Microsoft.Exchange"),
            url,
            user: user.into(),
            password: password.into(),
            cookie: None,
        }
    }

    async fn post_to(&mut self, url: &str, body: String) -> Reply {
        let mut req = self
            .http
            .post(url)
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body);
        if let Some(c) = &self.cookie {
            req = req.header(reqwest::header::COOKIE, format!("MS-WSMAN={c}"));
        }
        let resp = req.send().await.unwrap();
        let headers = resp.headers().clone();
        if let Some(set) = headers.get(reqwest::header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let value = set.split(';').next().unwrap().strip_prefix("MS-WSMAN=").expect("the affinity cookie");
            self.cookie = Some(value.to_string());
        }
        Reply { status: resp.status().as_u16(), headers, body: resp.text().await.unwrap() }
    }

    async fn post(&mut self, body: String) -> Reply {
        let url = self.url.clone();
        self.post_to(&url, body).await
    }

    async fn create(&mut self, rpid: Uuid, name: Option<&str>) -> (Uuid, Reply) {
        let mut fragmenter = Fragmenter::new(32 * 1024).unwrap();
        let mut creation = Vec::new();
        for msg in [pm::client_session_capability(rpid), pm::init_runspace_pool(rpid)] {
            for f in fragmenter.fragment_encoded(&msg.encode()) {
                creation.extend(f);
            }
        }
        let (mid, body) = envelope::create_named_shell(&self.ctx, rpid, name, &creation, None);
        (mid, self.post(body).await)
    }

    /// Create + Receive until the pool is Opened. Returns the ShellId and the pool messages.
    async fn open(&mut self, name: Option<&str>) -> (String, Uuid, Vec<ServerMessage>) {
        let rpid = Uuid::new_v4();
        let (mid, reply) = self.create(rpid, name).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let created = response::parse_create_response(&reply.body, mid).unwrap();
        assert_eq!(created.shell_id, crate::remote::wsman::upper(rpid), "the proposed ShellId is kept");
        let mut defrag = Defragmenter::new();
        let mut messages = Vec::new();
        for _ in 0..10 {
            let (mid, body) = envelope::receive(&self.ctx, &created.shell_id, None);
            let reply = self.post(body).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            let r = response::parse_receive_response(&reply.body, mid).unwrap();
            messages.extend(decode(&mut defrag, &r.streams, rpid));
            if messages.iter().any(|m| matches!(m, ServerMessage::RunspacePoolState { .. })) {
                return (created.shell_id, rpid, messages);
            }
        }
        panic!("the pool never opened: {messages:?}");
    }

    /// Command with every CREATE_PIPELINE fragment in rsp:Arguments (or only the first, the
    /// rest sent with Send when `fragment_size` splits it).
    async fn command(
        &mut self,
        shell: &str,
        rpid: Uuid,
        cmdlet: &str,
        params: &[(String, PsValue)],
        fragment_size: usize,
    ) -> (Uuid, Reply) {
        let pid = Uuid::new_v4();
        let msg = pm::create_pipeline(rpid, pid, cmdlet, params).encode();
        let mut fragments = Fragmenter::new(fragment_size).unwrap().fragment_encoded(&msg).into_iter();
        let (mid, body) = envelope::command(&self.ctx, shell, pid, &fragments.next().unwrap());
        let reply = self.post(body).await;
        if reply.status != 200 {
            return (pid, reply);
        }
        let cid = response::parse_command_response(&reply.body, mid).unwrap().command_id;
        assert_eq!(cid, crate::remote::wsman::upper(pid));
        for f in fragments {
            let (mid, body) = envelope::send(&self.ctx, shell, Some(&cid), "stdin", &f);
            let r = self.post(body).await;
            assert_eq!(r.status, 200, "{}", r.body);
            response::parse_empty_response(&r.body, mid).unwrap();
        }
        (pid, reply)
    }

    /// Receives a pipeline's output until CommandState Done. Returns the messages and how many
    /// Receives it took.
    async fn receive_all(&mut self, shell: &str, rpid: Uuid, pid: Uuid) -> (Vec<ServerMessage>, usize) {
        let cid = crate::remote::wsman::upper(pid);
        let mut defrag = Defragmenter::new();
        let mut messages = Vec::new();
        for n in 1..=200 {
            let (mid, body) = envelope::receive(&self.ctx, shell, Some(&cid));
            let reply = self.post(body).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert!(reply.body.len() <= self.ctx.max_envelope_size as usize, "{} bytes", reply.body.len());
            let r = response::parse_receive_response(&reply.body, mid).unwrap();
            messages.extend(decode(&mut defrag, &r.streams, rpid));
            let state = r.command_state.expect("a CommandState");
            if state.is_done() {
                assert!(defrag.is_idle(), "Done with a message still incomplete");
                return (messages, n);
            }
            assert!(state.is_running());
        }
        panic!("the command never finished");
    }

    async fn run(&mut self, shell: &str, rpid: Uuid, cmdlet: &str, params: &[(String, PsValue)]) -> Vec<ServerMessage> {
        let (pid, reply) = self.command(shell, rpid, cmdlet, params, 32 * 1024).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        self.receive_all(shell, rpid, pid).await.0
    }

    async fn delete(&mut self, shell: &str) -> Reply {
        let (_, body) = envelope::delete(&self.ctx, shell);
        self.post(body).await
    }

    async fn enumerate(&mut self, max_elements: u32) -> Vec<crate::remote::wsman::ShellInfo> {
        let (mid, body) = envelope::enumerate_shells(&self.ctx, max_elements);
        let reply = self.post(body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let mut page = response::parse_enumerate_response(&reply.body, mid).unwrap();
        let mut items = std::mem::take(&mut page.items);
        while !page.end_of_sequence {
            let (mid, body) = envelope::pull_shells(&self.ctx, page.context.as_deref().unwrap(), max_elements);
            let reply = self.post(body).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            page = response::parse_pull_response(&reply.body, mid).unwrap();
            assert!(page.items.len() <= max_elements as usize);
            items.append(&mut page.items);
        }
        items
    }
}

fn decode(defrag: &mut Defragmenter, streams: &[StreamData], rpid: Uuid) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    for s in streams {
        assert_eq!(s.name, "stdout");
        for raw in defrag.push(&s.data).unwrap() {
            let msg = Message::decode(&raw).unwrap();
            assert_eq!(msg.rpid, rpid);
            out.push(ServerMessage::parse(&msg).unwrap());
        }
    }
    out
}

fn outputs(messages: &[ServerMessage]) -> Vec<&PsValue> {
    messages.iter().filter_map(|m| if let ServerMessage::PipelineOutput(v) = m { Some(v) } else { None }).collect()
}

fn final_state(messages: &[ServerMessage]) -> (PipelineState, Option<crate::remote::ErrorRecord>) {
    match messages.last() {
        Some(ServerMessage::PipelineState { state, error }) => (*state, error.clone()),
        other => panic!("the last message is not PIPELINE_STATE: {other:?}"),
    }
}

#[tokio::test]
async fn create_receive_command_receive_delete_round_trip() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, opening) = c.open(None).await;
    assert!(matches!(opening[0], ServerMessage::SessionCapability(_)), "{opening:?}");
    assert!(opening.iter().any(|m| matches!(m, ServerMessage::ApplicationPrivateData(_))));
    assert!(opening.iter().any(|m| matches!(m, ServerMessage::RunspacePoolInitData)));
    assert!(matches!(
        opening.last(),
        Some(ServerMessage::RunspacePoolState { state: RunspacePoolState::Opened, error: None })
    ));
    assert_eq!(sim.list_shells(ALICE)[0].shell_id, shell);

    // Nothing more for the pool: the benign operation timeout.
    let (_, body) = envelope::receive(&c.ctx, &shell, None);
    let reply = c.post(body).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.fault().code, Some(WSMAN_OPERATION_TIMEOUT));
    assert!(reply.fault().is_operation_timeout());

    let (pid, reply) =
        c.command(&shell, rpid, "Get-Mailbox", &[("ResultSize".into(), PsValue::Int32(2))], 32 * 1024).await;
    assert_eq!(reply.status, 200);
    let (messages, receives) = c.receive_all(&shell, rpid, pid).await;
    assert_eq!(receives, 1);
    let objs = outputs(&messages);
    assert_eq!(objs.len(), 2);
    let PsValue::Object(first) = objs[0] else { panic!("{:?}", objs[0]) };
    assert!(first.get("PrimarySmtpAddress").and_then(PsValue::as_str).unwrap().ends_with(CONTOSO));
    assert!(messages.iter().any(|m| matches!(m, ServerMessage::Warning(w) if w.contains("ResultSize"))));
    assert_eq!(final_state(&messages), (PipelineState::Completed, None));
    assert_eq!(sim.stats().executions.get(&pid), Some(&1), "the PSRP pipeline id reaches the simulator");

    // A terminating error: PIPELINE_STATE Failed with the record.
    let messages = c.run(&shell, rpid, "Get-Nothing", &[]).await;
    let (state, error) = final_state(&messages);
    assert_eq!(state, PipelineState::Failed);
    let error = error.expect("ExceptionAsErrorRecord");
    assert_eq!(crate::remote::classify_error_record(&error), FaultClass::UnknownCmdlet);

    // Signal is accepted (also for a finished command).
    let (mid, body) = envelope::signal(&c.ctx, &shell, &crate::remote::wsman::upper(pid), envelope::SIGNAL_TERMINATE);
    let reply = c.post(body).await;
    response::parse_empty_response(&reply.body, mid).unwrap();

    let reply = c.delete(&shell).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(sim.list_shells(ALICE).is_empty());
    assert_eq!(sim.stats().shells_closed, 1);
}

#[tokio::test]
async fn create_pipeline_in_several_fragments_is_reassembled_from_send() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, _) = c.open(None).await;
    let params = vec![
        ("ResultSize".to_string(), PsValue::Int32(1)),
        ("Identity".to_string(), PsValue::String("user004".into())),
    ];
    let whole = pm::create_pipeline(rpid, Uuid::nil(), "Get-Mailbox", &params).encode().len();
    let (pid, reply) = c.command(&shell, rpid, "Get-Mailbox", &params, 120).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(whole > 4 * 99, "the message really is in many fragments ({whole} bytes)");
    let (messages, _) = c.receive_all(&shell, rpid, pid).await;
    let objs = outputs(&messages);
    assert_eq!(objs.len(), 1, "{messages:?}");
    let PsValue::Object(o) = objs[0] else { panic!() };
    assert_eq!(o.get("Name").and_then(PsValue::as_str), Some("user004"));
    assert_eq!(final_state(&messages).0, PipelineState::Completed);
}

#[tokio::test]
async fn large_output_is_split_across_receives_for_a_small_envelope() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    c.ctx.max_envelope_size = 8192;
    let (shell, rpid, _) = c.open(None).await;
    let (pid, _) = c
        .command(&shell, rpid, "Get-Mailbox", &[("ResultSize".into(), PsValue::String("Unlimited".into()))], 4000)
        .await;
    let (messages, receives) = c.receive_all(&shell, rpid, pid).await;
    let objs = outputs(&messages);
    assert_eq!(objs.len(), 30);
    let mut names: Vec<_> = objs
        .iter()
        .map(|o| if let PsValue::Object(o) = o { o.get("Name").and_then(PsValue::as_str).unwrap() } else { "" })
        .collect();
    names.dedup();
    assert_eq!(names.len(), 30);
    assert!(receives > 3, "{receives} Receives for 30 mailboxes in 8 KiB envelopes");
    assert_eq!(final_state(&messages).0, PipelineState::Completed);

    // Below the minimum envelope: a fault, not a loop of empty answers.
    c.ctx.max_envelope_size = 1000;
    let (_, body) = envelope::receive(&c.ctx, &shell, None);
    let reply = c.post(body).await;
    assert_eq!(reply.status, 500);
    assert!(reply.fault().message.contains("MaxEnvelopeSize"));
}

#[tokio::test]
async fn the_fourth_shell_gets_the_quota_fault_in_winrm_shape() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    for _ in 0..3 {
        c.open(None).await;
    }
    let (_, reply) = c.create(Uuid::new_v4(), None).await;
    assert_eq!(reply.status, 500);
    assert!(reply.headers[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("application/soap+xml"));
    let fault = reply.fault();
    assert_eq!(fault.code, Some(WSMAN_QUOTA_LIMIT));
    assert_eq!(fault.subcode_name(), Some("QuotaLimit"));
    assert_eq!(fault.message, USER_QUOTA_TEXT);
    assert_eq!(fault.class(500), FaultClass::UserShellQuotaExceeded);
    assert_eq!(fault.machine.as_deref(), Some("127.0.0.1"));

    // Other service refusals keep their texts and classes.
    let mut bob = Client::new(addr, BOB, "pb");
    bob.url = bob.url.replace(CONTOSO, FABRIKAM);
    bob.ctx.to = bob.url.clone();
    let (_, reply) = bob.create(Uuid::new_v4(), None).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.fault().class(500), FaultClass::TenantPermissionDenied, "{}", reply.body);
}

#[tokio::test]
async fn a_deleted_shell_is_not_found() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, _) = c.open(None).await;
    assert_eq!(c.delete(&shell).await.status, 200);
    for reply in [c.command(&shell, rpid, "Get-Mailbox", &[], 32 * 1024).await.1, c.delete(&shell).await] {
        assert_eq!(reply.status, 500);
        let fault = reply.fault();
        assert_eq!(fault.code, Some(WSMAN_SHELL_NOT_FOUND));
        assert_eq!(fault.class(500), FaultClass::SessionExpired);
    }

    // A shell the service expired: the next Command finds it gone, and nothing runs.
    let (shell, rpid, _) = c.open(None).await;
    sim.set_shell_lifetime(Duration::ZERO);
    let (pid, reply) = c.command(&shell, rpid, "Get-Mailbox", &[], 32 * 1024).await;
    assert_eq!(reply.fault().code, Some(WSMAN_SHELL_NOT_FOUND), "{}", reply.body);
    assert_eq!(sim.stats().executions.get(&pid), None);
}

#[tokio::test]
async fn output_waiting_in_a_shell_that_reaches_its_lifetime_is_still_delivered() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, _) = c.open(None).await;
    let (pid, reply) = c.command(&shell, rpid, "Get-Mailbox", &[], 32 * 1024).await;
    assert_eq!(reply.status, 200);
    sim.set_shell_lifetime(Duration::ZERO);
    // Another client of the same user lists shells meanwhile (which forgets expired ones).
    let mut other = Client::new(addr, ALICE, "pa");
    other.enumerate(10).await;
    let (messages, _) = c.receive_all(&shell, rpid, pid).await;
    assert_eq!(final_state(&messages).0, PipelineState::Completed);
    assert_eq!(outputs(&messages).len(), 30);
    // The shell is over: the next Command finds it gone.
    let (_, reply) = c.command(&shell, rpid, "Get-Mailbox", &[], 32 * 1024).await;
    assert_eq!(reply.fault().code, Some(WSMAN_SHELL_NOT_FOUND), "{}", reply.body);
}

#[tokio::test]
async fn too_many_commands_is_a_shell_fault() {
    let sim = sim_with(SimulatorConfig { max_commands_per_shell: 1, ..cfg() });
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, _) = c.open(None).await;
    c.run(&shell, rpid, "Get-Mailbox", &[]).await;
    // The command starts on Command, as in WinRM, so the Command itself is refused.
    let (pid, reply) = c.command(&shell, rpid, "Get-Mailbox", &[], 32 * 1024).await;
    assert_eq!(reply.status, 500);
    assert!(reply.fault().message.contains("maximum number of commands"), "{}", reply.body);
    assert_eq!(sim.stats().executions.get(&pid), None, "it did not run");
}

#[tokio::test]
async fn requests_without_the_shells_cookie_do_not_find_it() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (mid, reply) = c.create(Uuid::new_v4(), None).await;
    let set = reply.headers[reqwest::header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("MS-WSMAN=") && set.ends_with("; path=/"), "{set}");
    let shell = response::parse_create_response(&reply.body, mid).unwrap().shell_id;

    // With the cookie: served, and no new cookie is set.
    let (_, body) = envelope::receive(&c.ctx, &shell, None);
    let reply = c.post(body).await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get(reqwest::header::SET_COOKIE).is_none());

    // Without it, or with another server's: the shell is not found.
    let good = c.cookie.clone();
    for cookie in [None, Some("another-server".to_string())] {
        c.cookie = cookie;
        let (_, body) = envelope::receive(&c.ctx, &shell, None);
        let reply = c.post(body).await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.fault().code, Some(WSMAN_SHELL_NOT_FOUND));
    }
    c.cookie = good;
    assert_eq!(c.delete(&shell).await.status, 200);
}

#[tokio::test]
async fn redirect_first_sends_cookieless_clients_elsewhere_once() {
    let sim = sim_with(cfg());
    let addr = start(&sim, WireOptions { redirect_first: true, ..quick() }).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (_, reply) = c.create(Uuid::new_v4(), None).await;
    assert_eq!(reply.status, 302);
    let location = reply.headers[reqwest::header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(location, format!("{}&redirected=1", c.url));
    assert!(sim.list_shells(ALICE).is_empty(), "a redirected request does nothing");
    assert!(c.cookie.is_none());

    // Following the redirect: served, and the cookie keeps later requests on this server.
    c.url = location;
    c.ctx.to = c.url.clone();
    let (shell, _, _) = c.open(Some("after-redirect")).await;
    assert!(c.cookie.is_some());
    c.url = c.url.replace("&redirected=1", "");
    assert_eq!(c.delete(&shell).await.status, 200);
}

#[tokio::test]
async fn enumeration_lists_the_users_shells_with_their_names() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (one, _, _) = c.open(Some("psbroker:alice:1")).await;
    let (two, _, _) = c.open(None).await;
    let mut bob = Client::new(addr, BOB, "pb");
    let (_bobs, _, _) = bob.open(Some("bob's")).await;

    let shells = c.enumerate(1).await;
    assert_eq!(shells.len(), 2, "{shells:?}");
    let first = shells.iter().find(|s| s.shell_id == one).expect("first shell");
    assert_eq!(first.name.as_deref(), Some("psbroker:alice:1"));
    assert_eq!(first.owner.as_deref(), Some(ALICE));
    assert_eq!(first.resource_uri.as_deref(), Some("http://schemas.microsoft.com/powershell/Microsoft.Exchange"));
    assert_eq!(first.state.as_deref(), Some("Connected"));
    assert!(first.shell_run_time.is_some() && first.idle_timeout.is_some());
    assert_eq!(shells.iter().find(|s| s.shell_id == two).unwrap().name, None);

    // Deleting by the enumerated ResourceUri.
    let (_, body) = envelope::delete_with_resource_uri(&c.ctx, first.resource_uri.as_deref().unwrap(), &one);
    assert_eq!(c.post(body).await.status, 200);
    assert_eq!(c.enumerate(10).await.len(), 1);
}

#[tokio::test]
async fn authentication_failures_are_401() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;

    let mut bad = Client::new(addr, ALICE, "wrong");
    let (_, reply) = bad.create(Uuid::new_v4(), None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.headers[reqwest::header::WWW_AUTHENTICATE], r#"Basic realm="WSMAN""#);
    assert_eq!(reply.fault().class(401), FaultClass::LogonFailed, "{}", reply.body);
    assert!(sim.list_shells(ALICE).is_empty());

    // No Authorization header at all.
    let url = format!("http://{addr}/PowerShell-LiveID?DelegatedOrg={CONTOSO}");
    let resp = reqwest::Client::new().post(&url).body("<x/>").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().contains_key(reqwest::header::WWW_AUTHENTICATE));

    // The bearer-in-Basic form.
    let mut token = Client::new(addr, ALICE, &format!("Bearer {}", sim_token(ALICE)));
    token.url.push_str("&BasicAuthToOAuthConversion=true");
    token.ctx.to = token.url.clone();
    let (shell, _, _) = token.open(None).await;
    assert_eq!(token.delete(&shell).await.status, 200);
    let mut wrong = Client::new(addr, ALICE, &format!("Bearer {}", sim_token(BOB)));
    wrong.url.push_str("&BasicAuthToOAuthConversion=true");
    assert_eq!(wrong.create(Uuid::new_v4(), None).await.1.status, 401);
}

#[tokio::test]
async fn malformed_requests_get_faults() {
    let sim = sim_with(cfg());
    let addr = start(&sim, WireOptions { default_tenant: Some(CONTOSO.into()), ..quick() }).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let reply = c.post("<s:Envelope".into()).await;
    assert_eq!(reply.status, 400);
    assert!(reply.fault().message.contains("not well-formed XML"), "{}", reply.body);

    // Well-formed but no action.
    let reply =
        c.post(r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>"#.into()).await;
    assert_eq!(reply.status, 500);
    assert!(reply.fault().message.contains("wsa:Action"), "{}", reply.body);

    // Create whose creationXml is not PSRP.
    let (_, body) = envelope::create_shell(&c.ctx, Uuid::new_v4(), b"not fragments at all, just text", None);
    let reply = c.post(body).await;
    assert_eq!(reply.status, 500);
    assert!(reply.fault().message.contains("creationXml"), "{}", reply.body);

    // An unknown configuration.
    let mut other = Client::new(addr, ALICE, "pa");
    other.ctx.resource_uri = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd".into();
    let (_, reply) = other.create(Uuid::new_v4(), None).await;
    assert_eq!(reply.fault().code, Some(2_150_858_811));

    // Garbage base64 in a Send, and a GET.
    let (shell, _, _) = c.open(None).await;
    let (_, body) = envelope::send(&c.ctx, &shell, None, "pr", b"x");
    let reply = c.post(body.replace(&B64.encode(b"x"), "!!!")).await;
    assert_eq!(reply.status, 500);
    let resp = reqwest::get(format!("http://{addr}/wsman")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let resp = reqwest::get(format!("http://{addr}/elsewhere")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // /PowerShell without DelegatedOrg uses the default tenant.
    let mut plain = Client::new(addr, ALICE, "pa");
    plain.url = format!("http://{addr}/PowerShell");
    plain.ctx.to = plain.url.clone();
    let (shell, _, _) = plain.open(None).await;
    assert_eq!(sim.list_shells(ALICE).iter().find(|s| s.shell_id == shell).unwrap().tenant, CONTOSO);
}

#[tokio::test]
async fn latency_and_shutdown() {
    let sim = sim_with(SimulatorConfig { open_latency_ms: 150, time_speedup: 1.0, ..cfg() });
    let token = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(sim.clone(), listener, WireOptions { shutdown: Some(token.clone()), ..quick() }));
    let mut c = Client::new(addr, ALICE, "pa");
    let started = std::time::Instant::now();
    c.open(None).await;
    assert!(started.elapsed() >= Duration::from_millis(150), "the open latency applies");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").unwrap().unwrap();
}

#[tokio::test]
async fn run_standalone_serves_until_shutdown() {
    let config = Config::from_toml(&format!(
        "[profiles.default]\nkind = \"simulator\"\n[simulator]\nopen_latency_ms = 0\n\
         [[admins]]\nname = \"alice\"\nupn = \"{ALICE}\"\ncredential = \"literal:pa\"\n\
         [[tenants]]\ndomain = \"{CONTOSO}\"\n"
    ))
    .unwrap();
    let token = CancellationToken::new();
    let options = WireOptions { shutdown: Some(token.clone()), ..quick() };
    let cfg = config.clone();
    let running = tokio::spawn(async move { run_standalone(&cfg, "127.0.0.1:0", options).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!running.is_finished());
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), running).await.expect("stops").unwrap().unwrap();

    let err = run_standalone(&config, "not an address", quick()).await.unwrap_err();
    assert!(err.to_string().contains("cannot listen on not an address"), "{err}");
}

// ---- injected faults -----------------------------------------------------------------------

fn faults(set: impl FnOnce(&mut crate::config::FaultConfig)) -> crate::config::FaultConfig {
    let mut f = crate::config::FaultConfig::default();
    set(&mut f);
    f
}

/// Posts a request and reports whether any answer came back at all.
async fn answered(c: &mut Client, body: String) -> Result<Reply, reqwest::Error> {
    let url = c.url.clone();
    let resp = c
        .http
        .post(url)
        .basic_auth(&c.user, Some(&c.password))
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .header(reqwest::header::COOKIE, format!("MS-WSMAN={}", c.cookie.clone().unwrap_or_default()))
        .body(body)
        .send()
        .await?;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Ok(Reply { status, headers, body: resp.text().await? })
}

#[tokio::test]
async fn dropped_connections_give_no_answer_before_or_after_the_work() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, _) = c.open(None).await;

    sim.set_faults(faults(|f| f.drop_before = 1.0));
    let pid = Uuid::new_v4();
    let msg = pm::create_pipeline(rpid, pid, "Set-Mailbox", &[("Identity".into(), PsValue::String("user001".into()))]);
    let fragment = Fragmenter::new(32 * 1024).unwrap().fragment_encoded(&msg.encode()).remove(0);
    let (_, body) = envelope::command(&c.ctx, &shell, pid, &fragment);
    let err = answered(&mut c, body.clone()).await.err().expect("no answer");
    assert!(!err.is_timeout() && !err.is_status(), "{err}");
    assert_eq!(sim.stats().executions.get(&pid), None, "dropped before the work");

    sim.set_faults(faults(|f| f.drop_after = 1.0));
    assert!(answered(&mut c, body).await.is_err(), "no answer");
    assert_eq!(sim.stats().executions.get(&pid), Some(&1), "dropped after the work: it ran");
    let stats = sim.stats();
    assert_eq!((stats.injected[&FaultKind::DropBefore], stats.injected[&FaultKind::DropAfter]), (1, 1));
    assert_eq!(stats.pipeline_faults[&pid], [FaultKind::DropBefore, FaultKind::DropAfter]);
}

#[tokio::test]
async fn load_balancer_and_web_server_errors_are_bare_and_503_says_when_to_come_back() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    sim.set_faults(faults(|f| {
        f.http_503 = 1.0;
        f.retry_after_seconds = 7;
    }));
    let (_, reply) = c.create(Uuid::new_v4(), None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers.get(reqwest::header::RETRY_AFTER).unwrap(), "7");
    assert!(WsmanFault::parse(&reply.body).is_err(), "no SOAP: {}", reply.body);
    assert_eq!(sim.stats().shells_opened, 0, "not processed");
    assert!(reply.headers.get(reqwest::header::SET_COOKIE).is_none(), "no affinity from a refusal");

    sim.set_faults(faults(|f| f.http_500 = 1.0));
    for _ in 0..20 {
        let (_, reply) = c.create(Uuid::new_v4(), None).await;
        assert_eq!(reply.status, 500);
        assert!(WsmanFault::parse(&reply.body).is_err(), "no SOAP: {}", reply.body);
    }
    let opened = sim.stats().shells_opened;
    assert!((1..20).contains(&opened), "some 500s were processed, some not: {opened}");
    assert_eq!(sim.stats().injected[&FaultKind::Http500], 20);
}

#[tokio::test]
async fn spikes_delay_the_answer_and_early_expiry_forgets_the_shell() {
    let sim = sim_with(cfg());
    let addr = start(&sim, quick()).await;
    let mut c = Client::new(addr, ALICE, "pa");
    let (shell, rpid, _) = c.open(None).await;
    sim.set_faults(faults(|f| {
        f.latency_spike = 1.0;
        f.latency_spike_min_ms = 300;
        f.latency_spike_ms = 300;
        f.actions = vec!["Command".into()];
    }));
    let started = std::time::Instant::now();
    let (pid, reply) = c.command(&shell, rpid, "Get-Mailbox", &[], 32 * 1024).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sim.stats().executions.get(&pid), Some(&1));

    sim.set_faults(faults(|f| {
        f.shell_expiry = 1.0;
        f.actions = vec!["Receive".into()];
    }));
    let (_, body) = envelope::receive(&c.ctx, &shell, Some(&crate::remote::wsman::upper(pid)));
    let reply = c.post(body).await;
    assert_eq!(reply.fault().code, Some(WSMAN_SHELL_NOT_FOUND), "{}", reply.body);
    assert!(sim.list_shells(ALICE).is_empty(), "the service forgot it");
    let stats = sim.stats();
    assert_eq!(stats.injected[&FaultKind::ShellExpiry], 1);
    assert_eq!(stats.pipeline_faults[&pid], [FaultKind::LatencySpike, FaultKind::ShellExpiry]);
}
