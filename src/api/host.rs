//! The `Host` check against DNS rebinding: a web page on `evil.example` whose name is made to
//! resolve to 127.0.0.1 reaches a loopback daemon from the victim's browser, but its requests
//! still say `Host: evil.example`. On a loopback listener only `localhost`, `127.0.0.1` and
//! `[::1]` (without a port or with the listener's) and the names of `server.allowed_hosts` are
//! answered; anything else is 421 `host_not_allowed` before authentication or any route runs.
//! On other listeners the check applies when `server.allowed_hosts` names something.

/// Who the daemon answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// Names that must come with the listener's port or none (the loopback names).
    local: Vec<String>,
    /// Configured entries: a bare name (any port) or `name:port`.
    configured: Vec<(String, Option<u16>)>,
    port: u16,
}

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl HostPolicy {
    /// The policy of a listener on `listen`, or `None` when nothing is checked (a non-loopback
    /// listener with no `allowed_hosts`).
    pub fn for_listener(listen: std::net::SocketAddr, allowed_hosts: &[String]) -> Option<HostPolicy> {
        let loopback = listen.ip().is_loopback();
        if !loopback && allowed_hosts.is_empty() {
            return None;
        }
        let local = if loopback { LOOPBACK_NAMES.iter().map(|n| n.to_string()).collect() } else { vec![] };
        let configured = allowed_hosts.iter().filter_map(|h| split(h)).map(|(n, p)| (n.to_string(), p)).collect();
        Some(HostPolicy { local, configured, port: listen.port() })
    }

    /// Whether a request with this `Host` (or HTTP/2 `:authority`) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split(host) else { return false };
        let local = self.local.contains(&name) && port.is_none_or(|p| p == self.port);
        local || self.configured.iter().any(|(n, p)| *n == name && (p.is_none() || *p == port))
    }
}

/// `Name[:port]` → (lower-case name without a trailing dot, port). `None` when it is not one.
fn split(host: &str) -> Option<(String, Option<u16>)> {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        match &host[end + 1..] {
            "" => (&host[..=end], None),
            rest => (&host[..=end], Some(rest.strip_prefix(':')?.parse::<u16>().ok()?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port.parse::<u16>().ok()?)),
            None => (host.as_str(), None),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| (name.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_the_listeners_port_and_configured_names() {
        let p = HostPolicy::for_listener("127.0.0.1:8080".parse().unwrap(), &["psbroker.corp".into()]).unwrap();
        for ok in ["localhost:8080", "LOCALHOST", "127.0.0.1:8080", "[::1]:8080", "localhost.:8080", "psbroker.corp:9"]
        {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost:8081", "127.0.0.2:8080", "", ":8080", "localhost:x", "[::1", "a@b"]
        {
            assert!(!p.allows(bad), "{bad}");
        }
        let pinned = HostPolicy::for_listener("127.0.0.1:1".parse().unwrap(), &["api.corp:443".into()]).unwrap();
        assert!(pinned.allows("api.corp:443") && !pinned.allows("api.corp:80") && !pinned.allows("api.corp"));
    }

    #[test]
    fn non_loopback_listeners_check_only_configured_names() {
        assert_eq!(HostPolicy::for_listener("0.0.0.0:8443".parse().unwrap(), &[]), None);
        let p = HostPolicy::for_listener("0.0.0.0:8443".parse().unwrap(), &["psbroker.corp".into()]).unwrap();
        assert!(p.allows("psbroker.corp:8443") && !p.allows("localhost:8443"));
    }
}
