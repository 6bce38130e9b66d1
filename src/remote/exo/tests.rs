//! The connector against the simulator's REST service over HTTP on loopback, with a token
//! source that mints the simulator's tokens.

use super::*;
use crate::config::{FaultConfig, SimulatorConfig};
use crate::identity::{AccessToken, Actor, TokenSource};
use crate::remote::value::TYPE_NAMES_KEY;
use crate::remote::winrm::{WinrmConnector, WinrmOptions};
use crate::remote::{Command, CommandOutput, PsValue};
use crate::sim::rest::MANAGE_AS_APP;
use crate::sim::tokens::SimClaims;
use crate::sim::{SimAccount, Simulator};
use secrecy::SecretString;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

const TENANT: &str = "contoso.onmicrosoft.com";
const OTHER: &str = "fabrikam.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";
const APP_ID: &str = "6e1b1f7a-4f5e-4a55-9d55-0a7c2f1e9b10";

fn simulator(configure: impl FnOnce(&mut SimulatorConfig)) -> Simulator {
    let mut cfg = SimulatorConfig {
        mailboxes_per_tenant: 25,
        open_latency_ms: 0,
        command_latency_ms: 0,
        close_latency_ms: 0,
        ..SimulatorConfig::default()
    };
    configure(&mut cfg);
    let accounts = vec![SimAccount { upn: ALICE.into(), password: "pa".into(), tenants: vec!["*".into()] }];
    Simulator::new(&cfg, accounts, vec![TENANT.into(), OTHER.into()])
}

async fn serve(sim: &Simulator) -> SocketAddr {
    crate::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap().0
}

fn options(addr: SocketAddr) -> ExoOptions {
    ExoOptions {
        base_url: format!("http://{addr}"),
        allow_plain_http: true,
        request_timeout: Duration::from_secs(20),
        ..ExoOptions::default()
    }
}

fn connector(addr: SocketAddr, configure: impl FnOnce(&mut ExoOptions)) -> ExoConnector {
    let mut o = options(addr);
    configure(&mut o);
    ExoConnector::new(o).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// What the next token minted without claims looks like.
#[derive(Debug, Clone, Copy)]
enum Next {
    Fresh,
    Expired,
}

/// A token source minting the simulator's tokens, cached per (tenant, scope) as the real one
/// is, counting what it is asked.
struct TestTokens {
    sim: Simulator,
    actor: Actor,
    roles: Vec<String>,
    amr: Vec<String>,
    cache: Mutex<HashMap<(String, String), AccessToken>>,
    next: Mutex<Next>,
    issued: AtomicU32,
    invalidated: AtomicU32,
    claims: Mutex<Vec<String>>,
}

impl TestTokens {
    fn new(sim: &Simulator, actor: Actor) -> Arc<TestTokens> {
        let app = actor == Actor::App;
        Arc::new(TestTokens {
            sim: sim.clone(),
            actor,
            roles: if app { vec![MANAGE_AS_APP.into()] } else { vec![] },
            amr: if app { vec![] } else { vec!["pwd".into(), "mfa".into()] },
            cache: Mutex::new(HashMap::new()),
            next: Mutex::new(Next::Fresh),
            issued: AtomicU32::new(0),
            invalidated: AtomicU32::new(0),
            claims: Mutex::new(Vec::new()),
        })
    }

    fn app(sim: &Simulator) -> Arc<TestTokens> {
        TestTokens::new(sim, Actor::App)
    }

    fn alice(sim: &Simulator) -> Arc<TestTokens> {
        TestTokens::new(sim, Actor::User { upn: ALICE.into() })
    }

    fn with(self: Arc<Self>, f: impl FnOnce(&mut TestTokens)) -> Arc<TestTokens> {
        let mut t = Arc::into_inner(self).expect("not shared yet");
        f(&mut t);
        Arc::new(t)
    }
}

#[async_trait]
impl TokenSource for TestTokens {
    async fn token(&self, tenant: &str, scope: &str, claims: Option<&str>) -> Result<AccessToken, RemoteError> {
        let key = (tenant.to_ascii_lowercase(), scope.to_string());
        if claims.is_none() {
            if let Some(t) = self.cache.lock().unwrap().get(&key) {
                return Ok(t.clone());
            }
        }
        let tid = self.sim.tenant_id(tenant).expect("a simulated tenant").to_string();
        // A token answering a claims challenge satisfies its `nbf`, as Entra ID's would.
        let nbf = claims
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|c| c.pointer("/access_token/nbf/value").and_then(|v| v.as_str()).and_then(|v| v.parse().ok()));
        let next = std::mem::replace(&mut *self.next.lock().unwrap(), Next::Fresh);
        let (iat, exp) = match (claims, next) {
            (None, Next::Expired) => (now() - 7200, now() - 3600),
            _ => (now().max(nbf.unwrap_or(0)), now() + 3600),
        };
        let upn = match &self.actor {
            Actor::User { upn } => Some(upn.clone()),
            Actor::App => None,
        };
        let bearer = self.sim.access_tokens().issue(&SimClaims {
            aud: scope.trim_end_matches("/.default").to_string(),
            tid: tid.clone(),
            exp,
            iat,
            appid: APP_ID.into(),
            scp: upn.as_ref().map(|_| "Exchange.Manage".to_string()),
            upn,
            amr: self.amr.clone(),
            roles: self.roles.clone(),
        });
        self.issued.fetch_add(1, Ordering::SeqCst);
        let token = AccessToken {
            bearer: SecretString::from(bearer),
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            tenant_id: Some(tid),
            actor: self.actor.clone(),
        };
        match claims {
            Some(c) => self.claims.lock().unwrap().push(c.to_string()),
            None => {
                self.cache.lock().unwrap().insert(key, token.clone());
            }
        }
        Ok(token)
    }

    fn invalidate(&self, tenant: &str, scope: &str) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
        self.cache.lock().unwrap().remove(&(tenant.to_ascii_lowercase(), scope.to_string()));
    }
}

fn target(tokens: &Arc<TestTokens>, tenant: &str) -> SessionTarget {
    let upn = match &tokens.actor {
        Actor::User { upn } => upn.clone(),
        Actor::App => "app@partner.onmicrosoft.com".into(),
    };
    SessionTarget {
        admin_upn: upn,
        credential: SecretString::from(String::new()),
        tenant: tenant.into(),
        connection_uri: String::new(),
        configuration_name: String::new(),
        tokens: Some(tokens.clone() as Arc<dyn TokenSource>),
    }
}

fn command(cmdlet: &str, parameters: Vec<(&str, PsValue)>) -> Command {
    Command {
        invocation_id: Uuid::new_v4(),
        cmdlet: cmdlet.into(),
        parameters: parameters.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
    }
}

fn names(output: &CommandOutput) -> Vec<String> {
    output
        .objects
        .iter()
        .map(|o| match o {
            PsValue::Object(obj) => obj.get("Name").map(PsValue::display).unwrap_or_default(),
            other => other.display(),
        })
        .collect()
}

/// An object as callers see it, without the type names (REST answers carry none).
fn as_caller_sees(value: &PsValue) -> serde_json::Value {
    let mut json = value.to_json();
    if let Some(map) = json.as_object_mut() {
        map.remove(TYPE_NAMES_KEY);
    }
    json
}

fn calls(sim: &Simulator, operation: &str) -> Vec<crate::sim::rest::RestCall> {
    sim.rest_stats().calls.into_iter().filter(|c| c.operation == operation).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_mailbox_pages_through_2500_mailboxes_in_order() {
    let sim = simulator(|c| c.mailboxes_per_tenant = 2500);
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let get = command("Get-Mailbox", vec![("ResultSize", "Unlimited".into())]);
    let out = session.invoke(&get).await.unwrap();
    assert_eq!(out.objects.len(), 2500);
    let expected: Vec<String> = (1..=2500).map(|i| format!("user{i:03}")).collect();
    assert_eq!(names(&out), expected, "all pages, in order");
    assert_eq!(out.request_id, Some(get.invocation_id.to_string()));
    assert!(out.warnings.is_empty() && out.errors.is_empty());
    // The same objects as the simulator's own run (typed values survive the JSON).
    let direct = sim.run_stateless(TENANT, Uuid::new_v4(), "Get-Mailbox", &get.parameters).unwrap();
    for (rest, direct) in out.objects.iter().zip(&direct.objects).step_by(499) {
        assert_eq!(as_caller_sees(rest), as_caller_sees(direct));
    }
    let PsValue::Object(first) = &out.objects[0] else { panic!("an object") };
    assert!(matches!(first.get("Guid"), Some(PsValue::Guid(_))));
    assert!(matches!(first.get("WhenCreated"), Some(PsValue::DateTime(_))));
    // Three requests (1000 + 1000 + 500) under one client-request-id, each asking for 1000; the
    // cmdlet ran once.
    let invokes = calls(&sim, "InvokeCommand");
    assert_eq!(invokes.len(), 3);
    for call in &invokes {
        assert_eq!(call.client_request_id.as_deref(), Some(&*get.invocation_id.to_string()));
        assert_eq!(call.max_page_size, Some(1000));
    }
    let tid = sim.tenant_id(TENANT).unwrap();
    assert_eq!(
        invokes[0].anchor_mailbox.as_deref(),
        Some(&*format!("APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tid}"))
    );
    assert_eq!(sim.stats().executions.get(&get.invocation_id), Some(&1));
    assert_eq!(sim.rest_stats().open_cursors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_rest_is_seen_over_rest_and_over_winrm() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::alice(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let set = command(
        "Set-Mailbox",
        vec![("Identity", "user007".into()), ("Office", "Building 42".into()), ("Confirm", false.into())],
    );
    let out = session.invoke(&set).await.unwrap();
    assert!(out.objects.is_empty() && out.errors.is_empty(), "{out:?}");
    assert_eq!(calls(&sim, "InvokeCommand")[0].anchor_mailbox.as_deref(), Some(&*format!("UPN:{ALICE}")));
    let get = command("Get-Mailbox", vec![("Identity", "user007".into())]);
    let over_rest = session.invoke(&get).await.unwrap();
    let PsValue::Object(mailbox) = &over_rest.objects[0] else { panic!("an object") };
    assert_eq!(mailbox.get("Office"), Some(&PsValue::String("Building 42".into())));

    let winrm = WinrmConnector::new(WinrmOptions { allow_plain_http: true, ..WinrmOptions::default() }).unwrap();
    let psrp_target = SessionTarget {
        admin_upn: ALICE.into(),
        credential: SecretString::from("pa".to_string()),
        tenant: TENANT.into(),
        connection_uri: format!("http://{addr}/powershell-liveid?DelegatedOrg={TENANT}"),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    };
    let shell = winrm.open(&psrp_target).await.unwrap();
    let over_psrp = shell.invoke(&get).await.unwrap();
    shell.close().await.unwrap();
    let PsValue::Object(seen) = &over_psrp.objects[0] else { panic!("an object") };
    assert_eq!(seen.get("Office"), Some(&PsValue::String("Building 42".into())));
    assert_eq!(
        as_caller_sees(&over_psrp.objects[0]),
        as_caller_sees(&over_rest.objects[0]),
        "one world, two transports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashtable_and_array_parameters_arrive_typed() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let table = |entries: &[(&str, PsValue)]| {
        PsValue::Dict(entries.iter().map(|(k, v)| (PsValue::String(k.to_string()), v.clone())).collect())
    };
    let parameters = vec![
        ("Identity", PsValue::String("user001".into())),
        ("EmailAddresses", table(&[("Add", PsValue::List(vec!["a@contoso.com".into(), "b@contoso.com".into()]))])),
        ("Rules", PsValue::List(vec![table(&[("Name", "r1".into())]), table(&[("Name", "r2".into())])])),
        ("Members", PsValue::List(vec!["x".into(), PsValue::Int32(2)])),
        ("Start", PsValue::DateTime("2024-05-01T10:00:00+02:00".into())),
        ("Force", PsValue::Bool(true)),
        ("Big", PsValue::Int64(5_000_000_000)),
    ];
    let probe = command("Set-Mailbox", parameters);
    let err = session.invoke(&probe).await.unwrap_err();
    assert_eq!(err.class, FaultClass::InvalidParameter, "the simulator's Set-Mailbox has none of these: {err}");
    assert_eq!(err.request_id, Some(probe.invocation_id.to_string()));
    let (cmdlet, received) = sim.received_parameters(probe.invocation_id).expect("the service received the call");
    assert_eq!(cmdlet, "Set-Mailbox");
    let expected: Vec<(String, PsValue)> = probe
        .parameters
        .iter()
        .map(|(n, v)| match v {
            PsValue::DateTime(_) => (n.clone(), PsValue::String("2024-05-01T08:00:00Z".into())),
            _ => (n.clone(), v.clone()),
        })
        .collect();
    assert_eq!(
        received, expected,
        "hashtables, arrays of hashtables, arrays, switches and numbers as sent; the date in UTC"
    );
    // The cmdlet itself sees a hashtable where it wants a string, and says so in its words.
    let office =
        command("Set-Mailbox", vec![("Identity", "user001".into()), ("Office", table(&[("a", PsValue::Int32(1))]))]);
    let err = session.invoke(&office).await.unwrap_err();
    assert_eq!(err.class, FaultClass::InvalidParameter);
    assert!(err.message.contains("System.Collections.Hashtable"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_and_non_terminating_errors_come_back() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let out = session.invoke(&command("Get-Mailbox", vec![("ResultSize", PsValue::Int32(5))])).await.unwrap();
    assert_eq!(out.objects.len(), 5);
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].starts_with("By default, only the first 5 items are returned."), "{:?}", out.warnings);
    let out = session.invoke(&command("Get-Mailbox", vec![("Identity", "nobody".into())])).await.unwrap();
    assert!(out.objects.is_empty());
    assert_eq!(out.errors.len(), 1, "a non-terminating error next to the (empty) output");
    let e = &out.errors[0];
    assert!(e.message.contains("couldn't be found"), "{e:?}");
    assert!(e.fully_qualified_error_id.contains("ManagementObjectNotFoundException"), "{e:?}");
    assert_eq!(e.target.as_deref(), Some("nobody"));
    let unchanged = command("Set-Mailbox", vec![("Identity", "user001".into()), ("Office", "18/2111".into())]);
    let out = session.invoke(&unchanged).await.unwrap();
    assert!(out.warnings[0].contains("no settings of 'user001' have been modified"), "{:?}", out.warnings);
    // With -ErrorAction Stop the same error ends the call: 404 NotFound, the cmdlet's message.
    let stop = command("Get-Mailbox", vec![("Identity", "nobody".into()), ("ErrorAction", "Stop".into())]);
    let err = session.invoke(&stop).await.unwrap_err();
    assert_eq!(err.class, FaultClass::CmdletError);
    assert!(err.message.starts_with("The operation couldn't be performed because object 'nobody'"), "{}", err.message);
    assert_eq!(err.request_id, Some(stop.invocation_id.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cmdlet_is_told_apart_despite_its_junk_body() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let err = session.invoke(&command("Get-Nothing", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UnknownCmdlet, "{err}");
    assert!(err.message.contains("'Get-Nothing'"), "{}", err.message);
    // The session is fine afterwards.
    assert_eq!(session.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap().objects.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_once() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    *tokens.next.lock().unwrap() = Next::Expired;
    let c = connector(addr, |_| {});
    let session = c.open(&target(&tokens, TENANT)).await.expect("the probe's 401 got a fresh token");
    assert_eq!((tokens.issued.load(Ordering::SeqCst), tokens.invalidated.load(Ordering::SeqCst)), (2, 1));
    session.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap();
    // Expired again (as a token revoked mid-session would be): the call itself retries once.
    tokens.cache.lock().unwrap().clear();
    *tokens.next.lock().unwrap() = Next::Expired;
    let set = command("Set-Mailbox", vec![("Identity", "user001".into()), ("Office", "Annex".into())]);
    session.invoke(&set).await.expect("a 401 proves nothing ran: the write goes again with a fresh token");
    assert_eq!((tokens.issued.load(Ordering::SeqCst), tokens.invalidated.load(Ordering::SeqCst)), (4, 2));
    assert_eq!(sim.stats().executions.get(&set.invocation_id), Some(&1));

    // An identity the service refuses whatever the token: the second 401 is the identity's
    // class. The tenant's host is known already, so open asks nothing of the service and the
    // refusal comes with the first call.
    let no_role = TestTokens::app(&sim).with(|t| t.roles.clear());
    let refused = c.open(&target(&no_role, TENANT)).await.unwrap();
    let err = refused.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ConsentRequired, "{err}");
    assert_eq!(no_role.issued.load(Ordering::SeqCst), 2, "one fresh token, not more");
    let no_mfa = TestTokens::alice(&sim).with(|t| t.amr = vec!["pwd".into()]);
    sim.set_mfa_required(ALICE, true);
    let refused = c.open(&target(&no_mfa, TENANT)).await.unwrap();
    let err = refused.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::MfaRequired, "{err}");
    // A tenant not probed yet: the refusal comes with the probe, at open.
    sim.set_denied(ALICE, OTHER, true);
    let err = c.open(&target(&TestTokens::alice(&sim), OTHER)).await.err().expect("refused");
    assert_eq!(err.class, FaultClass::TenantPermissionDenied, "{err}");
    let err = c.open(&SessionTarget { tokens: None, ..target(&tokens, TENANT) }).await.err().expect("refused");
    assert_eq!(err.class, FaultClass::InvalidClient);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_is_answered_with_a_token_for_those_claims() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let cutoff = now() + 1;
    sim.require_tokens_issued_after(TENANT, cutoff);
    let out = session.invoke(&command("Get-AcceptedDomain", vec![])).await.expect("the challenge is honoured");
    assert_eq!(out.objects.len(), 1);
    let expected = format!(r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{cutoff}"}}}}}}"#);
    assert_eq!(*tokens.claims.lock().unwrap(), vec![expected]);
    assert_eq!(tokens.invalidated.load(Ordering::SeqCst), 0, "a challenge is not a bad token");
    // The session keeps the token that satisfied the challenge (the source's cache has the old one).
    let issued = tokens.issued.load(Ordering::SeqCst);
    for _ in 0..3 {
        session.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap();
    }
    assert_eq!(tokens.issued.load(Ordering::SeqCst), issued);
    assert_eq!(tokens.claims.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_unavailability_prove_the_call_did_not_run() {
    let sim = simulator(|c| {
        c.rest.calls_per_identity = 2;
        c.rest.retry_after_seconds = 0.25;
    });
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let c = connector(addr, |_| {});
    let session = Arc::new(c.open(&target(&tokens, TENANT)).await.unwrap());
    let inject = |f: fn(&mut FaultConfig)| {
        let mut faults =
            FaultConfig { actions: vec!["InvokeCommand".into()], retry_after_seconds: 3, ..FaultConfig::default() };
        f(&mut faults);
        sim.set_faults(faults);
    };
    let set =
        || command("Set-Mailbox", vec![("Identity", "user001".into()), ("Office", Uuid::new_v4().to_string().into())]);
    for (rate, class) in
        [(|f: &mut FaultConfig| f.http_429 = 1.0) as fn(&mut FaultConfig), |f: &mut FaultConfig| f.http_503 = 1.0]
            .into_iter()
            .zip([FaultClass::Throttled, FaultClass::ServiceUnavailable])
    {
        inject(rate);
        let write = set();
        let err = session.invoke(&write).await.unwrap_err();
        assert_eq!((err.class, err.retry_after), (class, Some(Duration::from_secs(3))), "{err}");
        assert!(err.class.proves_not_started());
        assert_eq!(sim.stats().executions.get(&write.invocation_id), None, "not processed");
        assert_eq!(err.request_id, Some(write.invocation_id.to_string()));
    }
    sim.set_faults(FaultConfig::default());

    // Over the service's limit of calls in flight: 429 with its (fractional) Retry-After.
    sim.set_latency(Duration::ZERO, Duration::from_millis(400), Duration::ZERO);
    let results = futures::future::join_all((0..4).map(|_| {
        let session = session.clone();
        async move { session.invoke(&command("Get-AcceptedDomain", vec![])).await }
    }))
    .await;
    let refused: Vec<&RemoteError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    assert_eq!(refused.len(), 2);
    for e in refused {
        assert_eq!((e.class, e.retry_after), (FaultClass::Throttled, Some(Duration::from_millis(250))));
    }
    let stats = sim.rest_stats();
    assert_eq!(stats.max_in_flight_by_identity.get(&format!("app:{APP_ID}")), Some(&2));
    assert_eq!(stats.max_in_flight_by_tenant.get(TENANT), Some(&2));
    assert_eq!(stats.refused_over_limit, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_lost_connections_leave_the_outcome_unknown() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let session = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let only = |f: fn(&mut FaultConfig)| {
        let mut faults = FaultConfig { actions: vec!["InvokeCommand".into()], ..FaultConfig::default() };
        f(&mut faults);
        faults
    };
    type Case = (fn(&mut FaultConfig), FaultClass, Option<u32>);
    let cases: [Case; 3] = [
        (|f| f.drop_after = 1.0, FaultClass::ConnectionLost, Some(1)),
        (|f| f.drop_before = 1.0, FaultClass::ConnectionLost, None),
        (|f| f.http_500 = 1.0, FaultClass::ServerError, None),
    ];
    for (fault, class, executions) in cases {
        sim.set_faults(only(fault));
        let write =
            command("Set-Mailbox", vec![("Identity", "user001".into()), ("Office", Uuid::new_v4().to_string().into())]);
        let err = session.invoke(&write).await.unwrap_err();
        assert_eq!(err.class, class, "{err}");
        assert!(err.class.outcome_unknown() && !err.class.proves_not_started());
        if executions.is_some() {
            assert_eq!(
                sim.stats().executions.get(&write.invocation_id).copied(),
                executions,
                "it ran; the answer was lost"
            );
        }
    }
    sim.set_faults(FaultConfig::default());

    // A further page refused with 503 (asked for again, in vain): the cmdlet has run, so the
    // failure must not claim it never started.
    sim.set_latency(Duration::ZERO, Duration::from_millis(600), Duration::ZERO);
    let paged = connector(addr, |o| o.max_page_size = 5).open(&target(&tokens, TENANT)).await.unwrap();
    let get = command("Get-Mailbox", vec![("ResultSize", "Unlimited".into())]);
    let call = tokio::spawn(async move { paged.invoke(&get).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.set_faults(only(|f| {
        f.http_503 = 1.0;
        f.retry_after_seconds = 0;
    }));
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.class, FaultClass::ConnectionLost, "{err}");
    assert!(err.message.contains("the cmdlet ran"), "{}", err.message);
    assert_eq!(
        calls(&sim, "InvokeCommand").iter().filter(|c| c.cmdlet.is_none()).count(),
        4,
        "the page was asked for 1 + 3 times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_host_is_probed_once_and_cached() {
    let sim = simulator(|c| {
        c.rest.tenant_hosts.insert(TENANT.into(), "nam12b".into());
    });
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let c = connector(addr, |_| {});
    let t = target(&tokens, TENANT);
    let sessions = futures::future::join_all((0..4).map(|_| c.open(&t))).await;
    let sessions: Vec<_> = sessions.into_iter().map(Result::unwrap).collect();
    let later = c.open(&target(&tokens, TENANT)).await.unwrap();
    for s in sessions.iter().chain([&later]) {
        s.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap();
    }
    let stats = sim.rest_stats();
    assert_eq!(stats.probes_by_tenant.get(TENANT), Some(&1), "one probe for five sessions");
    let invokes = calls(&sim, "InvokeCommand");
    assert_eq!(invokes.len(), 5);
    assert!(invokes.iter().all(|c| c.host.as_deref() == Some("nam12b")), "every call went to the tenant's host");
    // Another tenant on the front door: its own probe, answered without a redirect.
    c.open(&target(&tokens, OTHER)).await.unwrap().invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap();
    assert_eq!(sim.rest_stats().probes_by_tenant.get(OTHER), Some(&1));

    // The tenant moves: the stale host answers 302, the call is refused unprocessed, and the
    // next session looks the host up again.
    sim.set_rest_tenant_host(TENANT, Some("eur03b"));
    let err = later.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap_err();
    assert_eq!(err.class, FaultClass::SessionExpired, "{err}");
    let moved = c.open(&target(&tokens, TENANT)).await.unwrap();
    moved.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap();
    assert_eq!(sim.rest_stats().probes_by_tenant.get(TENANT), Some(&2));
    assert_eq!(calls(&sim, "InvokeCommand").last().unwrap().host.as_deref(), Some("eur03b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_ten_answers_each_cmdlet_on_its_own_and_pages_each() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let c = connector(addr, |o| {
        o.batch = true;
        o.max_page_size = 2;
    });
    let session = c.open(&target(&tokens, TENANT)).await.unwrap();
    let commands = vec![
        command("Get-Mailbox", vec![("ResultSize", PsValue::Int32(5))]),
        command("Get-Nothing", vec![]),
        command("Get-Mailbox", vec![("Identity", "nobody".into()), ("ErrorAction", "Stop".into())]),
        command("Get-Mailbox", vec![("Bogus", PsValue::Int32(1))]),
        command("Set-Mailbox", vec![("Identity", "user003".into()), ("Department", "Batch".into())]),
        command("Get-Mailbox", vec![("Identity", "nobody".into())]),
        command("Get-AcceptedDomain", vec![]),
        command("Get-User", vec![("ResultSize", PsValue::Int32(3))]),
        command("Get-Mailbox", vec![("Identity", "user003".into())]),
        command("New-MailUser", vec![("Name", "Batch User".into()), ("ExternalEmailAddress", "bu@example.com".into())]),
    ];
    let results = session.invoke_many(&commands).await;
    assert_eq!(results.len(), 10);
    let ok = |i: usize| results[i].as_ref().unwrap_or_else(|e| panic!("{i}: {e}"));
    let class = |i: usize| results[i].as_ref().err().map(|e| e.class);
    assert_eq!(names(ok(0)), ["user001", "user002", "user003", "user004", "user005"], "three pages of two");
    assert_eq!(ok(0).warnings.len(), 1);
    assert_eq!(class(1), Some(FaultClass::UnknownCmdlet));
    assert_eq!(class(2), Some(FaultClass::CmdletError));
    assert_eq!(class(3), Some(FaultClass::InvalidParameter));
    assert!(ok(4).objects.is_empty());
    assert_eq!(ok(5).errors.len(), 1);
    assert_eq!(names(ok(6)), [TENANT]);
    assert_eq!(names(ok(7)).len(), 3);
    let PsValue::Object(mailbox) = &ok(8).objects[0] else { panic!("an object") };
    assert_eq!(mailbox.get("Department"), Some(&PsValue::String("Batch".into())), "sub-requests ran in order");
    assert_eq!(names(ok(9)), ["Batch User"]);
    for (result, command) in results.iter().zip(&commands) {
        let id = match result {
            Ok(out) => out.request_id.clone(),
            Err(e) => e.request_id.clone(),
        };
        assert_eq!(id, Some(command.invocation_id.to_string()));
    }
    let stats = sim.rest_stats();
    assert_eq!(stats.batches, 1);
    let items = calls(&sim, "BatchItem");
    assert_eq!(items.len(), 10);
    let ids: Vec<_> = items.iter().map(|c| c.client_request_id.clone().unwrap()).collect();
    assert_eq!(ids, commands.iter().map(|c| c.invocation_id.to_string()).collect::<Vec<_>>());
    assert!(items.iter().all(|c| c.max_page_size == Some(2)));
    // The further pages (two of Get-Mailbox, one of Get-User) were fetched one by one.
    assert_eq!(calls(&sim, "InvokeCommand").len(), 3);
    for c in &commands {
        let ran = sim.stats().executions.get(&c.invocation_id).copied();
        assert!(ran.is_none() || ran == Some(1), "{}: ran once at most", c.cmdlet);
    }

    // A batch refused as a whole: every cmdlet in it shares the failure, proven not run.
    sim.set_faults(FaultConfig { http_503: 1.0, actions: vec!["Batch".into()], ..FaultConfig::default() });
    let writes: Vec<Command> = (0..10)
        .map(|i| command("Set-Mailbox", vec![("Identity", format!("user{:03}", i + 1).into()), ("Office", "X".into())]))
        .collect();
    let results = session.invoke_many(&writes).await;
    assert!(results.iter().all(|r| r.as_ref().err().map(|e| e.class) == Some(FaultClass::ServiceUnavailable)));
    assert!(writes.iter().all(|w| !sim.stats().executions.contains_key(&w.invocation_id)));
    sim.set_faults(FaultConfig::default());

    // Without `batch`, invoke_many runs them one by one.
    let single = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    let before = sim.rest_stats().batches;
    let results = single.invoke_many(&commands[6..8]).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(sim.rest_stats().batches, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_and_compliance_finds_its_region_once() {
    let sim = simulator(|c| c.rest.compliance_region = "eur03b".into());
    let addr = serve(&sim).await;
    let tokens = TestTokens::app(&sim);
    let ipps = connector(addr, |o| {
        o.service = Service::Compliance;
        o.base_url = format!("http://{addr}/ipps");
    });
    assert_eq!(ipps.scope(), format!("http://{addr}/ipps/.default"));
    let first = ipps.open(&target(&tokens, TENANT)).await.unwrap();
    let second = ipps.open(&target(&tokens, TENANT)).await.unwrap();
    for s in [&first, &second] {
        assert_eq!(names(&s.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap()), [TENANT]);
    }
    let stats = sim.rest_stats();
    assert_eq!(stats.probes_by_tenant.get(TENANT), Some(&1));
    let invokes = calls(&sim, "InvokeCommand");
    assert!(invokes.iter().all(|c| c.host.as_deref() == Some("eur03b")), "{invokes:?}");
    // A token for Exchange is no token for Security & Compliance.
    let exo = connector(addr, |_| {}).open(&target(&tokens, TENANT)).await.unwrap();
    exo.invoke(&command("Get-AcceptedDomain", vec![])).await.unwrap();
    assert_eq!(tokens.cache.lock().unwrap().len(), 2, "one token per scope");
}

#[test]
fn after_start_never_claims_a_command_did_not_run() {
    for class in FaultClass::ALL {
        let e = session::after_start(RemoteError::new(class, "x").with_request_id("id"));
        assert!(!e.class.proves_not_started(), "{class}");
        assert_eq!(e.request_id.as_deref(), Some("id"));
        if !class.proves_not_started() {
            assert_eq!(e.class, class);
        }
    }
}

#[test]
fn the_connector_refuses_what_would_leak_tokens() {
    let plain = ExoOptions { base_url: "http://outlook.office365.com".into(), ..ExoOptions::default() };
    assert!(ExoConnector::new(plain).unwrap_err().message.contains("plain http"));
    assert!(ExoConnector::new(ExoOptions { base_url: "ftp://x".into(), ..ExoOptions::default() }).is_err());
    let c = ExoConnector::new(ExoOptions::default()).unwrap();
    assert_eq!(c.scope(), "https://outlook.office365.com/.default");
    let c = ExoConnector::new(ExoOptions {
        service: Service::Compliance,
        base_url: Service::Compliance.global_base().into(),
        ..ExoOptions::default()
    })
    .unwrap();
    assert_eq!(c.scope(), "https://ps.compliance.protection.outlook.com/.default");
}
