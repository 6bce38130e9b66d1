//! Where a request arrived and what it asks for, from its path:
//!
//! | path | service | host |
//! |---|---|---|
//! | `/adminapi/{version}/{tenant}/{operation}` | Exchange Online | the front door |
//! | `/t/{label}/adminapi/…` | Exchange Online | a tenant-specific host |
//! | `/ipps/adminapi/…` | Security & Compliance | its front door |
//! | `/ipps/r/{region}/adminapi/…` | Security & Compliance | a regional host |
//!
//! On one loopback address, hosts are path prefixes: the simulator's 302s point there, and the
//! connector keeps the prefix as the tenant's base.

/// Which service a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Exchange,
    Compliance,
}

impl Service {
    /// The path every base of the service starts with (also its token audience's path).
    pub(super) fn root(self) -> &'static str {
        match self {
            Service::Exchange => "",
            Service::Compliance => "/ipps",
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Operation {
    /// `InvokeCommand`: run a cmdlet (or fetch a further page of one).
    Invoke,
    /// `$batch`.
    Batch,
    /// `EXOModuleFile` / `EXOBanner(…)`: the clients' discovery requests.
    Probe,
    Unknown(String),
}

impl Operation {
    /// The name injected faults are filtered by (`simulator.faults.actions`).
    pub(super) fn action(&self) -> &str {
        match self {
            Operation::Invoke => "InvokeCommand",
            Operation::Batch => "Batch",
            Operation::Probe => "Probe",
            Operation::Unknown(_) => "Unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Route {
    pub service: Service,
    /// The tenant-host or region label the request arrived on (`None`: a front door).
    pub label: Option<String>,
    pub version: String,
    /// The tenant as the path names it (GUID or domain).
    pub tenant: String,
    pub operation: Operation,
    /// The path from `/adminapi` on, to redirect to the same thing elsewhere.
    pub tail: String,
}

impl Route {
    pub(super) fn parse(path: &str) -> Option<Route> {
        let (service, rest) = match strip_segment(path, "ipps") {
            Some(rest) => (Service::Compliance, rest),
            None => (Service::Exchange, path),
        };
        let host_marker = match service {
            Service::Exchange => "t",
            Service::Compliance => "r",
        };
        let (label, rest) = match strip_segment(rest, host_marker) {
            Some(rest) => {
                let (label, rest) = split_segment(rest)?;
                (Some(label.to_ascii_lowercase()), rest)
            }
            None => (None, rest),
        };
        let tail = rest.to_string();
        let rest = strip_segment(rest, "adminapi")?;
        let (version, rest) = split_segment(rest)?;
        let (tenant, rest) = split_segment(rest)?;
        let operation = rest.strip_prefix('/')?;
        if operation.is_empty() || operation.contains('/') {
            return None;
        }
        let op = percent_decode(operation);
        let operation = if op.eq_ignore_ascii_case("InvokeCommand") {
            Operation::Invoke
        } else if op.eq_ignore_ascii_case("$batch") {
            Operation::Batch
        } else if op.eq_ignore_ascii_case("EXOModuleFile") || op.to_ascii_lowercase().starts_with("exobanner") {
            Operation::Probe
        } else {
            Operation::Unknown(op)
        };
        Some(Route { service, label, version: version.to_string(), tenant: percent_decode(tenant), operation, tail })
    }

    /// The path prefix of a host: the front door's, or a tenant host's / region's.
    pub(super) fn prefix(service: Service, label: Option<&str>) -> String {
        match (service, label) {
            (Service::Exchange, Some(l)) => format!("/t/{l}"),
            (Service::Compliance, Some(l)) => format!("/ipps/r/{l}"),
            (s, None) => s.root().to_string(),
        }
    }
}

/// `rest` after `/{name}` when the path starts with that segment (compared without case).
fn strip_segment<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let rest = path.strip_prefix('/')?;
    let head = rest.get(..name.len())?;
    let after = &rest[name.len()..];
    (head.eq_ignore_ascii_case(name) && (after.is_empty() || after.starts_with('/'))).then_some(after)
}

/// The first segment of `/{segment}/…` and what follows it (from its `/`).
fn split_segment(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let end = rest.find('/').unwrap_or(rest.len());
    let segment = &rest[..end];
    (!segment.is_empty()).then_some((segment, &rest[end..]))
}

/// `%XX` escapes decoded (a client may escape `$` or `'`); invalid escapes are kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_service_host_tenant_and_operation() {
        let r = Route::parse("/adminapi/beta/contoso.onmicrosoft.com/InvokeCommand").unwrap();
        assert_eq!(
            (r.service, r.label.as_deref(), r.tenant.as_str(), &r.operation),
            (Service::Exchange, None, "contoso.onmicrosoft.com", &Operation::Invoke)
        );
        assert_eq!(r.tail, "/adminapi/beta/contoso.onmicrosoft.com/InvokeCommand");
        let r = Route::parse("/t/NAM12B/AdminApi/beta/tid/$batch").unwrap();
        assert_eq!((r.label.as_deref(), &r.operation), (Some("nam12b"), &Operation::Batch));
        let r = Route::parse("/adminapi/beta/tid/%24batch").unwrap();
        assert_eq!(r.operation, Operation::Batch);
        let r = Route::parse("/adminapi/v1.0/tid/EXOModuleFile").unwrap();
        assert_eq!((r.version.as_str(), &r.operation), ("v1.0", &Operation::Probe));
        let r = Route::parse("/ipps/adminapi/beta/tid/EXOBanner('AutogenSession')").unwrap();
        assert_eq!((r.service, &r.operation), (Service::Compliance, &Operation::Probe));
        let r = Route::parse("/ipps/r/eur03b/adminapi/beta/tid/InvokeCommand").unwrap();
        assert_eq!((r.service, r.label.as_deref()), (Service::Compliance, Some("eur03b")));
        assert_eq!(r.tail, "/adminapi/beta/tid/InvokeCommand");
        assert_eq!(
            Route::parse("/adminapi/beta/tid/Something").unwrap().operation,
            Operation::Unknown("Something".into())
        );
        for bad in [
            "/adminapi/beta/tid",
            "/adminapi/beta/tid/",
            "/adminapi/beta/tid/a/b",
            "/t//adminapi/beta/x/InvokeCommand",
            "/adminapix/beta/t/InvokeCommand",
            "/wsman",
        ] {
            assert_eq!(Route::parse(bad), None, "{bad}");
        }
        assert_eq!(Route::prefix(Service::Exchange, Some("nam12b")), "/t/nam12b");
        assert_eq!(Route::prefix(Service::Compliance, None), "/ipps");
        assert_eq!(Route::prefix(Service::Compliance, Some("x")), "/ipps/r/x");
    }
}
