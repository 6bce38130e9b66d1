//! Where a tenant is served. Some Exchange Online tenants live on a tenant-specific host, and
//! Security & Compliance always answers from a regional one: a GET with redirects off answers
//! 302, and the `Location` says where. The answer is cached per tenant for the connector's
//! lifetime (shared by its sessions), and one probe serves all callers that ask at once.

use crate::remote::{FaultClass, RemoteError};
use reqwest::Url;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// The resolved base URL per tenant.
#[derive(Debug, Default)]
pub(crate) struct HostCache {
    cells: Mutex<HashMap<String, Arc<OnceCell<Url>>>>,
}

impl HostCache {
    /// The tenant's base, probing once when it is not known yet. A failed probe is not cached.
    pub(crate) async fn get_or_probe<F, Fut>(&self, tenant: &str, probe: F) -> Result<Url, RemoteError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Url, RemoteError>>,
    {
        let cell = self.lock().entry(tenant.to_ascii_lowercase()).or_default().clone();
        cell.get_or_try_init(probe).await.cloned()
    }

    /// The service answered from `stale` with a redirect: the next session probes again (unless
    /// another one has already put a newer base in place).
    pub(crate) fn forget(&self, tenant: &str, stale: &Url) {
        let mut cells = self.lock();
        let key = tenant.to_ascii_lowercase();
        if cells.get(&key).and_then(|c| c.get()) == Some(stale) {
            cells.remove(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceCell<Url>>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A URL under a base: `{base}/{path}` (the base may have a path of its own).
pub(crate) fn under(base: &Url, path: &str) -> Result<Url, RemoteError> {
    let text = format!("{}/{}", base.as_str().trim_end_matches('/'), path.trim_start_matches('/'));
    Url::parse(&text).map_err(|e| RemoteError::new(FaultClass::Protocol, format!("invalid URL {text:?}: {e}")))
}

/// The tenant's base from a probe's redirect, the way the open clients derive it:
/// - a `Location` on another host name: its first label under the front door's host
///   (`nam12b.outlook.office365.com`, `eur03b.ps.compliance.protection.outlook.com`), with the
///   front door's scheme and port;
/// - a `Location` on the front door's own host (and port): its path up to `/adminapi` (how the
///   simulator, on one loopback address, serves tenant hosts and regions).
///
/// Anything else (another address, a downgrade to http) is refused: the bearer token must not
/// travel anywhere but the service it was issued for.
pub(crate) fn tenant_base(front_door: &Url, probe: &Url, location: &str) -> Result<Url, String> {
    let target = probe.join(location.trim()).map_err(|e| format!("the redirect to {location:?} is not a URL: {e}"))?;
    if target.scheme() != front_door.scheme() {
        return Err(format!("refusing a redirect from {} to {target}", front_door.scheme()));
    }
    let same_host = target.host_str() == front_door.host_str()
        && target.port_or_known_default() == front_door.port_or_known_default();
    if same_host {
        let path = target.path();
        let Some(at) = path.to_ascii_lowercase().find("/adminapi/") else {
            return Err(format!("the redirect to {target} does not name an admin API path"));
        };
        let mut base = target.clone();
        base.set_path(&path[..at]);
        base.set_query(None);
        base.set_fragment(None);
        return Ok(base);
    }
    match (domain(&target), domain(front_door)) {
        (Some(to), Some(door)) => {
            let label =
                to.split('.').next().filter(|l| !l.is_empty()).ok_or_else(|| format!("no host label in {target}"))?;
            let mut base = front_door.clone();
            base.set_host(Some(&format!("{label}.{door}"))).map_err(|e| format!("{label}.{door}: {e}"))?;
            Ok(base)
        }
        _ => Err(format!("refusing a redirect to another host ({target})")),
    }
}

/// The URL's host when it is a name (not an address).
fn domain(url: &Url) -> Option<&str> {
    let host = url.host_str()?;
    (host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[')).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn real_redirects_keep_the_label_under_the_front_door() {
        let exo = url("https://outlook.office365.com");
        let probe = under(&exo, "adminapi/v1.0/tid/EXOModuleFile").unwrap();
        let base =
            tenant_base(&exo, &probe, "https://nam12b.outlook.office365.com/adminapi/v1.0/tid/EXOModuleFile").unwrap();
        assert_eq!(base.as_str(), "https://nam12b.outlook.office365.com/");
        let ipps = url("https://ps.compliance.protection.outlook.com");
        let probe = under(&ipps, "adminapi/beta/tid/EXOBanner('AutogenSession')").unwrap();
        let base =
            tenant_base(&ipps, &probe, "https://eur03b.compliance.protection.outlook.com/adminapi/beta/tid/EXOBanner")
                .unwrap();
        assert_eq!(base.as_str(), "https://eur03b.ps.compliance.protection.outlook.com/");
        let gcc = url("https://outlook.office365.us");
        let base = tenant_base(&gcc, &gcc, "https://usg02.outlook.office365.us/x").unwrap();
        assert_eq!(base.host_str(), Some("usg02.outlook.office365.us"));
    }

    #[test]
    fn redirects_on_the_same_address_keep_their_path() {
        let sim = url("http://127.0.0.1:4000/ipps");
        let probe = under(&sim, "adminapi/beta/tid/EXOBanner('AutogenSession')").unwrap();
        assert_eq!(probe.as_str(), "http://127.0.0.1:4000/ipps/adminapi/beta/tid/EXOBanner('AutogenSession')");
        let base =
            tenant_base(&sim, &probe, "/ipps/r/nam04/adminapi/beta/tid/EXOBanner('AutogenSession')?x=1").unwrap();
        assert_eq!(base.as_str(), "http://127.0.0.1:4000/ipps/r/nam04");
        assert_eq!(
            under(&base, "adminapi/beta/tid/InvokeCommand").unwrap().path(),
            "/ipps/r/nam04/adminapi/beta/tid/InvokeCommand"
        );
    }

    #[test]
    fn redirects_that_would_leak_the_token_are_refused() {
        let exo = url("https://outlook.office365.com");
        assert!(tenant_base(&exo, &exo, "http://nam12b.outlook.office365.com/adminapi/x")
            .unwrap_err()
            .contains("refusing"));
        let sim = url("http://127.0.0.1:4000");
        assert!(tenant_base(&sim, &sim, "http://10.0.0.1:4000/t/x/adminapi/v1.0").is_err());
        assert!(tenant_base(&sim, &sim, "http://127.0.0.1:4001/t/x/adminapi/v1.0").is_err(), "another port");
        assert!(tenant_base(&sim, &sim, "/somewhere/else").is_err());
    }

    #[tokio::test]
    async fn one_probe_per_tenant_however_many_ask() {
        let cache = Arc::new(HostCache::default());
        let probes = Arc::new(AtomicU32::new(0));
        let ask = |tenant: &'static str| {
            let (cache, probes) = (cache.clone(), probes.clone());
            async move {
                cache
                    .get_or_probe(tenant, || async {
                        probes.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok(url(&format!("https://{tenant}.example")))
                    })
                    .await
                    .unwrap()
            }
        };
        let results = futures::future::join_all((0..8).map(|_| ask("a"))).await;
        assert!(results.iter().all(|u| u.as_str() == "https://a.example/"));
        ask("b").await;
        assert_eq!(probes.load(Ordering::SeqCst), 2);
        // A failed probe is not remembered; a stale base is forgotten.
        let failed =
            cache.get_or_probe("c", || async { Err(RemoteError::new(FaultClass::ServiceUnavailable, "x")) }).await;
        assert!(failed.is_err());
        assert_eq!(ask("c").await.as_str(), "https://c.example/");
        cache.forget("A", &url("https://other.example"));
        ask("a").await;
        assert_eq!(probes.load(Ordering::SeqCst), 3, "a forget of another base changes nothing");
        cache.forget("A", &url("https://a.example"));
        ask("a").await;
        assert_eq!(probes.load(Ordering::SeqCst), 4);
    }
}
