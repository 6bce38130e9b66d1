//! `psbroker login --admin NAME`: signs a delegated OAuth identity in once, on a headless server,
//! with the device-code flow — it prints where to go and which code to enter, waits (polling at
//! the interval the identity provider asks for) until someone signs in on any browser, and keeps
//! the refresh token, sealed, in the store. The daemon (running or not) uses it from then on and
//! keeps the newest one as they rotate. Works on the store directly, like `psbroker token`.

use crate::config::{Config, OAuthGrant};
use crate::identity::grants::IdpClient;
use crate::identity::service::RefreshTokens;
use crate::identity::{Identity, TokenService};
use anyhow::{bail, Context};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

pub async fn login(admin: &str, config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let Some(entry) = config.admins.iter().find(|a| a.name.eq_ignore_ascii_case(admin)) else {
        bail!("no admin '{admin}' in the configuration");
    };
    let Some(oauth) = &entry.oauth else {
        bail!("admin '{admin}' has no [admins.oauth] identity to sign in");
    };
    if oauth.grant != OAuthGrant::RefreshToken {
        bail!("admin '{admin}' uses grant = \"client_credentials\": an app-only identity signs in with its certificate or secret, no login needed");
    }
    if oauth.login_url().contains("{simulator}") {
        bail!("oauth.login_url names {{simulator}}, which only the daemon knows: point it at the identity provider (e.g. `psbroker sim`'s http://127.0.0.1:5985)");
    }
    let identity = Identity::from_config(entry, oauth).map_err(|e| anyhow::anyhow!("admin '{admin}': {e}"))?;
    let store = crate::app::open_store(&config.store).await?;
    let refresh_tokens = RefreshTokens::from_config(&config, store)?
        .context("[identity] refresh_token_key is not set: it seals the refresh token in the store")?;
    let idp = IdpClient::new(Duration::from_secs(config.identity.request_timeout_seconds), None)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let service = TokenService::new(idp, Some(refresh_tokens));
    let account = service
        .device_login(&identity, |login| {
            println!(
                "To sign in admin '{}', open {} in any browser and enter the code {} (it expires in {} minutes).",
                entry.name,
                login.verification_uri,
                login.user_code,
                login.expires_in.as_secs().div_ceil(60)
            );
            let _ = std::io::stdout().flush();
        })
        .await
        .map_err(|e| anyhow::anyhow!("sign-in failed ({}): {}", e.class, e.message))?;
    match account {
        Some(upn) => println!("Signed in as {upn}. The refresh token of admin '{}' is stored, sealed.", entry.name),
        None => println!("Signed in. The refresh token of admin '{}' is stored, sealed.", entry.name),
    }
    Ok(())
}
