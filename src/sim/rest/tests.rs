//! The REST service on the wire, spoken to with plain HTTP requests (no connector): what a
//! client of Exchange Online sees.

use super::MANAGE_AS_APP;
use crate::config::SimulatorConfig;
use crate::sim::tokens::SimClaims;
use crate::sim::{SimAccount, Simulator};
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

const TENANT: &str = "contoso.onmicrosoft.com";
const OTHER: &str = "fabrikam.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";

fn simulator(configure: impl FnOnce(&mut SimulatorConfig)) -> Simulator {
    let mut cfg =
        SimulatorConfig { command_latency_ms: 0, open_latency_ms: 0, close_latency_ms: 0, ..Default::default() };
    configure(&mut cfg);
    let accounts = vec![SimAccount { upn: ALICE.into(), password: "pa".into(), tenants: vec![TENANT.into()] }];
    Simulator::new(&cfg, accounts, vec![TENANT.into(), OTHER.into()])
}

async fn serve(sim: &Simulator) -> SocketAddr {
    crate::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap().0
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sim: &Simulator, audience: &str, tenant: &str) -> SimClaims {
    SimClaims {
        aud: audience.into(),
        tid: sim.tenant_id(tenant).unwrap().to_string(),
        exp: now() + 600,
        iat: now(),
        appid: "app-1".into(),
        upn: None,
        amr: vec![],
        roles: vec![MANAGE_AS_APP.into()],
        scp: None,
    }
}

fn app_token(sim: &Simulator, addr: SocketAddr) -> String {
    sim.access_tokens().issue(&claims(sim, &format!("http://{addr}"), TENANT))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn invoke(url: &str, token: &str, cmdlet: &str, parameters: Json, prefer: Option<&str>) -> reqwest::Response {
    let mut request = http()
        .post(url)
        .bearer_auth(token)
        .json(&json!({"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}));
    if let Some(p) = prefer {
        request = request.header("Prefer", p);
    }
    request.send().await.unwrap()
}

fn invoke_url(addr: SocketAddr) -> String {
    format!("http://{addr}/adminapi/beta/{TENANT}/InvokeCommand")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cmdlet_gets_403_with_a_body_that_claims_gzip_and_is_not() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let response = invoke(&invoke_url(addr), &app_token(&sim, addr), "Get-Nothing", json!({}), None).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let body = response.bytes().await.unwrap();
    assert_ne!(&body[..2], b"\x1f\x8b", "not gzip");
    assert!(serde_json::from_slice::<Json>(&body).is_err(), "nor JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_on_every_request() {
    let sim = simulator(|c| c.mfa_required = vec![ALICE.into()]);
    let addr = serve(&sim).await;
    let base = format!("http://{addr}");
    let send = |token: Option<String>| {
        let url = invoke_url(addr);
        async move {
            let mut r = http().post(url).json(&json!({"CmdletInput": {"CmdletName": "Get-AcceptedDomain"}}));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.unwrap()
        }
    };
    let tokens = sim.access_tokens();
    let ok = send(Some(app_token(&sim, addr))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let none = send(None).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(none.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer "));
    let refused = [
        ("garbage", "not.a.token".to_string()),
        ("expired", tokens.issue(&SimClaims { exp: now() - 1, ..claims(&sim, &base, TENANT) })),
        ("for Security & Compliance", tokens.issue(&claims(&sim, &format!("{base}/ipps"), TENANT))),
        ("for another tenant", tokens.issue(&claims(&sim, &base, OTHER))),
        ("without Exchange.ManageAsApp", tokens.issue(&SimClaims { roles: vec![], ..claims(&sim, &base, TENANT) })),
        (
            "a user without MFA",
            tokens.issue(&SimClaims {
                upn: Some(ALICE.into()),
                roles: vec![],
                amr: vec!["pwd".into()],
                ..claims(&sim, &base, TENANT)
            }),
        ),
    ];
    for (what, token) in refused {
        let r = send(Some(token)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(r.headers()["www-authenticate"].to_str().unwrap().contains(r#"error="invalid_token""#), "{what}");
    }
    let with_mfa = SimClaims {
        upn: Some(ALICE.into()),
        roles: vec![],
        amr: vec!["pwd".into(), "mfa".into()],
        ..claims(&sim, &base, TENANT)
    };
    assert_eq!(send(Some(tokens.issue(&with_mfa))).await.status(), StatusCode::OK);
    // Alice may not manage the other tenant: the service's permission text, 403.
    let other = invoke(
        &format!("http://{addr}/adminapi/beta/{OTHER}/InvokeCommand"),
        &tokens.issue(&SimClaims { tid: sim.tenant_id(OTHER).unwrap().to_string(), ..with_mfa.clone() }),
        "Get-AcceptedDomain",
        json!({}),
        None,
    )
    .await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let body: Json = other.json().await.unwrap();
    assert!(body["error"]["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("does not have permission to manage this tenant"));
    // Tenants by GUID work as by domain.
    let by_guid = format!("http://{addr}/adminapi/beta/{}/InvokeCommand", sim.tenant_id(TENANT).unwrap());
    assert_eq!(
        invoke(&by_guid, &app_token(&sim, addr), "Get-AcceptedDomain", json!({}), None).await.status(),
        StatusCode::OK
    );
    // Revoked sessions: a claims challenge naming the cut-off.
    sim.require_tokens_issued_after(TENANT, now() + 5);
    let challenged = send(Some(app_token(&sim, addr))).await;
    assert_eq!(challenged.status(), StatusCode::UNAUTHORIZED);
    let header = challenged.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(header.contains(r#"error="insufficient_claims""#) && header.contains("claims=\""), "{header}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_capped_and_further_pages_belong_to_their_caller() {
    let sim = simulator(|c| c.rest.max_page_size = 10);
    let addr = serve(&sim).await;
    let token = app_token(&sim, addr);
    let pid = uuid::Uuid::new_v4();
    let response = http()
        .post(invoke_url(addr))
        .bearer_auth(&token)
        .header("Prefer", "odata.maxpagesize=50")
        .header("client-request-id", pid.to_string())
        .json(&json!({"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"ResultSize": "Unlimited"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["preference-applied"], "odata.maxpagesize=10", "capped by the service");
    assert_eq!(response.headers()["client-request-id"], pid.to_string().as_str());
    let page: Json = response.json().await.unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 10);
    assert_eq!(page["value"][0]["Guid@odata.type"], "#Guid");
    let next = page["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(next.starts_with(&invoke_url(addr)) && next.contains("$skiptoken="), "{next}");
    // Another identity cannot read the rest.
    let intruder = sim
        .access_tokens()
        .issue(&SimClaims { appid: "app-2".into(), ..claims(&sim, &format!("http://{addr}"), TENANT) });
    let stolen = invoke(&next, &intruder, "Get-Mailbox", json!({}), None).await;
    assert_eq!(stolen.status(), StatusCode::BAD_REQUEST);
    let rest: Json =
        invoke(&next, &token, "Get-Mailbox", json!({}), Some("odata.maxpagesize=10")).await.json().await.unwrap();
    assert_eq!(rest["value"].as_array().unwrap().len(), 10);
    assert_eq!(rest["value"][0]["Name"], "user011");
    let last: Json = invoke(rest["@odata.nextLink"].as_str().unwrap(), &token, "Get-Mailbox", json!({}), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last["value"].as_array().unwrap().len(), 5);
    assert!(last.get("@odata.nextLink").is_none());
    assert_eq!(sim.stats().executions.get(&pid), Some(&1), "further pages run nothing again");
    assert_eq!(sim.rest_stats().open_cursors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_doors_redirect_to_where_a_tenant_is_served() {
    let sim = simulator(|c| {
        c.rest.tenant_hosts.insert(TENANT.into(), "nam12b".into());
        c.rest.compliance_region = "eur03b".into();
    });
    let addr = serve(&sim).await;
    let token = app_token(&sim, addr);
    let probe = http()
        .get(format!("http://{addr}/adminapi/v1.0/{TENANT}/EXOModuleFile"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::FOUND);
    assert_eq!(
        probe.headers()["location"],
        format!("http://{addr}/t/nam12b/adminapi/v1.0/{TENANT}/EXOModuleFile").as_str()
    );
    let front = invoke(&invoke_url(addr), &token, "Get-AcceptedDomain", json!({}), None).await;
    assert_eq!(front.status(), StatusCode::FOUND);
    let served = invoke(
        &format!("http://{addr}/t/nam12b/adminapi/beta/{TENANT}/InvokeCommand"),
        &token,
        "Get-AcceptedDomain",
        json!({}),
        None,
    )
    .await;
    assert_eq!(served.status(), StatusCode::OK);
    let at_home = http()
        .get(format!("http://{addr}/t/nam12b/adminapi/v1.0/{TENANT}/EXOModuleFile"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let module: Json = at_home.json().await.unwrap();
    assert!(module["value"][0]["exportedCmdlets"].as_str().unwrap().contains("Get-Mailbox"));

    let ipps_token = sim.access_tokens().issue(&claims(&sim, &format!("http://{addr}/ipps"), TENANT));
    let banner = format!("http://{addr}/ipps/adminapi/beta/{TENANT}/EXOBanner('AutogenSession')");
    let probe = http().get(&banner).bearer_auth(&ipps_token).send().await.unwrap();
    assert_eq!(probe.status(), StatusCode::FOUND);
    assert_eq!(
        probe.headers()["location"],
        format!("http://{addr}/ipps/r/eur03b/adminapi/beta/{TENANT}/EXOBanner('AutogenSession')").as_str()
    );
    assert_eq!(sim.rest_stats().probes_by_tenant.get(TENANT), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_unknown_operations() {
    let sim = simulator(|_| {});
    let addr = serve(&sim).await;
    let token = app_token(&sim, addr);
    let get = http().get(invoke_url(addr)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let unknown = invoke(&format!("http://{addr}/adminapi/beta/{TENANT}/Nope"), &token, "x", json!({}), None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad = http().post(invoke_url(addr)).bearer_auth(&token).body("{").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let batch = http()
        .post(format!("http://{addr}/adminapi/beta/{TENANT}/$batch"))
        .bearer_auth(&token)
        .json(&json!({"requests": [
            {"id": "1", "method": "GET", "url": "/adminapi/beta/x/InvokeCommand"},
            {"id": "2", "method": "POST", "url": format!("/adminapi/beta/{OTHER}/InvokeCommand"), "body": {}},
            {"id": "3", "method": "POST", "url": format!("adminapi/beta/{TENANT}/InvokeCommand"), "body": {"CmdletInput": {"CmdletName": "Get-AcceptedDomain"}}}
        ]}))
        .send()
        .await
        .unwrap();
    let answer: Json = batch.json().await.unwrap();
    let statuses: Vec<_> =
        answer["responses"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [405, 400, 200], "each sub-request on its own; another tenant's is refused");
    // The WS-Management endpoint is where it was.
    let wsman = http().post(format!("http://{addr}/wsman")).send().await.unwrap();
    assert_eq!(wsman.status(), StatusCode::UNAUTHORIZED);
}
