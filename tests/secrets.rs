//! Admin passwords never leave the credential store: not in a log line (at debug level), not in
//! an API answer, a metric, an error message, or the database file — including when a logon
//! fails and on the wire path, where they travel in Authorization headers.

mod common;

use common::daemon::Daemon;
use serde_json::{json, Value as Json};

const GOOD: &str = "Sup3r-Secret-Alice-Pw";
const WRONG: &str = "Wr0ng-Secret-Bob-Pw";

#[tokio::test]
async fn admin_passwords_appear_nowhere() {
    passwords_appear_nowhere("allow_plain_http = true", "").await;
}

/// The same with NTLM and message encryption: the password never travels, and neither the NTLM
/// exchange (sspi's own debug logging included) nor a refused logon writes it anywhere.
#[tokio::test]
async fn admin_passwords_appear_nowhere_with_ntlm() {
    passwords_appear_nowhere("auth = \"ntlm\"", "auth = [\"ntlm\"]").await;
}

async fn passwords_appear_nowhere(profile: &str, simulator: &str) {
    let dir = tempfile::tempdir().unwrap();
    // bob's configured password differs from the simulated service's: every open fails logon.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{db}\"\n\
         [profiles.default]\nkind = \"wsman\"\n{profile}\n\
         connection_uri = \"http://{{simulator}}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         [profiles.rest]\nkind = \"exo_rest\"\nbase_url = \"http://{{simulator}}\"\nallow_plain_http = true\n\
         [simulator]\nopen_latency_ms = 1\ncommand_latency_ms = 1\nclose_latency_ms = 1\n{simulator}\n\
         [[simulator.accounts]]\nupn = \"alice@p.onmicrosoft.com\"\npassword = \"{GOOD}\"\n\
         [[simulator.accounts]]\nupn = \"bob@p.onmicrosoft.com\"\npassword = \"not-what-bob-has\"\n\
         [[admins]]\nname = \"alice\"\nupn = \"alice@p.onmicrosoft.com\"\ncredential = \"env:ALICE_PW\"\n\
         [[admins]]\nname = \"bob\"\nupn = \"bob@p.onmicrosoft.com\"\ncredential = \"file:{bob}\"\n\
         [[tenants]]\ndomain = \"contoso.onmicrosoft.com\"\n",
        db = dir.path().join("psbroker.db").display(),
        bob = dir.path().join("bob.pw").display(),
    );
    std::fs::write(dir.path().join("bob.pw"), format!("{WRONG}\n")).unwrap();
    let path = dir.path().join("psbroker.toml");
    std::fs::write(&path, config).unwrap();
    // The child inherits it: alice's credential comes from the environment, bob's from a file.
    std::env::set_var("ALICE_PW", GOOD);
    let daemon = Daemon::start(&path, "debug");

    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    let client = psbroker::cli_token::bearer_client(token.trim()).unwrap();
    let mut answers = Vec::new();
    let post = |body: Json| client.post(format!("{}/v1/invocations", daemon.url)).json(&body).send();
    for body in [
        json!({"tenant": "contoso.onmicrosoft.com", "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 2}, "admin": "alice"}),
        json!({"tenant": "contoso.onmicrosoft.com", "cmdlet": "Get-Mailbox", "admin": "bob"}),
        json!({"tenant": "contoso.onmicrosoft.com", "cmdlet": "Get-Nothing", "admin": "alice"}),
    ] {
        answers.push(post(body).await.unwrap().text().await.unwrap());
    }
    assert!(answers[0].contains("\"succeeded\""), "{}", answers[0]);
    assert!(answers[1].contains("logon_failed"), "{}", answers[1]);
    for path in ["/v1/sessions", "/v1/pools", "/metrics", "/v1/audit"] {
        answers.push(client.get(format!("{}{path}", daemon.url)).send().await.unwrap().text().await.unwrap());
    }
    let log = daemon.log.clone();
    assert!(daemon.terminate());

    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("session open failed"), "the failed logon was logged:\n{log}");
    let database = common::database_text(dir.path());
    for secret in [GOOD, WRONG] {
        assert!(!log.contains(secret), "log leaks a password");
        assert!(!database.contains(secret), "database leaks a password");
        for a in &answers {
            assert!(!a.contains(secret), "an API answer leaks a password: {a}");
        }
    }
}

const APP_SECRET: &str = "Cl1ent-Secret-Value-0f-App-One";
const WRONG_APP_SECRET: &str = "Wr0ng-Cl1ent-Secret-Value";
const REFRESH_TOKEN_KEY: &str = "c2VhbGluZy1rZXktZm9yLXRoZS1zZWNyZXRzLXRlc3Q=";
const APP_ONE: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const APP_TWO: &str = "aaaaaaaa-0000-0000-0000-000000000002";

/// Lines of the private key of the test certificate (any one of them appearing would be a leak).
fn private_key_lines() -> Vec<String> {
    let pem =
        std::fs::read_to_string(format!("{}/tests/fixtures/identity/app.pem", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let key = &pem[pem.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
    key.lines().skip(1).filter(|l| l.len() == 64).take(20).map(str::to_string).collect()
}

/// OAuth identities, over WinRM (bearer-in-Basic) and over Exchange Online's REST API: a client
/// secret (and a wrong one), a certificate's private key, the key that
/// seals refresh tokens, refresh tokens (`psbroker login` while the daemon runs) and access
/// tokens appear in no log line, API answer, metric or database file.
#[tokio::test]
async fn oauth_secrets_and_tokens_appear_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fixtures = format!("{}/tests/fixtures/identity", env!("CARGO_MANIFEST_DIR"));
    std::fs::write(dir.path().join("rt.key"), REFRESH_TOKEN_KEY).unwrap();
    let login_url = format!("http://127.0.0.1:{port}");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{db}\"\n\
         [identity]\nrefresh_token_key = \"file:{key}\"\n\
         [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"http://{{simulator}}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         [profiles.rest]\nkind = \"exo_rest\"\nbase_url = \"http://{{simulator}}\"\nallow_plain_http = true\n\
         [simulator]\nlisten = \"127.0.0.1:{port}\"\nopen_latency_ms = 1\ncommand_latency_ms = 1\nclose_latency_ms = 1\n\
         [simulator.identity]\ndevice_code_interval_seconds = 1\n\
         [[simulator.identity.apps]]\nclient_id = \"{APP_ONE}\"\nsecrets = [\"env:APP_ONE_SECRET\"]\n\
         [[simulator.identity.apps]]\nclient_id = \"{APP_TWO}\"\ncertificates = [\"{fixtures}/app-cert.pem\"]\n\
         [[admins]]\nname = \"by-secret\"\nupn = \"app1@p.onmicrosoft.com\"\n\
         [admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"{APP_ONE}\"\nclient_secret = \"env:APP_ONE_SECRET\"\nlogin_url = \"{login_url}\"\n\
         [[admins]]\nname = \"wrong-secret\"\nupn = \"app3@p.onmicrosoft.com\"\n\
         [admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"{APP_ONE}\"\nclient_secret = \"file:{wrong}\"\nlogin_url = \"{login_url}\"\n\
         [[admins]]\nname = \"by-cert\"\nupn = \"app2@p.onmicrosoft.com\"\n\
         [admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"{APP_TWO}\"\ncertificate = \"file:{fixtures}/app.pem\"\nlogin_url = \"{login_url}\"\n\
         [[admins]]\nname = \"partner\"\nupn = \"carol@p.onmicrosoft.com\"\ncredential = \"env:CAROL_PW\"\n\
         [admins.oauth]\ngrant = \"refresh_token\"\nclient_id = \"{APP_ONE}\"\nclient_secret = \"env:APP_ONE_SECRET\"\nlogin_url = \"{login_url}\"\ntenant = \"p.onmicrosoft.com\"\n\
         [[tenants]]\ndomain = \"contoso.onmicrosoft.com\"\n[[tenants]]\ndomain = \"fabrikam.onmicrosoft.com\"\n\
         [[tenants]]\ndomain = \"litware.onmicrosoft.com\"\nprofile = \"rest\"\n",
        db = dir.path().join("psbroker.db").display(),
        key = dir.path().join("rt.key").display(),
        wrong = dir.path().join("wrong.secret").display(),
    );
    std::fs::write(dir.path().join("wrong.secret"), WRONG_APP_SECRET).unwrap();
    let path = dir.path().join("psbroker.toml");
    std::fs::write(&path, config).unwrap();
    std::env::set_var("APP_ONE_SECRET", APP_SECRET);
    std::env::set_var("CAROL_PW", "carol-password");
    let daemon = Daemon::start(&path, "debug");

    // `psbroker login` while the daemon runs, approved on the simulator's sign-in page.
    let mut login = std::process::Command::new(env!("CARGO_BIN_EXE_psbroker"))
        .args(["login", "--admin", "partner", "--config"])
        .arg(&path)
        .env("PSBROKER_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufRead::lines(std::io::BufReader::new(login.stdout.take().unwrap()));
    let prompt = stdout.next().unwrap().unwrap();
    let code = prompt.split("enter the code ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let form = [
        ("code", code.as_str()),
        ("upn", "carol@p.onmicrosoft.com"),
        ("password", "carol-password"),
        ("action", "approve"),
    ];
    let page = reqwest::Client::new().post(format!("{login_url}/devicelogin")).form(&form).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let rest: Vec<String> = stdout.map_while(Result::ok).collect();
    let login = login.wait_with_output().unwrap();
    let login_output = format!("{prompt}\n{}\n{}", rest.join("\n"), String::from_utf8_lossy(&login.stderr));
    assert!(login.status.success(), "{login_output}");

    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    let client = psbroker::cli_token::bearer_client(token.trim()).unwrap();
    let mut answers = Vec::new();
    for (admin, tenant, outcome) in [
        ("by-secret", "contoso.onmicrosoft.com", "succeeded"),
        ("by-cert", "contoso.onmicrosoft.com", "succeeded"),
        ("partner", "fabrikam.onmicrosoft.com", "succeeded"),
        ("wrong-secret", "fabrikam.onmicrosoft.com", "invalid_client"),
        // The same identities over Exchange Online's REST API (bearer tokens on every call). The
        // wrong secret first: its application's token for the tenant would be shared otherwise.
        ("wrong-secret", "litware.onmicrosoft.com", "invalid_client"),
        ("by-secret", "litware.onmicrosoft.com", "succeeded"),
        ("by-cert", "litware.onmicrosoft.com", "succeeded"),
        ("partner", "litware.onmicrosoft.com", "succeeded"),
    ] {
        let body = json!({"tenant": tenant, "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}, "admin": admin, "timeout_seconds": 10});
        let answer = client
            .post(format!("{}/v1/invocations", daemon.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(answer.contains(outcome), "{admin}: {answer}");
        answers.push(answer);
    }
    for path in ["/v1/sessions", "/v1/pools", "/metrics", "/v1/audit"] {
        answers.push(client.get(format!("{}{path}", daemon.url)).send().await.unwrap().text().await.unwrap());
    }
    assert!(answers.iter().any(|a| a.contains("psbroker_token_requests_total")), "the metric is there");
    let log = daemon.log.clone();
    assert!(daemon.terminate());

    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("requesting an access token"), "token requests were logged (at debug):\n{log}");
    assert!(log.contains("REST call") && log.contains("request_id="), "the REST calls were logged:\n{log}");
    let database = common::database_text(dir.path());
    assert!(database.contains("identity_refresh_tokens"), "the files read are the database");
    let mut secrets: Vec<(&str, String)> = vec![
        ("a client secret", APP_SECRET.to_string()),
        ("a wrong client secret", WRONG_APP_SECRET.to_string()),
        ("the refresh-token key", REFRESH_TOKEN_KEY.to_string()),
        // The simulator's refresh tokens start with this; its access tokens and client
        // assertions are JWTs, whose base64url header starts with `{"typ":"JWT"`.
        ("a refresh token", "sim-rt.".to_string()),
        ("an access token or assertion", "eyJ0eXAiOiJKV1Qi".to_string()),
    ];
    secrets.extend(private_key_lines().into_iter().map(|l| ("the private key", l)));
    let sample = psbroker::sim::tokens::SimTokens::new().issue(&psbroker::sim::tokens::SimClaims {
        aud: "a".into(),
        tid: "t".into(),
        exp: 1,
        iat: 0,
        appid: "c".into(),
        upn: None,
        amr: vec![],
        roles: vec![],
        scp: None,
    });
    assert!(sample.starts_with("eyJ0eXAiOiJKV1Qi"), "the access-token marker matches the simulator's tokens");
    for (what, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "the daemon's log leaks {what}");
        assert!(!database.contains(secret.as_str()), "the database leaks {what}");
        assert!(!login_output.contains(secret.as_str()), "psbroker login leaks {what}");
        for a in &answers {
            assert!(!a.contains(secret.as_str()), "an API answer leaks {what}: {a}");
        }
    }
}
