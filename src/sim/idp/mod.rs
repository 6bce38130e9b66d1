//! The simulator as an identity provider: Entra ID's token and device-code endpoints, issuing
//! the simulator's signed access tokens ([`crate::sim::tokens`]) for the same tenants and
//! accounts its services know, so the token service is tested against the real HTTP exchange.
//!
//! Served on the simulator's listener ([`router`]):
//! - `POST /{tenant}/oauth2/v2.0/token` (form): `client_credentials` (client secret, or a JWT
//!   client assertion checked against the application's registered certificates), `refresh_token`
//!   and the device-code grant. `{tenant}` is a domain or the tenant's GUID ([`Simulator::tenant_id`];
//!   a partner's home tenant, the domain of its accounts' UPNs, has one too).
//! - `POST /{tenant}/oauth2/v2.0/devicecode`, and `GET`/`POST /devicelogin`, a sign-in page where
//!   a simulated account approves a code with its password (tests call
//!   [`Simulator::approve_device_code`]).
//!
//! Behaviour, as Entra's:
//! - Access tokens: `aud` = the resource of the `{resource}/.default` scope, `tid` = the tenant's
//!   GUID, `exp` = now + `token_lifetime_seconds`; app-only tokens carry the app's `roles`
//!   (`Exchange.ManageAsApp`), delegated ones `upn`, `scp` and `amr` (`pwd`, plus `mfa` unless
//!   the user is in `users_without_mfa`).
//! - Refresh tokens rotate: every use returns a new one. Like Entra, the old one is not revoked
//!   (it keeps working until it expires or the user's tokens are revoked); [`IdpStats`] counts
//!   uses of tokens older than the newest of their line, so tests can check that a client keeps
//!   the newest. Revoking a user's tokens ([`Simulator::revoke_refresh_tokens`]) makes every
//!   earlier one fail with AADSTS50173; one older than `refresh_token_lifetime_seconds` fails
//!   with AADSTS700082 (both `invalid_grant`).
//! - Consent per tenant: an application not consented in a tenant gets AADSTS700016 there for
//!   app-only requests and AADSTS65001 for delegated ones; a partner user without access to a
//!   customer tenant gets AADSTS50020; an account in `simulator.mfa_required` whose sign-in did
//!   not use MFA gets AADSTS50076.
//! - Wrong secret AADSTS7000215, bad or unknown assertion AADSTS700027 (`invalid_client`, 401),
//!   unknown application AADSTS700016.
//! - `simulator.identity_service_down`, or the `unavailable` rate: 503 with `Retry-After`.

mod client_auth;
mod device;
mod entra;
mod grants;
mod http;

pub use http::router;

use crate::config::SimIdentityConfig;
use crate::sim::Simulator;
use client_auth::RegisteredCert;
use device::DeviceCode;
use rand::{Rng, SeedableRng};
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// An application registration.
#[derive(Debug, Clone)]
pub struct SimApp {
    pub client_id: String,
    pub name: String,
    pub secrets: Vec<String>,
    /// DER certificates.
    pub certificates: Vec<Vec<u8>>,
    /// Tenants (domains) where it is consented, or `"*"`.
    pub tenants: Vec<String>,
    /// Device-code sign-in and refresh without a client credential are allowed.
    pub public_client: bool,
}

/// Who asked for what (for "one request per key per lifetime").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRequestKey {
    /// `client_credentials`, `refresh_token` or `device_code`.
    pub grant: String,
    /// The tenant's GUID (as asked, when unknown).
    pub tenant: String,
    pub client_id: String,
    pub resource: String,
    /// Delegated grants: the user.
    pub user: Option<String>,
}

/// What the identity provider has seen.
#[derive(Debug, Clone, Default)]
pub struct IdpStats {
    /// Requests to the token endpoint.
    pub requests: u64,
    pub issued: u64,
    /// Refusals by label (`AADSTS700082`, …).
    pub refused: BTreeMap<String, u64>,
    pub by_key: BTreeMap<TokenRequestKey, u64>,
    /// Refresh requests that presented a token older than the newest of its line.
    pub stale_refresh_tokens: u64,
    pub device_codes: u64,
    /// Token requests that carried a `claims` challenge.
    pub claims_challenges: u64,
}

impl IdpStats {
    /// Requests with this grant for this tenant (GUID) and resource, whoever asked.
    pub fn requests_for(&self, grant: &str, tenant_id: &str, resource: &str) -> u64 {
        self.by_key
            .iter()
            .filter(|(k, _)| k.grant == grant && k.tenant.eq_ignore_ascii_case(tenant_id) && k.resource == resource)
            .map(|(_, n)| n)
            .sum()
    }
}

pub(crate) struct RegisteredApp {
    client_id: String,
    name: String,
    secrets: Vec<String>,
    certs: Vec<RegisteredCert>,
    /// `None`: consented everywhere.
    tenants: Option<HashSet<String>>,
    public_client: bool,
}

impl RegisteredApp {
    fn consented_in(&self, tenant_domain: &str) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(&key(tenant_domain)))
    }
}

struct RefreshTokenRecord {
    upn: String,
    client_id: String,
    line: u64,
    issued: SystemTime,
    mfa: bool,
}

pub(crate) struct IdpState {
    token_lifetime: Duration,
    refresh_token_lifetime: Duration,
    device_interval: Duration,
    device_lifetime: Duration,
    users_without_mfa: HashSet<String>,
    apps: HashMap<String, RegisteredApp>,
    /// By the SHA-256 of the token (the simulator does not keep tokens either).
    refresh_tokens: HashMap<String, RefreshTokenRecord>,
    /// The newest token of each line (a line starts at a sign-in).
    newest_of_line: HashMap<u64, String>,
    next_line: u64,
    revoked_before: HashMap<String, SystemTime>,
    device_codes: HashMap<String, DeviceCode>,
    unavailable: f64,
    retry_after: u64,
    rng: rand::rngs::StdRng,
    stats: IdpStats,
}

/// The identity provider's state inside the simulator.
pub(crate) struct Idp {
    state: Mutex<IdpState>,
}

impl Idp {
    pub fn new(cfg: &SimIdentityConfig) -> Idp {
        Idp {
            state: Mutex::new(IdpState {
                token_lifetime: Duration::from_secs(cfg.token_lifetime_seconds),
                refresh_token_lifetime: Duration::from_secs(cfg.refresh_token_lifetime_seconds),
                device_interval: Duration::from_secs(cfg.device_code_interval_seconds),
                device_lifetime: Duration::from_secs(cfg.device_code_lifetime_seconds),
                users_without_mfa: cfg.users_without_mfa.iter().map(|u| key(u)).collect(),
                apps: HashMap::new(),
                refresh_tokens: HashMap::new(),
                newest_of_line: HashMap::new(),
                next_line: 1,
                revoked_before: HashMap::new(),
                device_codes: HashMap::new(),
                unavailable: cfg.unavailable,
                retry_after: cfg.retry_after_seconds,
                rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
                stats: IdpStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, IdpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tenant as a request names it.
#[derive(Debug, Clone)]
pub(crate) struct TenantRef {
    pub domain: String,
    pub guid: String,
}

fn random_text(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

/// The applications `[simulator.identity] apps` registers, or else one per distinct client of the
/// `[[admins]]` OAuth identities (with their secrets and certificates, consented everywhere).
pub(crate) fn apps_from_config(cfg: &crate::config::Config) -> Result<Vec<SimApp>, String> {
    use crate::config::CredentialRef;
    let resolve = |r: &str| -> Result<String, String> {
        let secret = CredentialRef::parse(r).and_then(|c| c.resolve())?;
        Ok(secrecy::ExposeSecret::expose_secret(&secret).to_string())
    };
    if !cfg.simulator.identity.apps.is_empty() {
        return cfg
            .simulator
            .identity
            .apps
            .iter()
            .map(|a| {
                let mut certificates = Vec::new();
                for path in &a.certificates {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    certificates
                        .extend(crate::identity::assertion::pem_certificates(&text).map_err(|e| e.to_string())?);
                }
                Ok(SimApp {
                    client_id: a.client_id.clone(),
                    name: a.name.clone().unwrap_or_else(|| a.client_id.clone()),
                    secrets: a.secrets.iter().map(|s| resolve(s)).collect::<Result<_, _>>()?,
                    certificates,
                    tenants: a.tenants.clone(),
                    public_client: a.public_client,
                })
            })
            .collect();
    }
    let mut apps: Vec<SimApp> = Vec::new();
    for admin in &cfg.admins {
        let Some(oauth) = &admin.oauth else { continue };
        let identity =
            crate::identity::Identity::from_config(admin, oauth).map_err(|e| format!("admin '{}': {e}", admin.name))?;
        let index = match apps.iter().position(|a| a.client_id.eq_ignore_ascii_case(&identity.client_id)) {
            Some(i) => i,
            None => {
                apps.push(SimApp {
                    client_id: identity.client_id.clone(),
                    name: format!("psbroker ({})", identity.client_id),
                    secrets: vec![],
                    certificates: vec![],
                    tenants: vec!["*".into()],
                    public_client: true,
                });
                apps.len() - 1
            }
        };
        match &identity.client_auth {
            Some(crate::identity::grants::ClientAuth::Secret(s)) => {
                apps[index].secrets.push(secrecy::ExposeSecret::expose_secret(s).to_string())
            }
            Some(crate::identity::grants::ClientAuth::Certificate(c)) => {
                apps[index].certificates.push(c.certificate_der().to_vec())
            }
            None => {}
        }
    }
    Ok(apps)
}

impl Simulator {
    pub(crate) fn idp(&self) -> MutexGuard<'_, IdpState> {
        self.inner.idp.lock()
    }

    /// A tenant known to the simulator (a configured tenant, or the home tenant of an account,
    /// i.e. its UPN's domain) by domain or GUID.
    pub(crate) fn tenant_ref(&self, tenant: &str) -> Option<TenantRef> {
        let st = self.lock();
        let wanted = key(tenant);
        let domains = st
            .tenants
            .values()
            .map(|t| t.domain.clone())
            .chain(st.accounts.values().filter_map(|a| a.upn.split_once('@').map(|(_, d)| d.to_string())));
        for domain in domains {
            let guid = super::tenant_guid(&domain).to_string();
            if key(&domain) == wanted || guid == wanted {
                return Some(TenantRef { domain, guid });
            }
        }
        None
    }

    /// Registers an application (replacing one with the same client id).
    pub fn register_app(&self, app: SimApp) -> Result<(), String> {
        let certs = app.certificates.iter().map(|der| RegisteredCert::from_der(der)).collect::<Result<Vec<_>, _>>()?;
        let tenants =
            (!app.tenants.iter().any(|t| t.trim() == "*")).then(|| app.tenants.iter().map(|t| key(t)).collect());
        let registered = RegisteredApp {
            client_id: app.client_id.trim().to_string(),
            name: app.name,
            secrets: app.secrets,
            certs,
            tenants,
            public_client: app.public_client,
        };
        self.idp().apps.insert(key(&app.client_id), registered);
        Ok(())
    }

    /// Grants or withdraws an application's consent in one tenant (by domain).
    pub fn set_app_consent(&self, client_id: &str, tenant: &str, consented: bool) {
        let all: Vec<String> = self.lock().tenants.values().map(|t| key(&t.domain)).collect();
        if let Some(app) = self.idp().apps.get_mut(&key(client_id)) {
            let set = app.tenants.get_or_insert_with(|| all.into_iter().collect());
            if consented {
                set.insert(key(tenant));
            } else {
                set.remove(&key(tenant));
            }
        }
    }

    /// Revokes every refresh token issued to `upn` so far (Graph's revokeSignInSessions).
    pub fn revoke_refresh_tokens(&self, upn: &str) {
        self.idp().revoked_before.insert(key(upn), SystemTime::now());
    }

    /// The lifetime of access tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.idp().token_lifetime = lifetime;
    }

    /// Refresh tokens older than this are expired (AADSTS700082).
    pub fn set_refresh_token_lifetime(&self, lifetime: Duration) {
        self.idp().refresh_token_lifetime = lifetime;
    }

    /// Whether `upn` signs in with multi-factor authentication (from its next sign-in).
    pub fn set_user_mfa(&self, upn: &str, with_mfa: bool) {
        let mut idp = self.idp();
        if with_mfa {
            idp.users_without_mfa.remove(&key(upn));
        } else {
            idp.users_without_mfa.insert(key(upn));
        }
    }

    /// The share (0 to 1) of token requests answered 503 with `Retry-After`.
    pub fn set_identity_unavailable_rate(&self, rate: f64) {
        self.idp().unavailable = rate.clamp(0.0, 1.0);
    }

    pub fn idp_stats(&self) -> IdpStats {
        self.idp().stats.clone()
    }

    pub fn reset_idp_stats(&self) {
        self.idp().stats = IdpStats::default();
    }

    /// A request meets the identity service down, or an injected 503.
    fn idp_unavailable(&self) -> Option<entra::EntraError> {
        let down = self.lock().identity_down;
        let mut idp = self.idp();
        let rate = idp.unavailable;
        let hit = down || (rate > 0.0 && idp.rng.random_bool(rate));
        hit.then(|| entra::EntraError::unavailable(idp.retry_after))
    }
}

impl IdpState {
    /// A new refresh token for `upn` in `line` (a fresh line when `None`).
    fn new_refresh_token(&mut self, upn: &str, client_id: &str, line: Option<u64>, mfa: bool) -> String {
        let line = line.unwrap_or_else(|| {
            self.next_line += 1;
            self.next_line
        });
        let token = format!(
            "0.sim-rt.{}",
            random_text(64, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        );
        let h = hash(&token);
        self.refresh_tokens.insert(
            h.clone(),
            RefreshTokenRecord {
                upn: upn.to_string(),
                client_id: client_id.to_string(),
                line,
                issued: SystemTime::now(),
                mfa,
            },
        );
        self.newest_of_line.insert(line, h);
        token
    }

    fn signs_in_with_mfa(&self, upn: &str) -> bool {
        !self.users_without_mfa.contains(&key(upn))
    }

    fn count(&mut self, key: TokenRequestKey, outcome: &Result<serde_json::Value, entra::EntraError>) {
        self.stats.requests += 1;
        *self.stats.by_key.entry(key).or_insert(0) += 1;
        match outcome {
            Ok(_) => self.stats.issued += 1,
            Err(e) => *self.stats.refused.entry(e.label()).or_insert(0) += 1,
        }
    }
}

#[cfg(test)]
mod tests;
