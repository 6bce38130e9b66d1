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
    let dir = tempfile::tempdir().unwrap();
    // bob's configured password differs from the simulated service's: every open fails logon.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{db}\"\n\
         [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"http://{{simulator}}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         [simulator]\nopen_latency_ms = 1\ncommand_latency_ms = 1\nclose_latency_ms = 1\n\
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
    let mut database = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("psbroker.db") {
            database.extend(std::fs::read(p).unwrap());
        }
    }
    let database = String::from_utf8_lossy(&database);
    for secret in [GOOD, WRONG] {
        assert!(!log.contains(secret), "log leaks a password");
        assert!(!database.contains(secret), "database leaks a password");
        for a in &answers {
            assert!(!a.contains(secret), "an API answer leaks a password: {a}");
        }
    }
}
