//! Access tokens in memory, one per (login authority, tenant, client, scope, grant, user), with
//! one request per key however many callers ask at once (single flight), renewed before they
//! expire so that no caller is handed a token about to run out.
//!
//! Renewal starts when less than `min(5 minutes, 10 % of the lifetime)` remains: five minutes
//! before the end of an hour-long token, 0.4 s before the end of a 4-second one. While one caller
//! renews, the others keep getting the old token as long as at least half that margin remains;
//! after that they wait for the renewal. A failed request is not cached (the next caller asks
//! again), but the callers that were waiting for it share its failure instead of each asking in
//! turn. Nothing is shared between keys, so a failure for one tenant touches no other.

use super::grants::GrantKind;
use super::AccessToken;
use crate::remote::RemoteError;
use dashmap::DashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Renew no earlier than this before expiry.
const MAX_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub login_url: String,
    pub tenant: String,
    pub client_id: String,
    pub scope: String,
    pub grant: GrantKind,
    /// Delegated grants: whose token (the identity's name); app-only tokens are the app's.
    pub user: Option<String>,
}

struct Cached {
    token: AccessToken,
    /// Renew from here on.
    renew_at: Instant,
    /// Still handed out while a renewal is in flight, until here.
    usable_until: Instant,
}

#[derive(Default)]
struct SlotState {
    token: Option<Cached>,
    failure: Option<(Instant, RemoteError)>,
}

#[derive(Default)]
struct Slot {
    /// Held by the one caller that asks the identity provider.
    flight: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, now: Instant) -> Option<AccessToken> {
        self.state().token.as_ref().filter(|c| now < c.renew_at).map(|c| c.token.clone())
    }

    fn usable(&self, now: Instant) -> Option<AccessToken> {
        self.state().token.as_ref().filter(|c| now < c.usable_until).map(|c| c.token.clone())
    }

    fn failed_since(&self, since: Instant) -> Option<RemoteError> {
        self.state().failure.as_ref().filter(|(at, _)| *at >= since).map(|(_, e)| e.clone())
    }

    fn store(&self, token: &AccessToken) {
        let now = Instant::now();
        let lifetime = token.expires_at.duration_since(SystemTime::now()).unwrap_or_default();
        let margin = (lifetime / 10).min(MAX_MARGIN);
        let expires = now + lifetime;
        let mut state = self.state();
        state.token =
            Some(Cached { token: token.clone(), renew_at: expires - margin, usable_until: expires - margin / 2 });
        state.failure = None;
    }
}

/// The cache. Cheap to share (`Arc`).
#[derive(Default)]
pub struct TokenCache {
    slots: DashMap<CacheKey, Arc<Slot>>,
}

impl TokenCache {
    fn slot(&self, key: &CacheKey) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(key) {
            return slot.clone();
        }
        self.slots.entry(key.clone()).or_default().clone()
    }

    /// The cached token for `key`, or the one `fetch` gets — `fetch` runs at most once at a time
    /// per key.
    pub async fn get<F, Fut>(&self, key: &CacheKey, fetch: F) -> Result<AccessToken, RemoteError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, RemoteError>>,
    {
        let slot = self.slot(key);
        let arrived = Instant::now();
        if let Some(token) = slot.fresh(arrived) {
            return Ok(token);
        }
        let _flight = match slot.flight.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(token) = slot.usable(Instant::now()) {
                    return Ok(token);
                }
                slot.flight.lock().await
            }
        };
        if let Some(token) = slot.fresh(Instant::now()) {
            return Ok(token);
        }
        if let Some(failure) = slot.failed_since(arrived) {
            return Err(failure);
        }
        match fetch().await {
            Ok(token) => {
                slot.store(&token);
                Ok(token)
            }
            Err(e) => {
                slot.state().failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Replaces the cached token (a token obtained outside [`TokenCache::get`], e.g. for a
    /// claims challenge, satisfies later callers as well).
    pub fn put(&self, key: &CacheKey, token: &AccessToken) {
        self.slot(key).store(token);
    }

    /// Forgets the token (the service refused it): the next caller asks again.
    pub fn invalidate(&self, key: &CacheKey) {
        if let Some(slot) = self.slots.get(key) {
            slot.state().token = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Actor;
    use crate::remote::FaultClass;
    use secrecy::{ExposeSecret, SecretString};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key(tenant: &str) -> CacheKey {
        CacheKey {
            login_url: "https://login.example".into(),
            tenant: tenant.into(),
            client_id: "app".into(),
            scope: "https://outlook.office365.com/.default".into(),
            grant: GrantKind::ClientCredentials,
            user: None,
        }
    }

    fn token(n: u32, lifetime: Duration) -> AccessToken {
        AccessToken {
            bearer: SecretString::from(format!("token-{n}")),
            expires_at: SystemTime::now() + lifetime,
            tenant_id: None,
            actor: Actor::App,
        }
    }

    /// A fetch that takes `delay`, counts itself and issues token-N with `lifetime`.
    async fn fetch(count: &AtomicU32, delay: Duration, lifetime: Duration) -> Result<AccessToken, RemoteError> {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(delay).await;
        Ok(token(n, lifetime))
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request() {
        let cache = Arc::new(TokenCache::default());
        let count = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, count) = (cache.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                cache.get(&key("a"), || fetch(&count, Duration::from_millis(50), Duration::from_secs(3600))).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().bearer.expose_secret(), "token-1");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        cache.get(&key("b"), || fetch(&count, Duration::ZERO, Duration::from_secs(3600))).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2, "another tenant is another key");
    }

    #[tokio::test]
    async fn renews_before_expiry_and_never_hands_out_an_expired_token() {
        let cache = TokenCache::default();
        let count = AtomicU32::new(0);
        let lifetime = Duration::from_millis(1000);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(3500) {
            let t = cache.get(&key("a"), || fetch(&count, Duration::from_millis(20), lifetime)).await.unwrap();
            assert!(t.expires_at > SystemTime::now(), "an expired token was handed out");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = count.load(Ordering::SeqCst);
        assert!((4..=5).contains(&n), "about one request per lifetime over 3.5 lifetimes, got {n}");
    }

    #[tokio::test]
    async fn waiters_share_a_failure_and_the_next_caller_asks_again() {
        let cache = Arc::new(TokenCache::default());
        let count = Arc::new(AtomicU32::new(0));
        let failing = |count: Arc<AtomicU32>| async move {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<AccessToken, _>(RemoteError::new(FaultClass::IdentityServiceUnreachable, "down"))
        };
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, count) = (cache.clone(), count.clone());
            tasks.push(tokio::spawn(async move { cache.get(&key("a"), || failing(count)).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err().class, FaultClass::IdentityServiceUnreachable);
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "the waiters did not each ask again");
        let ok = cache.get(&key("a"), || fetch(&count, Duration::ZERO, Duration::from_secs(60))).await.unwrap();
        assert_eq!(
            (ok.bearer.expose_secret(), count.load(Ordering::SeqCst)),
            ("token-2", 2),
            "failures are not cached"
        );
    }

    #[tokio::test]
    async fn invalidated_and_replaced_tokens() {
        let cache = TokenCache::default();
        let count = AtomicU32::new(0);
        let long = Duration::from_secs(3600);
        cache.get(&key("a"), || fetch(&count, Duration::ZERO, long)).await.unwrap();
        cache.invalidate(&key("a"));
        let t = cache.get(&key("a"), || fetch(&count, Duration::ZERO, long)).await.unwrap();
        assert_eq!(t.bearer.expose_secret(), "token-2");
        cache.put(&key("a"), &token(99, long));
        let t = cache.get(&key("a"), || fetch(&count, Duration::ZERO, long)).await.unwrap();
        assert_eq!((t.bearer.expose_secret(), count.load(Ordering::SeqCst)), ("token-99", 2));
    }
}
