//! Caller authentication and authorization: API tokens, roles, tenant and cmdlet scopes, the
//! classification of cmdlets (read, write, destructive, host-level: [`classify`]) with its
//! deny-list, parameter constraints, and the redaction of secret parameter values. Policy only:
//! no HTTP here (the axum side is `api::auth`); tokens and the audit live in the store.
//!
//! Follow a request: `api::auth` reads `Authorization: Bearer psb_…` → [`Authenticator`] finds
//! the token by its SHA-256 → a [`Principal`] → the broker calls [`Principal::authorize`] on
//! every item before anything is stored → the invocation is stored with its owner and with
//! secret values redacted → when it ends, the store appends the audit record.

pub mod classify;
pub mod pattern;
pub mod policy;
pub mod secrets;
pub mod token;

pub use classify::{classify, Class, DENIED_CMDLETS};
pub use pattern::Patterns;
pub use policy::{Constraint, Principal, Refusal, Role, Rule, OPERATOR_VERBS};

use crate::store::{now_ms, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a request is not authenticated (all are 401 `unauthenticated`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send 'Authorization: Bearer psb_…'")]
    Missing,
    #[error("the token is not valid")]
    Invalid,
    #[error("the token was revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often a token's `last_used_at` is written at most: often enough to tell an unused token,
/// rarely enough that busy callers do not queue behind the one SQLite writer.
const TOUCH_EVERY_MS: i64 = 60_000;

/// How long a token found valid in the store is trusted without reading it again. A token
/// revoked elsewhere (`psbroker token revoke`, another node on the same PostgreSQL) is refused
/// by this node within this time; one revoked through this node's API at once. Short, because
/// revocation must bite promptly; long enough that a busy caller's requests skip the lookup.
pub const TOKEN_TRUST: Duration = Duration::from_secs(1);

/// Above this many remembered tokens, the expired ones are dropped (only valid tokens are
/// remembered, so this bounds memory against many distinct valid tokens, not guesses).
const TRUSTED_MAX: usize = 1024;

/// Resolves bearer tokens to callers. A token is read from the store at its first use and at
/// most once per [`TOKEN_TRUST`] after that, so a token created with the CLI while the daemon
/// runs counts at once and a revoked one stops within [`TOKEN_TRUST`]. Unknown and revoked
/// tokens are never remembered: each attempt with one reads the store.
pub struct Authenticator {
    store: Store,
    enabled: bool,
    touched: Mutex<HashMap<String, i64>>,
    /// Valid tokens by digest: the caller they stand for and when the store said so.
    trusted: Mutex<HashMap<String, (Arc<Principal>, Instant)>>,
    /// Counts [`Authenticator::forget`]s: a lookup that began before one does not remember
    /// what it read (the row may predate the revocation).
    forgets: AtomicU64,
}

impl Authenticator {
    pub fn new(store: Store, enabled: bool) -> Authenticator {
        Authenticator {
            store,
            enabled,
            touched: Mutex::new(HashMap::new()),
            trusted: Mutex::new(HashMap::new()),
            forgets: AtomicU64::new(0),
        }
    }

    /// Stops trusting the token named `name` (revoked through this node): its next use reads
    /// the store.
    pub fn forget(&self, name: &str) {
        let mut trusted = self.trusted.lock().expect("trusted tokens");
        self.forgets.fetch_add(1, Ordering::SeqCst);
        trusted.retain(|_, (p, _)| p.name != name);
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `authorization` is the header's value, if any.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        if !self.enabled {
            return Ok(Arc::new(Principal::unauthenticated_admin()));
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let token = token.trim();
        if !token.starts_with(token::TOKEN_PREFIX) || token.len() > 200 {
            return Err(AuthError::Invalid);
        }
        let digest = token::digest(token);
        let now = Instant::now();
        let known = self.trusted.lock().expect("trusted tokens").get(&digest).cloned();
        if let Some((principal, _)) = known.filter(|(_, since)| now.duration_since(*since) < TOKEN_TRUST) {
            self.touch(&principal.name).await;
            return Ok(principal);
        }
        let forgets = self.forgets.load(Ordering::SeqCst);
        let row = self.store.token_by_hash(&digest).await?.ok_or(AuthError::Invalid)?;
        if row.revoked_at.is_some() {
            self.trusted.lock().expect("trusted tokens").remove(&digest);
            return Err(AuthError::Revoked);
        }
        let principal = Arc::new(token::principal(&row).map_err(|e| {
            tracing::error!(token = %row.name, error = %e, "stored token does not parse; refusing it");
            AuthError::Invalid
        })?);
        self.trust(digest, principal.clone(), now, forgets);
        self.touch(&row.name).await;
        Ok(principal)
    }

    /// Remembers a token read at `at`, unless a revocation through this node came since the
    /// read began (`forgets` was the count then).
    fn trust(&self, digest: String, principal: Arc<Principal>, at: Instant, forgets: u64) {
        let mut trusted = self.trusted.lock().expect("trusted tokens");
        if self.forgets.load(Ordering::SeqCst) != forgets {
            return;
        }
        if trusted.len() >= TRUSTED_MAX {
            trusted.retain(|_, (_, since)| at.duration_since(*since) < TOKEN_TRUST);
        }
        trusted.insert(digest, (principal, at));
    }

    async fn touch(&self, name: &str) {
        let now = now_ms();
        {
            let mut touched = self.touched.lock().expect("touch map");
            match touched.get(name) {
                Some(&at) if now - at < TOUCH_EVERY_MS => return,
                _ => touched.insert(name.to_string(), now),
            };
        }
        if let Err(e) = self.store.touch_token(name, now).await {
            tracing::warn!(token = %name, error = %e, "cannot record the token's last use");
        }
    }
}

/// Builds the daemon's authenticator from the configuration: warns loudly when auth is off,
/// and on a database with no token writes the bootstrap admin token (see
/// [`token::ensure_bootstrap`]).
pub async fn setup(config: &crate::config::Config, store: &Store) -> anyhow::Result<Arc<Authenticator>> {
    if !config.auth.enabled {
        tracing::warn!(
            listen = %config.server.listen,
            "AUTHENTICATION IS DISABLED ([auth] enabled = false): every local process can act as an admin on every tenant"
        );
    } else if let Some(file) = token::ensure_bootstrap(store, &config.store).await? {
        tracing::info!(
            file = %file.display(),
            "no API token existed: created the admin token 'bootstrap' (mode 0600); the CLI reads it from there"
        );
    }
    Ok(Arc::new(Authenticator::new(store.clone(), config.auth.enabled)))
}
