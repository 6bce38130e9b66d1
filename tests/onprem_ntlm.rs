//! The daemon against an on-premises-style endpoint: a `wsman` profile with `auth = "ntlm"` on
//! plain `http://` (sealed by WinRM message encryption, no `allow_plain_http`), served by the
//! embedded simulator with NTLM as its only logon method. Through the HTTP API: results, a
//! wrong password and a locked account with their codes.

mod common;

use common::TestApp;
use serde_json::json;

const CONTOSO: &str = "contoso.onmicrosoft.com";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
max_wait_seconds = 20

[scheduler]
auth_failure_cooldown_seconds = 1

[profiles.default]
kind = "wsman"
connection_uri = "http://{simulator}/PowerShell?DelegatedOrg={tenant}"
auth = "ntlm"

[[admins]]
name = "alice"
upn = "alice@partner.onmicrosoft.com"
credential = "literal:pw-alice"

[[admins]]
name = "mallory"
upn = "mallory@partner.onmicrosoft.com"
credential = "literal:not-the-password"

[[tenants]]
domain = "contoso.onmicrosoft.com"

[simulator]
listen = "127.0.0.1:0"
open_latency_ms = 0
command_latency_ms = 0
close_latency_ms = 0
mailboxes_per_tenant = 5
auth = ["ntlm"]

[[simulator.accounts]]
upn = "alice@partner.onmicrosoft.com"
password = "pw-alice"

[[simulator.accounts]]
upn = "mallory@partner.onmicrosoft.com"
password = "the-real-password"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ntlm_profile_serves_invocations_and_tells_logon_failures_apart() {
    let app = TestApp::start(CONFIG).await;
    let invoke = |admin: Option<&str>| {
        let mut body = json!({"tenant": CONTOSO, "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 3}});
        if let Some(admin) = admin {
            body["admin"] = json!(admin);
        }
        app.post("/v1/invocations", body)
    };

    let (status, body) = invoke(Some("alice")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
    assert_eq!(body["output"].as_array().map(Vec::len), Some(3), "{body}");

    let (status, body) = invoke(Some("mallory")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (200, Some("logon_failed")), "{body}");
    assert!(!body.to_string().contains("not-the-password"), "the password never appears: {body}");

    // A locked account: the service refuses every request of it, the next logon included.
    app.sim().set_account_locked("alice@partner.onmicrosoft.com", true);
    let (status, body) = invoke(Some("alice")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (200, Some("account_locked")), "{body}");
    app.sim().set_account_locked("alice@partner.onmicrosoft.com", false);
}
