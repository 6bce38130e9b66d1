//! The identity provider's endpoints over HTTP, as a client that is not ours would see them.

use super::*;
use crate::config::SimulatorConfig;
use crate::identity::assertion::{pem_certificates, tests::APP_PEM, ClientCertificate};
use crate::sim::{SimAccount, SimCredential};
use serde_json::Value as Json;

const APP: &str = "app-1";
const TENANT: &str = "contoso.onmicrosoft.com";
const UPN: &str = "alice@partner.example";

fn tenant_guid(domain: &str) -> String {
    crate::sim::tenant_guid(domain).to_string()
}

async fn start(tweak: impl FnOnce(&mut SimulatorConfig)) -> (Simulator, String) {
    let mut cfg = SimulatorConfig::default();
    cfg.identity.device_code_interval_seconds = 1;
    tweak(&mut cfg);
    let account = SimAccount { upn: UPN.into(), password: "pw".into(), tenants: vec!["*".into()] };
    let sim = Simulator::new(&cfg, vec![account], vec![TENANT.into()]);
    sim.register_app(SimApp {
        client_id: APP.into(),
        name: "app".into(),
        secrets: vec!["s3cret".into()],
        certificates: pem_certificates(APP_PEM).unwrap(),
        tenants: vec!["*".into()],
        public_client: true,
    })
    .unwrap();
    let (addr, _) = crate::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, format!("http://{addr}"))
}

async fn post(url: &str, form: &[(&str, &str)]) -> (u16, Json) {
    let r = reqwest::Client::new().post(url).form(form).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn start_device_flow(base: &str) -> (u16, Json) {
    let scope = "https://outlook.office365.com/.default offline_access";
    post(&format!("{base}/organizations/oauth2/v2.0/devicecode"), &[("client_id", APP), ("scope", scope)]).await
}

async fn poll(base: &str, device_code: &str) -> (u16, Json) {
    let grant = "urn:ietf:params:oauth:grant-type:device_code";
    let form = [("grant_type", grant), ("client_id", APP), ("device_code", device_code)];
    post(&format!("{base}/organizations/oauth2/v2.0/token"), &form).await
}

#[tokio::test]
async fn client_credentials_by_secret_in_the_body_or_basic_and_by_assertion() {
    let (sim, base) = start(|_| {}).await;
    let url = format!("{base}/{TENANT}/oauth2/v2.0/token");
    let scope = "https://outlook.office365.com/.default";
    let (status, body) = post(
        &url,
        &[("grant_type", "client_credentials"), ("client_id", APP), ("client_secret", "s3cret"), ("scope", scope)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("Bearer"), Some(3600)));
    let claims =
        sim.access_tokens().verify(body["access_token"].as_str().unwrap(), "https://outlook.office365.com").unwrap();
    assert_eq!(claims.tid, tenant_guid(TENANT));
    let basic = reqwest::Client::new()
        .post(&url)
        .basic_auth(APP, Some("s3cret"))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    // By GUID as well as by domain.
    let by_guid = format!("{base}/{}/oauth2/v2.0/token", tenant_guid(TENANT));
    let assertion = ClientCertificate::from_pem(APP_PEM).unwrap().assertion(APP, &by_guid);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_assertion_type", crate::identity::assertion::ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
        ("scope", scope),
    ];
    assert_eq!(post(&by_guid, &form).await.0, 200);
    // The same assertion posted to another tenant's endpoint names the wrong audience.
    let (status, body) = post(&url, &form).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(body["error_codes"], serde_json::json!([700027]));
    assert!(body["error_description"].as_str().unwrap().contains("Trace ID:"));
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_entras_refusals() {
    let (_sim, base) = start(|_| {}).await;
    let url = format!("{base}/{TENANT}/oauth2/v2.0/token");
    let (status, body) = post(&url, &[("client_id", APP)]).await;
    assert_eq!((status, body["error_codes"][0].as_u64()), (400, Some(900144)));
    let (_, body) = post(&url, &[("grant_type", "password"), ("client_id", APP)]).await;
    assert_eq!(body["error"], "unsupported_grant_type");
    let (_, body) = post(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
            ("client_secret", "x"),
            ("scope", "https://x/.default"),
        ],
    )
    .await;
    assert_eq!(body["error_codes"][0].as_u64(), Some(700016));
    let (_, body) = post(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", "s3cret"),
            ("scope", "https://x/Mail.Read"),
        ],
    )
    .await;
    assert_eq!(body["error"], "invalid_scope");
    let (_, body) =
        post(&format!("{base}/nowhere.example/oauth2/v2.0/token"), &[("grant_type", "client_credentials")]).await;
    assert_eq!(body["error_codes"][0].as_u64(), Some(90002));
    let refused = reqwest::Client::new().post(&url).body("not a form").send().await.unwrap();
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn device_code_polling_pending_slow_down_declined_expired_and_the_sign_in_page() {
    let (sim, base) = start(|c| c.identity.device_code_lifetime_seconds = 2).await;
    let (status, code) = start_device_flow(&base).await;
    assert_eq!(status, 200, "{code}");
    assert_eq!(code["verification_uri"].as_str(), Some(format!("{base}/devicelogin").as_str()));
    assert_eq!(code["interval"].as_u64(), Some(1));
    assert_eq!(sim.pending_device_codes(), [code["user_code"].as_str().unwrap()]);
    let device_code = code["device_code"].as_str().unwrap().to_string();
    assert_eq!(poll(&base, &device_code).await.1["error"], "authorization_pending");
    assert_eq!(poll(&base, &device_code).await.1["error"], "slow_down", "polled again at once");
    // The sign-in page: a wrong password changes nothing; the right one approves.
    let sign_in = |password: &'static str| {
        reqwest::Client::new()
            .post(format!("{base}/devicelogin"))
            .form(&[
                ("code", code["user_code"].as_str().unwrap()),
                ("upn", UPN),
                ("password", password),
                ("action", "approve"),
            ])
            .send()
    };
    assert_eq!(sign_in("wrong").await.unwrap().status(), 400);
    assert_eq!(sign_in("pw").await.unwrap().status(), 200);
    let (status, tokens) = poll(&base, &device_code).await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].as_str().unwrap().starts_with("0.sim-rt."));
    let claims =
        sim.access_tokens().verify(tokens["access_token"].as_str().unwrap(), "https://outlook.office365.com").unwrap();
    assert_eq!((claims.upn.as_deref(), claims.tid), (Some(UPN), tenant_guid("partner.example")));
    assert_eq!(poll(&base, &device_code).await.1["error"], "bad_verification_code", "a device code is used once");

    let (_, declined) = start_device_flow(&base).await;
    assert!(sim.decline_device_code(declined["user_code"].as_str().unwrap()));
    assert_eq!(poll(&base, declined["device_code"].as_str().unwrap()).await.1["error"], "authorization_declined");

    let (_, expiring) = start_device_flow(&base).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(poll(&base, expiring["device_code"].as_str().unwrap()).await.1["error"], "expired_token");
    assert_eq!(sim.idp_stats().device_codes, 3);
}

#[tokio::test]
async fn the_winrm_side_takes_the_identity_providers_tokens_for_their_tenant_only() {
    let (sim, base) = start(|_| {}).await;
    let app_token = |tenant: &str| {
        let url = format!("{base}/{tenant}/oauth2/v2.0/token");
        let scope = format!("{base}/.default");
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", "s3cret"),
                ("scope", &scope),
            ];
            post(&url, &form).await.1["access_token"].as_str().unwrap().to_string()
        }
    };
    let token = app_token(TENANT).await;
    let shell = sim.open_shell_as(UPN, SimCredential::BearerToken(&token), TENANT, "Microsoft.Exchange", None).unwrap();
    sim.close_shell(&shell).unwrap();
    // A token for the partner's own tenant does not open a shell in the customer's.
    let elsewhere = app_token("partner.example").await;
    let err =
        sim.open_shell_as(UPN, SimCredential::BearerToken(&elsewhere), TENANT, "Microsoft.Exchange", None).unwrap_err();
    assert_eq!(err.http_status, 401);
    assert!(sim.authenticate(UPN, SimCredential::BearerToken("eyJhbGciOiJub25lIn0.e30.")).is_err());
    // Another simulator's token is worthless here.
    let foreign = crate::sim::tokens::SimTokens::new().issue(&sim.access_tokens().verify(&token, &base).unwrap());
    assert!(sim.authenticate(UPN, SimCredential::BearerToken(&foreign)).is_err());
}

#[tokio::test]
async fn an_overloaded_identity_service_answers_503_with_retry_after() {
    let (sim, base) = start(|c| {
        c.identity.unavailable = 1.0;
        c.identity.retry_after_seconds = 3;
    })
    .await;
    let url = format!("{base}/{TENANT}/oauth2/v2.0/token");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_secret", "s3cret"),
        ("scope", "https://x/.default"),
    ];
    let r = reqwest::Client::new().post(&url).form(&form).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (503, "3"));
    sim.set_identity_unavailable_rate(0.0);
    assert_eq!(post(&url, &form).await.0, 200);
    assert_eq!(sim.idp_stats().refused.get("AADSTS90033"), Some(&1));
}
