//! Exchange Online over REST through the HTTP API: the daemon (profile kind `exo_rest`) against
//! the simulator's REST admin API and identity provider on loopback. One test per "Done when"
//! bullet of issue 10; the simulator testifies (calls it saw, parameters as received, executions
//! per pipeline, high-water marks of calls in flight, token requests per key).

mod common;

use common::TestApp;
use psbroker::app::Application;
use psbroker::config::{Config, FaultConfig, OAuthGrant};
use psbroker::identity::cloud::Cloud;
use psbroker::identity::grants::{ClientAuth, IdpClient};
use psbroker::identity::sealed::SealingKey;
use psbroker::identity::service::RefreshTokens;
use psbroker::identity::{Identity, TokenService};
use psbroker::remote::PsValue;
use psbroker::store::Store;
use secrecy::SecretString;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const APP: &str = "11111111-2222-3333-4444-555555555555";
const APP2: &str = "66666666-7777-8888-9999-000000000000";
const SECRET: &str = "app-secret-value-for-tests";
const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CONTOSO: &str = "contoso.onmicrosoft.com";
const FABRIKAM: &str = "fabrikam.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";
/// Signs in with a password only (no `mfa` in her tokens' `amr`).
const CAROL: &str = "carol@partner.onmicrosoft.com";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/identity/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An app-only admin signing in with a certificate (PEM: certificate and key).
fn app_with_certificate(name: &str, client_id: &str, pem: &str) -> String {
    format!(
        "[[admins]]\nname = \"{name}\"\nupn = \"{name}@partner.onmicrosoft.com\"\n\
         [admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"{client_id}\"\ncertificate = \"file:{}\"\n\
         login_url = \"http://{{simulator}}\"\n",
        fixture(pem)
    )
}

/// An app-only admin signing in with a client secret.
fn app_with_secret(name: &str, client_id: &str) -> String {
    format!(
        "[[admins]]\nname = \"{name}\"\nupn = \"{name}@partner.onmicrosoft.com\"\n\
         [admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"{client_id}\"\nclient_secret = \"literal:{SECRET}\"\n\
         login_url = \"http://{{simulator}}\"\n"
    )
}

/// A partner admin (delegated): a refresh token from a device-code sign-in, exchanged per tenant.
fn partner(name: &str, upn: &str) -> String {
    format!(
        "[[admins]]\nname = \"{name}\"\nupn = \"{upn}\"\n\
         [admins.oauth]\ngrant = \"refresh_token\"\nclient_id = \"{APP}\"\nclient_secret = \"literal:{SECRET}\"\n\
         tenant = \"partner.onmicrosoft.com\"\nlogin_url = \"http://{{simulator}}\"\n"
    )
}

/// The daemon with one REST profile (`profile` keys appended) against its embedded simulator
/// (`simulator` keys appended to `[simulator]`, whose subtables may follow), `admins`, and
/// `tenants`.
fn config(profile: &str, simulator: &str, admins: &str, tenants: &[String]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_wait_seconds = 60\n\
         [scheduler]\ndefault_timeout_seconds = 60\nquota_cooldown_seconds = 1\nretry_backoff_max_ms = 1000\n\
         [profiles.default]\nkind = \"exo_rest\"\nbase_url = \"http://{{simulator}}\"\nallow_plain_http = true\n{profile}\n\
         {admins}\n"
    );
    for t in tenants {
        text += &format!("[[tenants]]\ndomain = \"{t}\"\n");
    }
    text += "[simulator]\nlisten = \"127.0.0.1:0\"\n";
    // Defaults, unless `simulator` sets the key itself.
    for (key, value) in
        [("open_latency_ms", 1), ("command_latency_ms", 1), ("close_latency_ms", 1), ("mailboxes_per_tenant", 10)]
    {
        if !simulator.lines().any(|l| l.starts_with(&format!("{key} ="))) {
            text += &format!("{key} = {value}\n");
        }
    }
    text + simulator + "\n"
}

fn tenants(n: u32) -> Vec<String> {
    (0..n).map(common::tenant).collect()
}

/// Starts the daemon in `dir`; also answers the embedded simulator's address.
async fn start_in(text: &str, dir: common::DataDir) -> (TestApp, String) {
    start_with(Config::from_toml(text).unwrap(), dir).await
}

async fn start_with(mut config: Config, dir: common::DataDir) -> (TestApp, String) {
    config.store.url = dir.store_url();
    config.store.data_dir = Some(dir.path().to_path_buf());
    let application = Application::build(config).await.unwrap();
    let sim_url = format!("http://{}", application.simulator_addr().expect("the simulator listens"));
    let app = application.spawn();
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap().trim().to_string();
    let client = psbroker::cli_token::bearer_client(&token).unwrap();
    (TestApp { app: Some(app), client, dir, token }, sim_url)
}

async fn start(text: &str) -> (TestApp, String) {
    start_in(text, common::DataDir::new().await).await
}

fn status_and_code(body: &Json) -> (Option<&str>, Option<&str>) {
    (body["status"].as_str(), body["error"]["code"].as_str())
}

fn invocation_id(body: &Json) -> Uuid {
    body["id"].as_str().expect("an invocation id").parse().unwrap()
}

/// Every result of a finished batch, in submission order.
async fn results(app: &TestApp, batch: &str) -> Vec<Json> {
    let lines = app.get_text(&format!("/v1/batches/{batch}/results")).await;
    lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `psbroker serve` with no configuration shows both transports: its REST tenants answer over
/// `InvokeCommand` (with the `client-request-id` on the invocation), its WinRM tenants over PSRP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_tenants_over_rest_and_over_winrm() {
    let mut demo = Config::demo();
    demo.server.listen = "127.0.0.1:0".into();
    let (app, _) = start_with(demo.clone(), common::DataDir::new().await).await;
    let rest_tenant = demo.tenants.iter().find(|t| t.profile == "rest").expect("a REST tenant in the demo");
    let (status, body) = app.invoke(&rest_tenant.domain, "Get-Mailbox", json!({"ResultSize": 3})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
    assert_eq!(body["output"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(body["admin"], "exo-demo-app", "only an admin with an OAuth identity serves REST: {body}");
    let request_id = body["request_id"].as_str().expect("the client-request-id is on the invocation");
    let sim = app.sim();
    let seen: Vec<_> = sim.rest_stats().calls.into_iter().filter(|c| c.operation == "InvokeCommand").collect();
    assert!(seen.iter().any(|c| c.client_request_id.as_deref() == Some(request_id)), "{seen:?}");
    // Stored, not only answered: the invocation read back says the same.
    let (_, again) = app.get(&format!("/v1/invocations/{}", invocation_id(&body))).await;
    assert_eq!(again["request_id"].as_str(), Some(request_id), "{again}");

    let (status, body) = app.invoke(CONTOSO, "Get-Mailbox", json!({"ResultSize": 3})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
    assert!(body.get("request_id").is_none(), "WinRM calls have no request id: {body}");
    app.stop().await;
}

/// Get-Mailbox with 2,500 mailboxes and pages of 1,000: all 2,500, in order, from three calls
/// under the invocation's one `client-request-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_mailbox_returns_2500_mailboxes_in_order_over_pages_of_1000() {
    let text = config(
        "max_page_size = 1000",
        "mailboxes_per_tenant = 2500\n[simulator.rest]\nmax_page_size = 1000",
        &app_with_certificate("app", APP, "app.pem"),
        &[CONTOSO.into()],
    );
    let (app, _) = start(&text).await;
    let (status, body) = app.invoke(CONTOSO, "Get-Mailbox", json!({"ResultSize": "Unlimited"})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{}", body["error"]);
    let names: Vec<&str> = body["output"].as_array().unwrap().iter().map(|m| m["Name"].as_str().unwrap()).collect();
    let expected: Vec<String> = (1..=2500).map(|i| format!("user{i:03}")).collect();
    assert_eq!(names, expected, "all 2,500, in order");
    let id = invocation_id(&body);
    assert_eq!(body["request_id"].as_str(), Some(&*id.to_string()));
    let calls: Vec<_> = app.sim().rest_stats().calls.into_iter().filter(|c| c.operation == "InvokeCommand").collect();
    assert_eq!(calls.len(), 3, "1,000 + 1,000 + 500");
    assert!(calls.iter().all(|c| c.max_page_size == Some(1000) && c.client_request_id == Some(id.to_string())));
    assert_eq!(app.sim().stats().executions.get(&id), Some(&1), "the cmdlet ran once");
    app.stop().await;
}

/// A Set over REST is seen by a Get over REST and by a Get over WinRM/PSRP (a second daemon
/// whose WinRM profile points at the first one's simulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_rest_is_seen_over_rest_and_over_winrm() {
    let admins = format!(
        "{}[[admins]]\nname = \"alice\"\nupn = \"{ALICE}\"\ncredential = \"literal:pw-alice\"\n",
        app_with_certificate("app", APP, "app.pem")
    );
    let (rest, sim_url) = start(&config("", "", &admins, &[CONTOSO.into()])).await;
    let office = format!("Building {}", Uuid::new_v4());
    let (_, body) =
        rest.invoke(CONTOSO, "Set-Mailbox", json!({"Identity": "user007", "Office": office, "Confirm": false})).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["admin"], "app", "alice has no OAuth identity: never used over REST: {body}");
    let (_, body) = rest.invoke(CONTOSO, "Get-Mailbox", json!({"Identity": "user007"})).await;
    assert_eq!(body["output"][0]["Office"], office.as_str(), "{body}");

    let winrm = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"{sim_url}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         [[admins]]\nname = \"alice\"\nupn = \"{ALICE}\"\ncredential = \"literal:pw-alice\"\n\
         [[tenants]]\ndomain = \"{CONTOSO}\"\n"
    );
    let psrp = TestApp::start(&winrm).await;
    let (_, seen) = psrp.invoke(CONTOSO, "Get-Mailbox", json!({"Identity": "user007"})).await;
    assert_eq!(seen["status"], "succeeded", "{seen}");
    assert_eq!(seen["output"][0]["Office"], office.as_str(), "one world, two transports: {seen}");
    assert_eq!(seen["output"][0]["Guid"], body["output"][0]["Guid"]);
    psrp.stop().await;
    rest.stop().await;
}

/// The same JSON parameters a caller sends for WinRM arrive typed over REST: hashtables, arrays
/// (of hashtables too), switches and numbers beyond 32 bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashtable_and_array_parameters_arrive_typed() {
    let text = config("", "", &app_with_certificate("app", APP, "app.pem"), &[CONTOSO.into()]);
    let (app, _) = start(&text).await;
    let parameters = json!({
        "Identity": "user001",
        "EmailAddresses": {"Add": ["a@contoso.com", "b@contoso.com"]},
        "Rules": [{"Name": "r1"}, {"Name": "r2"}],
        "Members": ["x", 2],
        "Force": true,
        "Big": 5_000_000_000i64,
    });
    let (_, body) = app.invoke(CONTOSO, "Set-Mailbox", parameters.clone()).await;
    // The simulator's Set-Mailbox has none of these parameters: Exchange's 400, in its words.
    assert_eq!(status_and_code(&body), (Some("failed"), Some("invalid_parameter")), "{body}");
    let (cmdlet, received) =
        app.sim().received_parameters(invocation_id(&body)).expect("the service received the call");
    assert_eq!(cmdlet, "Set-Mailbox");
    let received: HashMap<String, PsValue> = received.into_iter().collect();
    for (name, value) in parameters.as_object().unwrap() {
        assert_eq!(received.get(name), Some(&PsValue::from_json(value)), "{name} as sent");
    }
    assert!(matches!(received["EmailAddresses"], PsValue::Dict(_)), "a hashtable stays a hashtable");
    assert_eq!(received["Big"], PsValue::Int64(5_000_000_000));
    app.stop().await;
}

/// Warnings and non-terminating errors come back as they do over PSRP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_and_non_terminating_errors_come_back() {
    let text = config("", "", &app_with_certificate("app", APP, "app.pem"), &[CONTOSO.into()]);
    let (app, _) = start(&text).await;
    let (_, body) = app.invoke(CONTOSO, "Get-Mailbox", json!({"ResultSize": 5})).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["output"].as_array().map(Vec::len), Some(5));
    let warning = body["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.starts_with("By default, only the first 5 items are returned."), "{body}");
    let (_, body) = app.invoke(CONTOSO, "Get-Mailbox", json!({"Identity": "nobody"})).await;
    assert_eq!(status_and_code(&body), (Some("failed"), Some("cmdlet_error")), "{body}");
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(1), "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("couldn't be found"), "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    app.stop().await;
}

/// An unknown cmdlet: Exchange's 403 with a body that claims gzip and is not must not hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cmdlet_is_unknown_cmdlet_despite_the_junk_body() {
    let text = config("", "", &app_with_certificate("app", APP, "app.pem"), &[CONTOSO.into()]);
    let (app, _) = start(&text).await;
    let (_, body) = app.invoke(CONTOSO, "Get-Nothing", json!({})).await;
    assert_eq!(status_and_code(&body), (Some("failed"), Some("unknown_cmdlet")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Get-Nothing"), "{body}");
    assert_eq!(body["attempts"], 1, "not retried");
    let (_, body) = app.invoke(CONTOSO, "Get-AcceptedDomain", json!({})).await;
    assert_eq!(body["status"], "succeeded", "the admin and tenant are fine: {body}");
    app.stop().await;
}

/// 1,000 invocations over 20 tenants with 2 identities: all succeed, and the service never saw
/// more calls in flight than the caps (3 per identity, 20 per tenant), so it refused none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1000_item_batch_over_20_tenants_and_2_identities_stays_within_the_caps() {
    let admins = format!("{}{}", app_with_certificate("app1", APP, "app.pem"), app_with_secret("app2", APP2));
    let text = config(
        "calls_per_admin = 3\ncalls_per_tenant = 20",
        "command_latency_ms = 5\n[simulator.rest]\ncalls_per_identity = 3\ncalls_per_tenant = 20",
        &admins,
        &tenants(20),
    );
    let (app, _) = start(&text).await;
    let items: Vec<Json> = (0..1000)
        .map(|i| json!({"tenant": common::tenant(i % 20), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}}))
        .collect();
    let batch = app.submit_batch(items).await;
    let counts = app.wait_batch(&batch, Duration::from_secs(90)).await;
    assert_eq!(counts["succeeded"], 1000, "{counts}");
    let rest = app.sim().rest_stats();
    assert_eq!(rest.max_in_flight_by_identity.len(), 2, "both identities worked: {rest:?}");
    for (identity, n) in &rest.max_in_flight_by_identity {
        assert!(*n <= 3, "{identity} had {n} calls in flight");
    }
    assert_eq!(rest.max_in_flight_by_tenant.len(), 20);
    assert!(rest.max_in_flight_by_tenant.values().all(|&n| n <= 20), "{:?}", rest.max_in_flight_by_tenant);
    assert_eq!(rest.refused_over_limit, 0, "never over the service's limits");
    let used: std::collections::HashSet<String> =
        results(&app, &batch).await.iter().map(|r| r["admin"].as_str().unwrap().to_string()).collect();
    assert_eq!(used.len(), 2, "{used:?}");
    app.stop().await;
}

/// Access tokens living 3 seconds during a batch: no invocation fails, and the identity provider
/// sees one request per (tenant, resource) per lifetime, however many calls share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_living_seconds_are_renewed_during_a_batch_without_a_failure() {
    let text = config(
        "",
        "command_latency_ms = 40\n[simulator.identity]\ntoken_lifetime_seconds = 3",
        &app_with_certificate("app", APP, "app.pem"),
        &[CONTOSO.into()],
    );
    let (app, sim_url) = start(&text).await;
    let started = Instant::now();
    let items: Vec<Json> = (0..500)
        .map(|_| json!({"tenant": CONTOSO, "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}}))
        .collect();
    let batch = app.submit_batch(items).await;
    let counts = app.wait_batch(&batch, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    assert_eq!((counts["succeeded"].as_i64(), counts["failed"].as_i64()), (Some(500), Some(0)), "{counts}");
    assert!(elapsed > Duration::from_secs(6), "the batch outlived two token lifetimes: {elapsed:?}");
    let sim = app.sim();
    let tid = sim.tenant_id(CONTOSO).unwrap().to_string();
    let requests = sim.idp_stats().requests_for("client_credentials", &tid, &sim_url);
    // A 3 s token (at least 2 s left when received) is renewed at 90 % of what is left: never
    // more often than every 1.8 s, and at least once per lifetime.
    let most = (elapsed.as_secs_f64() / 1.8).ceil() as u64 + 1;
    let least = (elapsed.as_secs_f64() / 3.0).floor() as u64;
    assert!((least..=most).contains(&requests), "{requests} token requests in {elapsed:?}");
    app.stop().await;
}

/// Signs `name` (upn `upn`) in with the device code at the daemon's simulator, storing its refresh
/// token (sealed) where the daemon reads it.
async fn device_sign_in(app: &TestApp, sim_url: &str, name: &str, upn: &str) {
    let store = Store::connect(&app.dir.store_url()).await.unwrap();
    let key = SealingKey::from_text(&SecretString::from(KEY_B64)).unwrap();
    let service =
        TokenService::new(IdpClient::new(Duration::from_secs(10), None).unwrap(), Some(RefreshTokens { store, key }));
    let identity = Identity {
        name: name.into(),
        upn: upn.into(),
        grant: OAuthGrant::RefreshToken,
        cloud: Cloud::Global,
        login_url: sim_url.into(),
        client_id: APP.into(),
        client_auth: Some(ClientAuth::Secret(SecretString::from(SECRET))),
        home_tenant: "partner.onmicrosoft.com".into(),
    };
    let (sim, upn) = (app.sim(), upn.to_string());
    service
        .device_login(&identity, move |login| sim.approve_device_code(&login.user_code, &upn).unwrap())
        .await
        .expect("signed in");
}

fn partner_config(dir: &tempfile::TempDir) -> String {
    std::fs::write(dir.path().join("rt.key"), format!("{KEY_B64}\n")).unwrap();
    let admins = format!("{}{}", partner("alice", ALICE), partner("carol", CAROL));
    format!(
        "[identity]\nrefresh_token_key = \"file:{}\"\n{}",
        dir.path().join("rt.key").display(),
        config(
            "",
            &format!(
                "[simulator.identity]\ndevice_code_interval_seconds = 1\nusers_without_mfa = [\"{CAROL}\"]\n\
                 [[simulator.identity.apps]]\nclient_id = \"{APP}\"\nsecrets = [\"literal:{SECRET}\"]\npublic_client = true\n"
            ),
            &admins,
            &[CONTOSO.into(), FABRIKAM.into()],
        )
    )
}

/// A partner signed in with `psbroker login`'s device code runs cmdlets with its delegated
/// tokens; once its refresh tokens are revoked, its invocations fail with `reauth_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_is_reauth_required() {
    let dir = common::DataDir::new().await;
    let text = partner_config(&dir);
    let (app, sim_url) = start_in(&text, dir).await;
    device_sign_in(&app, &sim_url, "alice", ALICE).await;
    let (_, body) = app
        .post(
            "/v1/invocations",
            json!({"tenant": CONTOSO, "cmdlet": "Get-Mailbox", "admin": "alice", "parameters": {"ResultSize": 1}}),
        )
        .await;
    assert_eq!(body["status"], "succeeded", "{body}");
    let anchors: Vec<_> = app.sim().rest_stats().calls.into_iter().filter_map(|c| c.anchor_mailbox).collect();
    assert!(anchors.contains(&format!("UPN:{ALICE}")), "delegated calls are anchored on the admin: {anchors:?}");
    app.sim().revoke_refresh_tokens(ALICE);
    let (_, body) = app
        .post(
            "/v1/invocations",
            json!({"tenant": FABRIKAM, "cmdlet": "Get-Mailbox", "admin": "alice", "parameters": {"ResultSize": 1}}),
        )
        .await;
    assert_eq!(status_and_code(&body), (Some("failed"), Some("reauth_required")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("AADSTS50173"), "{body}");
    app.stop().await;
}

/// A delegated token without `mfa` in `amr` is refused: `mfa_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_token_without_mfa_is_mfa_required() {
    let dir = common::DataDir::new().await;
    let text = partner_config(&dir);
    let (app, sim_url) = start_in(&text, dir).await;
    device_sign_in(&app, &sim_url, "carol", CAROL).await;
    let (_, body) = app
        .post(
            "/v1/invocations",
            json!({"tenant": CONTOSO, "cmdlet": "Get-Mailbox", "admin": "carol", "parameters": {"ResultSize": 1}}),
        )
        .await;
    assert_eq!(status_and_code(&body), (Some("failed"), Some("mfa_required")), "{body}");
    app.stop().await;
}

/// An application not consented in one tenant: `consent_required` there, and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconsented_tenant_is_consent_required_there_only() {
    let text = config("", "", &app_with_certificate("app", APP, "app.pem"), &tenants(3));
    let (app, _) = start(&text).await;
    let unconsented = common::tenant(1);
    app.sim().set_app_consent(APP, &unconsented, false);
    let items: Vec<Json> = (0..30)
        .map(|i| json!({"tenant": common::tenant(i % 3), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}}))
        .collect();
    let batch = app.submit_batch(items).await;
    app.wait_batch(&batch, Duration::from_secs(60)).await;
    for r in results(&app, &batch).await {
        if r["tenant"] == unconsented.as_str() {
            assert_eq!(status_and_code(&r), (Some("failed"), Some("consent_required")), "{r}");
        } else {
            assert_eq!(r["status"], "succeeded", "the other tenants are not affected: {r}");
        }
    }
    app.stop().await;
}

/// About 5 % of REST calls refused with 429 or 503 (`Retry-After`) or dropped (before or after
/// the service processed them): every read succeeds, and no write runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_throttling_and_drops_lose_no_read_and_repeat_no_write() {
    let text = config("", "", &app_with_certificate("app", APP, "app.pem"), &tenants(4));
    let (app, _) = start(&text).await;
    let sim = app.sim();
    sim.set_faults(FaultConfig {
        seed: 7,
        http_429: 0.015,
        http_503: 0.015,
        drop_before: 0.01,
        drop_after: 0.01,
        retry_after_seconds: 0,
        actions: vec!["InvokeCommand".into()],
        ..FaultConfig::default()
    });
    let items: Vec<Json> = (0..400)
        .map(|i| {
            let tenant = common::tenant(i % 4);
            if i % 3 == 0 {
                json!({"tenant": tenant, "cmdlet": "Set-Mailbox",
                       "parameters": {"Identity": format!("user{:03}", 1 + i % 10), "Office": format!("office {i}")}})
            } else {
                json!({"tenant": tenant, "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}})
            }
        })
        .collect();
    let batch = app.submit_batch(items).await;
    app.wait_batch(&batch, Duration::from_secs(90)).await;
    let stats = sim.stats();
    let injected: u64 = stats.injected.values().sum();
    assert!(injected >= 5, "faults were injected: {:?}", stats.injected);
    let mut retried = 0;
    for r in results(&app, &batch).await {
        let id: Uuid = r["id"].as_str().unwrap().parse().unwrap();
        let runs = stats.executions.get(&id).copied().unwrap_or(0);
        retried += (r["attempts"].as_i64().unwrap() > 1) as u32;
        match (r["cmdlet"].as_str().unwrap(), r["status"].as_str().unwrap()) {
            ("Get-Mailbox", status) => assert_eq!(status, "succeeded", "a read was lost: {r}"),
            ("Set-Mailbox", "succeeded") => assert_eq!(runs, 1, "write ran {runs} times: {r}"),
            ("Set-Mailbox", "failed") => {
                assert!(runs <= 1, "write ran {runs} times: {r}");
                assert!(r["error"]["message"].as_str().unwrap().contains("may or may not have taken effect"), "{r}");
            }
            (cmdlet, status) => panic!("unexpected {cmdlet} {status}: {r}"),
        }
    }
    assert!(retried > 0, "some invocations were retried");
    app.stop().await;
}

/// The application's certificate signs an assertion the identity provider accepts; a key that
/// is not the registered certificate's is refused: `invalid_client`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_assertion_is_accepted_and_a_wrong_key_is_invalid_client() {
    let admins =
        format!("{}{}", app_with_certificate("good", APP, "app.pem"), app_with_certificate("wrong", APP, "other.pem"));
    let text = config(
        "",
        &format!("[[simulator.identity.apps]]\nclient_id = \"{APP}\"\ncertificates = [\"{}\"]\n", fixture("app.pem")),
        &admins,
        &[CONTOSO.into()],
    );
    let (app, _) = start(&text).await;
    let pinned = |admin: &str| json!({"tenant": CONTOSO, "cmdlet": "Get-Mailbox", "admin": admin, "parameters": {"ResultSize": 1}});
    // The wrong key first: both admins are the same application, whose tokens are cached per
    // (cloud, tenant, client, scope, grant), so once the good key has a token the other shares it.
    let (_, body) = app.post("/v1/invocations", pinned("wrong")).await;
    assert_eq!(status_and_code(&body), (Some("failed"), Some("invalid_client")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("AADSTS700027"), "{body}");
    let (_, body) = app.post("/v1/invocations", pinned("good")).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(app.sim().idp_stats().refused.get("AADSTS700027"), Some(&1), "{:?}", app.sim().idp_stats().refused);
    app.stop().await;
}

/// With `batch = true`, bulk work for one tenant travels as `$batch` requests of up to ten
/// cmdlets; each invocation is still answered (and identified) on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_work_travels_as_batches_of_ten_when_the_profile_says_so() {
    let text = config(
        "batch = true",
        "command_latency_ms = 5",
        &app_with_certificate("app", APP, "app.pem"),
        &[CONTOSO.into()],
    );
    let (app, _) = start(&text).await;
    let items: Vec<Json> = (0..60)
        .map(|i| {
            let parameters = if i == 7 { json!({"Identity": "nobody"}) } else { json!({"ResultSize": 1}) };
            json!({"tenant": CONTOSO, "cmdlet": "Get-Mailbox", "parameters": parameters})
        })
        .collect();
    let batch = app.submit_batch(items).await;
    app.wait_batch(&batch, Duration::from_secs(60)).await;
    let results = results(&app, &batch).await;
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(status_and_code(r), (Some("failed"), Some("cmdlet_error")), "classified on its own: {r}");
        } else {
            assert_eq!(r["status"], "succeeded", "{r}");
        }
        assert_eq!(r["request_id"].as_str(), r["id"].as_str(), "each sub-request carries its invocation's id");
    }
    let rest = app.sim().rest_stats();
    let items = rest.calls.iter().filter(|c| c.operation == "BatchItem").count();
    let singles = rest.calls.iter().filter(|c| c.operation == "InvokeCommand").count();
    assert_eq!(items + singles, 60, "{rest:?}");
    assert!(rest.batches >= 6 && rest.batches <= 30, "60 cmdlets in batches of up to ten: {}", rest.batches);
    assert!(items >= 50, "most went in batches: {items} of 60");
    // An interactive call does not wait for (or join) a batch.
    let (_, body) = app.invoke(CONTOSO, "Get-Mailbox", json!({"ResultSize": 1})).await;
    assert_eq!(body["status"], "succeeded");
    app.stop().await;
}
