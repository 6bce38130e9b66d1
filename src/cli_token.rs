//! `psbroker token create|list|revoke`, and how the other commands find their API token.
//!
//! Token management talks to the store directly (the configuration's `store.url`), so it works
//! whether or not the daemon runs — a running daemon sees a new or revoked token at its next
//! request, since it reads tokens from the store every time. Whoever can write the database can
//! manage tokens anyway; over the network, admins use `POST/GET/DELETE /v1/tokens`.

use crate::auth::token::{self, TokenSpec};
use crate::config::Config;
use crate::store::Store;
use anyhow::Context;
use chrono::{TimeZone, Utc};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated tenant globs, e.g. `contoso.onmicrosoft.com,*.fabrikam.com`.
        #[arg(long, default_value = "*")]
        tenants: String,
        /// Comma-separated cmdlet globs, e.g. `Get-*,Set-Mailbox`.
        #[arg(long, default_value = "*")]
        cmdlets: String,
        /// read-only (Get, Test, Search, Find, Measure, Show), operator (also Set, New, Add,
        /// Remove, Enable, Disable, Update, Start, Stop, ...), or admin.
        #[arg(long, default_value = "read-only")]
        role: String,
        /// `Param=a|b*`: when the parameter is given, each value must match one alternative.
        #[arg(long = "constraint", value_name = "PARAM=PATTERN")]
        constraints: Vec<String>,
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List tokens (names, roles, scopes, dates; never the tokens).
    List {
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Revoke a token; it is refused from the next request on. Its name is not reused.
    Revoke {
        name: String,
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
    },
}

async fn open_store(config: Option<&Path>) -> anyhow::Result<Store> {
    let config = Config::load(config)?;
    crate::app::open_store(&config.store).await
}

fn date(ms: Option<i64>) -> String {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { name, tenants, cmdlets, role, constraints, config } => {
            let spec = TokenSpec::parse(&name, &role, &tenants, &cmdlets, &constraints).map_err(anyhow::Error::msg)?;
            let store = open_store(config.as_deref()).await?;
            let secret = token::issue(&store, &spec).await?;
            eprintln!(
                "created token '{}' (role {}, tenants {}, cmdlets {}{}); it is shown once, store it now:",
                spec.name,
                spec.role,
                spec.tenants,
                spec.cmdlets,
                spec.constraints.iter().map(|c| format!(", {c}")).collect::<String>()
            );
            println!("{secret}");
        }
        TokenCommand::List { config } => {
            let store = open_store(config.as_deref()).await?;
            println!(
                "{:<20} {:<10} {:<16} {:<16} {:<16} {:<30} {:<30} CONSTRAINTS",
                "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED", "TENANTS", "CMDLETS"
            );
            for t in store.list_tokens().await? {
                println!(
                    "{:<20} {:<10} {:<16} {:<16} {:<16} {:<30} {:<30} {}",
                    t.name,
                    t.role,
                    date(Some(t.created_at)),
                    date(t.last_used_at),
                    date(t.revoked_at),
                    t.tenants,
                    t.cmdlets,
                    t.constraints.join(" ")
                );
            }
        }
        TokenCommand::Revoke { name, config } => {
            let store = open_store(config.as_deref()).await?;
            anyhow::ensure!(store.revoke_token(&name).await?, "no active token named '{name}'");
            eprintln!("revoked token '{name}'");
        }
    }
    Ok(())
}

/// How `invoke`, `batch` and `status` reach the daemon and authenticate: the `PSBROKER_TOKEN` environment variable
/// if set, else the token file (default: `api-token` in the data directory of the configured
/// store, `./data/api-token` for the demo — where the daemon writes its bootstrap token).
#[derive(Args, Clone, Default)]
pub struct AuthArgs {
    /// File holding the API token (default: <data dir>/api-token).
    #[arg(long, env = "PSBROKER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA (or self-signed certificate) to trust for an `https://` daemon URL,
    /// besides the system's roots.
    #[arg(long, env = "PSBROKER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl AuthArgs {
    pub fn token(&self) -> anyhow::Result<String> {
        if let Ok(t) = std::env::var("PSBROKER_TOKEN") {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
        let file = self.token_file.clone().unwrap_or_else(default_token_file);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no API token: cannot read {} (set PSBROKER_TOKEN, pass --token-file, or start the daemon once to create it)",
                file.display()
            )
        })?;
        Ok(text.trim().to_string())
    }

    /// An HTTP client that sends the token on every request and trusts `--ca-cert` if given.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = bearer_client_builder(&self.token()?)?;
        if let Some(path) = &self.ca_cert {
            for root in crate::tls::read_roots(path)? {
                builder = builder.add_root_certificate(root);
            }
        }
        Ok(builder.build()?)
    }
}

/// An HTTP client that sends `Authorization: Bearer <token>` on every request.
pub fn bearer_client(token: &str) -> anyhow::Result<reqwest::Client> {
    Ok(bearer_client_builder(token)?.build()?)
}

fn bearer_client_builder(token: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .context("the API token has characters a header cannot carry")?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().default_headers(headers))
}

fn default_token_file() -> PathBuf {
    let config = std::env::var_os("PSBROKER_CONFIG").map(PathBuf::from);
    Config::load(config.as_deref())
        .ok()
        .and_then(|c| token::token_file(&c.store))
        .unwrap_or_else(|| PathBuf::from("data").join(token::TOKEN_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-token");
        std::fs::write(&file, "psb_abc\n").unwrap();
        let args = AuthArgs { token_file: Some(file), ca_cert: None };
        if std::env::var("PSBROKER_TOKEN").is_err() {
            assert_eq!(args.token().unwrap(), "psb_abc");
        }
        let missing = AuthArgs { token_file: Some(dir.path().join("nope")), ca_cert: None };
        if std::env::var("PSBROKER_TOKEN").is_err() {
            assert!(missing.token().unwrap_err().to_string().contains("PSBROKER_TOKEN"));
        }
    }
}
