//! The token service against the simulated identity provider over HTTP: every grant, the
//! refusals and their classes, single flight, renewal before expiry, rotation kept across a
//! restart, refresh tokens sealed at rest, and `psbroker login` end to end.

mod common;

use psbroker::config::{OAuthGrant, SimulatorConfig};
use psbroker::identity::assertion::{pem_certificates, ClientCertificate};
use psbroker::identity::cloud::Cloud;
use psbroker::identity::grants::{ClientAuth, IdpClient};
use psbroker::identity::sealed::SealingKey;
use psbroker::identity::service::RefreshTokens;
use psbroker::identity::{AccessToken, Actor, Identity, TokenService, TokenSource};
use psbroker::metrics::Metrics;
use psbroker::remote::FaultClass;
use psbroker::sim::idp::SimApp;
use psbroker::sim::{SimAccount, Simulator};
use psbroker::store::Store;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const APP: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "app-secret-value-for-tests";
const APP_PEM: &str = include_str!("fixtures/identity/app.pem");
const OTHER_PEM: &str = include_str!("fixtures/identity/other.pem");
const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CONTOSO: &str = "contoso.onmicrosoft.com";
const FABRIKAM: &str = "fabrikam.onmicrosoft.com";
const LITWARE: &str = "litware.onmicrosoft.com";
const ALICE: &str = "alice@partner.example";
/// Partner user with access to contoso only.
const BOB: &str = "bob@partner.example";
/// Partner user who signs in without MFA.
const CAROL: &str = "carol@partner.example";

/// The simulated identity provider on a loopback port.
struct Idp {
    sim: Simulator,
    url: String,
}

impl Idp {
    async fn start(tweak: impl FnOnce(&mut SimulatorConfig)) -> Idp {
        let mut cfg = SimulatorConfig::default();
        cfg.identity.device_code_interval_seconds = 1;
        cfg.identity.users_without_mfa = vec![CAROL.into()];
        tweak(&mut cfg);
        let account = |upn: &str, tenants: &[&str]| SimAccount {
            upn: upn.into(),
            password: format!("pw-{upn}"),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
        };
        let accounts = vec![account(ALICE, &["*"]), account(BOB, &[CONTOSO]), account(CAROL, &["*"])];
        let sim = Simulator::new(&cfg, accounts, vec![CONTOSO.into(), FABRIKAM.into(), LITWARE.into()]);
        sim.register_app(SimApp {
            client_id: APP.into(),
            name: "psbroker tests".into(),
            secrets: vec![SECRET.into()],
            certificates: pem_certificates(APP_PEM).unwrap(),
            tenants: vec!["*".into()],
            public_client: true,
        })
        .unwrap();
        let (addr, _server) = psbroker::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        Idp { sim, url: format!("http://{addr}") }
    }

    /// The resource tokens are asked for in these tests (any resource will do).
    fn resource(&self) -> String {
        Cloud::Global.exo_base().to_string()
    }

    fn scope(&self) -> String {
        Cloud::Global.exo_scope()
    }

    fn identity(&self, name: &str, upn: &str, grant: OAuthGrant, auth: Option<ClientAuth>) -> Identity {
        Identity {
            name: name.into(),
            upn: upn.into(),
            grant,
            cloud: Cloud::Global,
            login_url: self.url.clone(),
            client_id: APP.into(),
            client_auth: auth,
            home_tenant: "partner.example".into(),
        }
    }

    /// The registered application, app-only, signing in with its certificate.
    fn app(&self, service: &Arc<TokenService>) -> Arc<dyn TokenSource> {
        self.app_with(service, "app", certificate(APP_PEM))
    }

    fn app_with(&self, service: &Arc<TokenService>, name: &str, auth: ClientAuth) -> Arc<dyn TokenSource> {
        service.source(self.identity(
            name,
            &format!("{name}@partner.example"),
            OAuthGrant::ClientCredentials,
            Some(auth),
        ))
    }

    fn guid(&self, tenant: &str) -> String {
        self.sim.tenant_id(tenant).unwrap().to_string()
    }

    /// The sim's own check of a token it issued (signature, expiry, audience), as Exchange does.
    fn verify(&self, token: &AccessToken) -> psbroker::sim::tokens::SimClaims {
        self.sim.access_tokens().verify(token.bearer.expose_secret(), &self.resource()).expect("a valid token")
    }
}

fn certificate(pem: &str) -> ClientAuth {
    ClientAuth::Certificate(Arc::new(ClientCertificate::from_pem(pem).unwrap()))
}

fn service(store: Option<Store>, metrics: Option<Arc<Metrics>>) -> Arc<TokenService> {
    let idp = IdpClient::new(Duration::from_secs(10), metrics).unwrap();
    let refresh_tokens =
        store.map(|store| RefreshTokens { store, key: SealingKey::from_text(&SecretString::from(KEY_B64)).unwrap() });
    Arc::new(TokenService::new(idp, refresh_tokens))
}

async fn store_in(dir: &tempfile::TempDir) -> Store {
    Store::connect(&format!("sqlite://{}", dir.path().join("psbroker.db").display())).await.unwrap()
}

/// Signs `identity` in with the device code, approved by `upn` on the sign-in side.
async fn sign_in(idp: &Idp, service: &TokenService, identity: &Identity, upn: &str) {
    let sim = idp.sim.clone();
    let upn = upn.to_string();
    let account = service
        .device_login(identity, move |login| sim.approve_device_code(&login.user_code, &upn).unwrap())
        .await
        .unwrap();
    assert_eq!(account.as_deref(), Some(identity.upn.as_str()));
}

#[tokio::test]
async fn app_only_tokens_with_a_certificate_or_a_secret_and_refusals_of_both() {
    let idp = Idp::start(|_| {}).await;
    let metrics = Arc::new(Metrics::new(false));
    let service = service(None, Some(metrics.clone()));
    let cert = idp.app_with(&service, "cert", certificate(APP_PEM));
    let token = cert.token(CONTOSO, &idp.scope(), None).await.unwrap();
    let claims = idp.verify(&token);
    assert_eq!((claims.tid.as_str(), claims.appid.as_str()), (idp.guid(CONTOSO).as_str(), APP));
    assert_eq!(claims.roles, ["Exchange.ManageAsApp"]);
    assert_eq!(token.tenant_id.as_deref(), Some(idp.guid(CONTOSO).as_str()));
    assert_eq!(token.actor, Actor::App);

    let secret = ClientAuth::Secret(SecretString::from(SECRET));
    let by_secret = idp.app_with(&service, "secret", secret);
    idp.verify(&by_secret.token(&idp.guid(FABRIKAM), &idp.scope(), None).await.unwrap());

    // (An app-only token is the application's, whichever identity asked: the refusals below are
    // for a tenant with no cached token of the app.)
    let wrong = ClientAuth::Secret(SecretString::from("not-the-secret"));
    let wrong_secret = idp.app_with(&service, "wrong", wrong);
    let err = wrong_secret.token(LITWARE, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::InvalidClient);
    assert!(err.message.contains("AADSTS7000215"), "{}", err.message);

    // A valid certificate and key, but not the one registered on the application.
    let other = idp.app_with(&service, "other", certificate(OTHER_PEM));
    let err = other.token(LITWARE, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::InvalidClient);
    assert!(err.message.contains("AADSTS700027"), "{}", err.message);

    let count = |outcome: &str| metrics.token_requests.with_label_values(&["client_credentials", outcome]).get();
    assert_eq!((count("issued"), count("invalid_client")), (2, 2), "every request to the identity provider is counted");
    let stats = idp.sim.idp_stats();
    assert_eq!((stats.requests, stats.issued), (4, 2));
    assert_eq!(stats.refused.get("AADSTS700027"), Some(&1));
}

#[tokio::test]
async fn an_app_not_consented_in_one_tenant_is_refused_there_and_nowhere_else() {
    let idp = Idp::start(|_| {}).await;
    idp.sim.set_app_consent(APP, FABRIKAM, false);
    let service = service(None, None);
    let app = idp.app(&service);
    let err = app.token(FABRIKAM, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ConsentRequired);
    assert!(err.message.contains("AADSTS700016"), "{}", err.message);
    idp.verify(&app.token(CONTOSO, &idp.scope(), None).await.unwrap());
    idp.verify(&app.token(LITWARE, &idp.scope(), None).await.unwrap());
    // A refusal is not cached: once consent is given, the next call succeeds.
    idp.sim.set_app_consent(APP, FABRIKAM, true);
    idp.verify(&app.token(FABRIKAM, &idp.scope(), None).await.unwrap());
    assert_eq!(idp.sim.idp_stats().requests_for("client_credentials", &idp.guid(FABRIKAM), &idp.resource()), 2);
}

#[tokio::test]
async fn concurrent_callers_make_one_request_per_key() {
    let idp = Idp::start(|_| {}).await;
    let service = service(None, None);
    let app = idp.app(&service);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (app, scope) = (app.clone(), idp.scope());
        let tenant = if i % 2 == 0 { CONTOSO } else { FABRIKAM };
        tasks.push(tokio::spawn(async move { app.token(tenant, &scope, None).await.map(|t| (tenant, t)) }));
    }
    let mut seen = std::collections::HashMap::new();
    for t in tasks {
        let (tenant, token) = t.await.unwrap().unwrap();
        let first = seen.entry(tenant).or_insert_with(|| token.bearer.expose_secret().to_string());
        assert_eq!(first, token.bearer.expose_secret(), "every caller of a key got the one token");
    }
    let stats = idp.sim.idp_stats();
    for tenant in [CONTOSO, FABRIKAM] {
        assert_eq!(stats.requests_for("client_credentials", &idp.guid(tenant), &idp.resource()), 1, "{tenant}");
    }
    assert_eq!(stats.requests, 2);
    // A refused token is forgotten: the next caller asks again.
    app.invalidate(CONTOSO, &idp.scope());
    app.token(CONTOSO, &idp.scope(), None).await.unwrap();
    assert_eq!(idp.sim.idp_stats().requests, 3);
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let idp = Idp::start(|c| c.identity.token_lifetime_seconds = 3).await;
    let service = service(None, None);
    let app = idp.app(&service);
    let run = Duration::from_secs(10);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (app, scope, resource, sim) = (app.clone(), idp.scope(), idp.resource(), idp.sim.clone());
        workers.push(tokio::spawn(async move {
            let mut checked = 0;
            while started.elapsed() < run {
                let token = app.token(CONTOSO, &scope, None).await.unwrap();
                // Exchange's own check, right away: the token must not have run out.
                if let Err(e) = sim.access_tokens().verify(token.bearer.expose_secret(), &resource) {
                    panic!("a caller got a token that {e}");
                }
                checked += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            checked
        }));
    }
    let mut checked = 0;
    for w in workers {
        checked += w.await.unwrap();
    }
    let requests = idp.sim.idp_stats().requests_for("client_credentials", &idp.guid(CONTOSO), &idp.resource());
    // A 3 s token (its `exp` in whole seconds: at least 2 s left when received) is renewed at
    // 90 % of what is left: over 10 s that is between 4 and 7 requests, one per lifetime.
    assert!((4..=7).contains(&requests), "{requests} requests for {checked} tokens in {run:?}");
    assert!(checked > 100, "the callers were served: {checked}");
}

#[tokio::test]
async fn the_partner_refresh_token_serves_every_customer_and_its_newest_rotation_survives_a_restart() {
    let idp = Idp::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = ClientAuth::Secret(SecretString::from(SECRET));
    let alice = idp.identity("alice", ALICE, OAuthGrant::RefreshToken, Some(secret));
    let mut tokens = Vec::new();
    {
        let service = service(Some(store_in(&dir).await), None);
        sign_in(&idp, &service, &alice, ALICE).await;
        let source = service.source(alice.clone());
        for tenant in [CONTOSO, FABRIKAM] {
            let token = source.token(tenant, &idp.scope(), None).await.unwrap();
            let claims = idp.verify(&token);
            assert_eq!((claims.tid, claims.upn.as_deref()), (idp.guid(tenant), Some(ALICE)));
            assert!(claims.amr.iter().any(|m| m == "mfa"));
            assert_eq!(token.actor, Actor::User { upn: ALICE.into() });
            tokens.push(token.bearer.expose_secret().to_string());
        }
    }
    // A restart: a new service on the same database uses the newest refresh token.
    let service = service(Some(store_in(&dir).await), None);
    let token = service.source(alice).token(LITWARE, &idp.scope(), None).await.unwrap();
    tokens.push(token.bearer.expose_secret().to_string());
    let stats = idp.sim.idp_stats();
    assert_eq!(stats.requests_for("refresh_token", &idp.guid(LITWARE), &idp.resource()), 1);
    assert_eq!(stats.stale_refresh_tokens, 0, "every exchange presented the newest refresh token");
    assert_eq!(stats.refused.len(), 0, "{:?}", stats.refused);

    // At rest: sealed. Neither refresh tokens (the simulator's start with `0.sim-rt.`) nor access
    // tokens are in any of the database's files.
    let database = common::database_text(dir.path());
    assert!(database.contains("identity_refresh_tokens"), "the files read are the database");
    assert!(!database.contains("sim-rt."), "a refresh token is in the database in clear");
    for token in &tokens {
        assert!(!database.contains(token.as_str()), "an access token is in the database");
    }
}

#[tokio::test]
async fn a_revoked_or_expired_refresh_token_asks_for_a_new_sign_in() {
    let idp = Idp::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let service = service(Some(store_in(&dir).await), None);
    let alice =
        idp.identity("alice", ALICE, OAuthGrant::RefreshToken, Some(ClientAuth::Secret(SecretString::from(SECRET))));
    sign_in(&idp, &service, &alice, ALICE).await;
    let source = service.source(alice.clone());
    source.token(CONTOSO, &idp.scope(), None).await.unwrap();
    idp.sim.revoke_refresh_tokens(ALICE);
    let err = source.token(FABRIKAM, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ReauthRequired);
    assert!(err.message.contains("AADSTS50173"), "{}", err.message);
    // Signing in again mends it; a refresh token past its lifetime is refused likewise.
    sign_in(&idp, &service, &alice, ALICE).await;
    source.token(FABRIKAM, &idp.scope(), None).await.unwrap();
    idp.sim.set_refresh_token_lifetime(Duration::ZERO);
    let err = source.token(LITWARE, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ReauthRequired);
    assert!(err.message.contains("AADSTS700082"), "{}", err.message);
    // No stored token at all says how to get one.
    let nobody = idp.identity("dave", "dave@partner.example", OAuthGrant::RefreshToken, None);
    let err = service.source(nobody).token(CONTOSO, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ReauthRequired);
    assert!(err.message.contains("psbroker login --admin dave"), "{}", err.message);
}

#[tokio::test]
async fn delegated_access_without_mfa_is_refused_and_partners_reach_only_their_customers() {
    let idp = Idp::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let service = service(Some(store_in(&dir).await), None);
    // carol signs in with a password only: the token is issued, and refused here (its amr).
    let carol = idp.identity("carol", CAROL, OAuthGrant::RefreshToken, None);
    sign_in(&idp, &service, &carol, CAROL).await;
    let carol = service.source(carol);
    let err = carol.token(CONTOSO, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::MfaRequired);
    assert!(err.message.contains("amr"), "{}", err.message);
    // Once a policy demands MFA for her, the identity provider itself refuses: AADSTS50076.
    idp.sim.set_mfa_required(CAROL, true);
    let err = carol.token(CONTOSO, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::MfaRequired);
    assert!(err.message.contains("AADSTS50076"), "{}", err.message);
    // ... as it refuses her sign-in itself.
    let again = idp.identity("carol", CAROL, OAuthGrant::RefreshToken, None);
    let sim = idp.sim.clone();
    let err = service
        .device_login(&again, move |login| sim.approve_device_code(&login.user_code, CAROL).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class, FaultClass::MfaRequired);
    // bob is a partner of contoso only.
    let bob = idp.identity("bob", BOB, OAuthGrant::RefreshToken, None);
    sign_in(&idp, &service, &bob, BOB).await;
    let bob = service.source(bob);
    idp.verify(&bob.token(CONTOSO, &idp.scope(), None).await.unwrap());
    let err = bob.token(FABRIKAM, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::TenantPermissionDenied);
}

#[tokio::test]
async fn an_unreachable_or_overloaded_identity_provider_is_transient() {
    let idp = Idp::start(|c| c.identity.retry_after_seconds = 7).await;
    let service = service(None, None);
    let app = idp.app(&service);
    idp.sim.set_identity_service_down(true);
    let err = app.token(CONTOSO, &idp.scope(), None).await.unwrap_err();
    assert_eq!((err.class, err.retry_after), (FaultClass::IdentityServiceUnreachable, Some(Duration::from_secs(7))));
    idp.sim.set_identity_service_down(false);
    idp.verify(&app.token(CONTOSO, &idp.scope(), None).await.unwrap());
    // Nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut gone = idp.identity("gone", "g@partner.example", OAuthGrant::ClientCredentials, Some(certificate(APP_PEM)));
    gone.login_url = closed;
    let err = service.source(gone).token(CONTOSO, &idp.scope(), None).await.unwrap_err();
    assert_eq!(err.class, FaultClass::IdentityServiceUnreachable);
}

#[tokio::test]
async fn a_claims_challenge_bypasses_the_cache() {
    let idp = Idp::start(|_| {}).await;
    let service = service(None, None);
    let app = idp.app(&service);
    let first = app.token(CONTOSO, &idp.scope(), None).await.unwrap();
    let challenge = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#,
    );
    let second = app.token(CONTOSO, &idp.scope(), Some(&challenge)).await.unwrap();
    assert!(second.expires_at >= first.expires_at);
    let stats = idp.sim.idp_stats();
    assert_eq!((stats.requests, stats.claims_challenges), (2, 1));
    // The answer to the challenge serves later callers.
    let third = app.token(CONTOSO, &idp.scope(), None).await.unwrap();
    assert_eq!(third.bearer.expose_secret(), second.bearer.expose_secret());
    assert!(third.expires_at > SystemTime::now());
}

/// A daemon whose one admin is the registered application (certificate, tokens from the
/// simulator's identity provider), for tenants contoso and fabrikam on the `default` profile.
fn app_only_daemon(profile: &str) -> String {
    let cert = format!("{}/tests/fixtures/identity/app.pem", env!("CARGO_MANIFEST_DIR"));
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[profiles.default]\n{profile}\n\
         [simulator]\nlisten = \"127.0.0.1:0\"\nopen_latency_ms = 1\ncommand_latency_ms = 1\nclose_latency_ms = 1\nmailboxes_per_tenant = 5\n\
         [scheduler]\ndefault_timeout_seconds = 20\n\
         [[admins]]\nname = \"app\"\nupn = \"app@partner.onmicrosoft.com\"\n\
         [admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"{APP}\"\ncertificate = \"file:{cert}\"\nlogin_url = \"http://{{simulator}}\"\n\
         [[tenants]]\ndomain = \"{CONTOSO}\"\n[[tenants]]\ndomain = \"{FABRIKAM}\"\n"
    )
}

/// The daemon with an app-only admin (certificate) reaching the simulator over WinRM with
/// bearer-in-Basic tokens from its own identity provider; one tenant not consented.
#[tokio::test]
async fn an_app_only_admin_runs_cmdlets_over_winrm_with_its_tokens() {
    let profile = "kind = \"wsman\"\nallow_plain_http = true\n\
                   connection_uri = \"http://{simulator}/powershell-liveid?DelegatedOrg={tenant}\"";
    let text = app_only_daemon(profile);
    let app = common::TestApp::start(&text).await;
    let sim = app.sim();
    for _ in 0..3 {
        let (status, body) = app.invoke(CONTOSO, "Get-Mailbox", serde_json::json!({"ResultSize": 2})).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
    }
    let requests_for = |tenant: &str| -> u64 {
        let guid = sim.tenant_id(tenant).unwrap().to_string();
        sim.idp_stats()
            .by_key
            .iter()
            .filter(|(k, _)| k.grant == "client_credentials" && k.tenant == guid)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(requests_for(CONTOSO), 1, "one token for the tenant, cached across opens and commands");
    sim.set_app_consent(APP, FABRIKAM, false);
    let (_, body) = app.invoke(FABRIKAM, "Get-Mailbox", serde_json::json!({"ResultSize": 2})).await;
    assert_eq!(
        (body["status"].as_str(), body["error"]["code"].as_str()),
        (Some("failed"), Some("consent_required")),
        "{body}"
    );
    let (_, body) = app.invoke(CONTOSO, "Get-Mailbox", serde_json::json!({"ResultSize": 2})).await;
    assert_eq!(body["status"], "succeeded", "the other tenant is not affected: {body}");
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"psbroker_token_requests_total{grant="client_credentials",outcome="issued"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"psbroker_token_requests_total{grant="client_credentials",outcome="consent_required"}"#));
    app.stop().await;
}

/// Reads the child's stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn psbroker_login(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_psbroker"))
        .args(["login", "--admin", "alice", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the line with the user code and returns the code.
async fn user_code(lines: std::sync::mpsc::Receiver<String>) -> (String, std::sync::mpsc::Receiver<String>) {
    tokio::task::spawn_blocking(move || loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("psbroker login prints the code");
        if let Some(rest) = line.split("enter the code ").nth(1) {
            return (rest.split_whitespace().next().unwrap().to_string(), lines);
        }
    })
    .await
    .unwrap()
}

/// Waits for the child; returns its status, the rest of its stdout, and its stderr.
async fn finished(
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
) -> (std::process::ExitStatus, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = child.wait_with_output().unwrap();
        let stdout: Vec<String> = lines.iter().collect();
        (output.status, stdout.join("\n"), String::from_utf8_lossy(&output.stderr).into_owned())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn psbroker_login_signs_in_once_with_the_device_code_and_keeps_the_refresh_token_sealed() {
    let idp = Idp::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rt.key"), format!("{KEY_B64}\n")).unwrap();
    let config = dir.path().join("psbroker.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{db}\"\n[identity]\nrefresh_token_key = \"file:{key}\"\n\
             [profiles.default]\nkind = \"simulator\"\n\
             [[admins]]\nname = \"alice\"\nupn = \"{ALICE}\"\n\
             [admins.oauth]\ngrant = \"refresh_token\"\nclient_id = \"{APP}\"\nclient_secret = \"literal:{SECRET}\"\n\
             tenant = \"partner.example\"\nlogin_url = \"{url}\"\n\
             [[tenants]]\ndomain = \"{CONTOSO}\"\n",
            db = dir.path().join("psbroker.db").display(),
            key = dir.path().join("rt.key").display(),
            url = idp.url,
        ),
    )
    .unwrap();

    let mut child = psbroker_login(&config);
    let (code, lines) = user_code(lines_of(&mut child)).await;
    idp.sim.approve_device_code(&code, ALICE).unwrap();
    let (status, stdout, stderr) = finished(child, lines).await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("Signed in as {ALICE}")), "{stdout}");
    assert!(!stdout.contains("sim-rt.") && !stderr.contains("sim-rt."), "the refresh token is never printed");

    // The daemon's token service (here: a new one on the same store and key) uses it.
    let store = store_in(&dir).await;
    let service = service(Some(store), None);
    let alice =
        idp.identity("alice", ALICE, OAuthGrant::RefreshToken, Some(ClientAuth::Secret(SecretString::from(SECRET))));
    let token = service.source(alice).token(CONTOSO, &idp.scope(), None).await.unwrap();
    assert_eq!(idp.verify(&token).upn.as_deref(), Some(ALICE));
    assert!(!common::database_text(dir.path()).contains("sim-rt."), "sealed at rest");

    // A declined sign-in fails with the reason and keeps the stored token.
    let mut child = psbroker_login(&config);
    let (code, lines) = user_code(lines_of(&mut child)).await;
    assert!(idp.sim.decline_device_code(&code));
    let (status, _, stderr) = finished(child, lines).await;
    assert!(!status.success());
    assert!(stderr.contains("sign-in failed") && stderr.contains("authorization_declined"), "{stderr}");
    assert!(store_in(&dir).await.refresh_token("alice").await.unwrap().is_some());
}

/// The same identity over Exchange Online's REST API (profile kind `exo_rest`): the connector
/// asks the token service for `{base}/.default`, the simulator's REST service checks what its
/// identity provider issued.
#[tokio::test]
async fn an_app_only_admin_runs_cmdlets_over_rest_with_its_tokens() {
    let text = app_only_daemon("kind = \"exo_rest\"\nbase_url = \"http://{simulator}\"\nallow_plain_http = true");
    let app = common::TestApp::start(&text).await;
    let sim = app.sim();
    sim.set_app_consent(APP, FABRIKAM, false);
    for _ in 0..3 {
        let (status, body) = app.invoke(CONTOSO, "Get-Mailbox", serde_json::json!({"ResultSize": 2})).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
        assert_eq!(body["output"].as_array().map(Vec::len), Some(2), "{body}");
    }
    let (_, body) = app.invoke(FABRIKAM, "Get-Mailbox", serde_json::json!({"ResultSize": 2})).await;
    assert_eq!(
        (body["status"].as_str(), body["error"]["code"].as_str()),
        (Some("failed"), Some("consent_required")),
        "{body}"
    );
    let stats = sim.idp_stats();
    let contoso = sim.tenant_id(CONTOSO).unwrap().to_string();
    let for_contoso: u64 = stats.by_key.iter().filter(|(k, _)| k.tenant == contoso).map(|(_, n)| n).sum();
    assert_eq!(for_contoso, 1, "one token for three calls: {:?}", stats.by_key);
    app.stop().await;
}
