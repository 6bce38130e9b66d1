//! Every Prometheus metric the daemon exports, declared once with its help text.
//!
//! Counters and histograms are updated where things happen; gauges are refreshed from the
//! scheduler's snapshot at scrape time. Labels are bounded: fault classes, reasons and outcomes
//! are closed sets; admins are few and configured; a tenant label appears only when the
//! operator turns `metrics.tenant_labels` on.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets that fit PowerShell work: from 50 ms to 10 minutes.
const SECONDS_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// The OAuth grants the identity module asks tokens with: the `grant` label's closed set.
pub const TOKEN_GRANTS: [&str; 3] = ["client_credentials", "refresh_token", "device_code"];

/// Why the API server ends a connection itself (`psbroker_http_connections_closed_total`).
pub const CONNECTION_CLOSE_REASONS: [&str; 7] =
    ["header_timeout", "idle_timeout", "write_timeout", "evicted", "refused", "tls_handshake", "shutdown"];

pub struct Metrics {
    registry: Registry,
    pub tenant_labels: bool,
    pub sessions: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub oldest_queued_seconds: prometheus::Gauge,
    pub invocations: IntCounterVec,
    pub invocation_seconds: HistogramVec,
    pub queue_wait_seconds: HistogramVec,
    /// One attempt's time on its session (the command itself, without the queue).
    pub run_seconds: HistogramVec,
    pub session_open_seconds: HistogramVec,
    pub session_opens: IntCounterVec,
    /// Failed opens by admin and fault class: which account's logon fails (and so may be
    /// locked out by the identity provider), which one hits its quota.
    pub session_open_failures: IntCounterVec,
    pub reconnects: IntCounterVec,
    pub remote_faults: IntCounterVec,
    pub retries: IntCounterVec,
    pub cap_saturation: GaugeVec,
    pub effective_cap: IntGaugeVec,
    pub admin_cap: IntGaugeVec,
    pub admin_sessions: IntGaugeVec,
    pub tenants_below_cap: IntGauge,
    pub tenant_cap: IntGaugeVec,
    pub tenant_effective_cap: IntGaugeVec,
    pub tenant_sessions: IntGaugeVec,
    pub http_requests: IntCounterVec,
    /// Open connections to the API listener (at most `server.max_connections`).
    pub http_connections: IntGauge,
    /// Connections the server ended itself, by reason (header_timeout, idle_timeout,
    /// write_timeout, evicted, refused, tls_handshake, shutdown).
    pub http_connections_closed: IntCounterVec,
    pub ready: IntGauge,
    /// OAuth token requests to the identity provider (REST connector, bearer-in-Basic), by grant
    /// (`client_credentials`, `refresh_token`, `device_code`) and outcome (`issued`, or the
    /// failure's code: `reauth_required`, `mfa_required`, ...). Cache hits are not requests.
    pub token_requests: IntCounterVec,
    /// Several nodes on PostgreSQL: the nodes alive, this node's leases, whether it is fenced,
    /// the slots the database refused it (the other nodes held them), and what it rescued
    /// from dead nodes (`requeued`, `node_lost`, `shell_deleted`).
    pub cluster_nodes: IntGauge,
    pub cluster_leases: IntGauge,
    pub cluster_fenced: IntGauge,
    pub admissions_refused: IntCounter,
    pub rescued: IntCounterVec,
}

impl Metrics {
    pub fn new(tenant_labels: bool) -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            tenant_labels,
            sessions: IntGaugeVec::new(Opts::new("psbroker_sessions", "Remote sessions by state"), &["state"]).unwrap(),
            queue_depth: IntGaugeVec::new(
                Opts::new("psbroker_queue_depth", "Invocations waiting for a session, by priority"),
                &["priority"],
            )
            .unwrap(),
            oldest_queued_seconds: prometheus::Gauge::new(
                "psbroker_oldest_queued_seconds",
                "How long the oldest waiting invocation has waited",
            )
            .unwrap(),
            invocations: IntCounterVec::new(
                Opts::new("psbroker_invocations_total", "Finished invocations by outcome and error code"),
                &["outcome", "code"],
            )
            .unwrap(),
            invocation_seconds: HistogramVec::new(
                HistogramOpts::new("psbroker_invocation_seconds", "Time from acceptance to result, by priority")
                    .buckets(SECONDS_BUCKETS.to_vec()),
                &["priority"],
            )
            .unwrap(),
            queue_wait_seconds: HistogramVec::new(
                HistogramOpts::new("psbroker_queue_wait_seconds", "Time from acceptance to start on a session, by priority")
                    .buckets(SECONDS_BUCKETS.to_vec()),
                &["priority"],
            )
            .unwrap(),
            run_seconds: HistogramVec::new(
                HistogramOpts::new("psbroker_run_seconds", "Time one attempt ran on its session, by priority")
                    .buckets(SECONDS_BUCKETS.to_vec()),
                &["priority"],
            )
            .unwrap(),
            session_open_seconds: HistogramVec::new(
                HistogramOpts::new("psbroker_session_open_seconds", "Time to open a remote session, by admin")
                    .buckets(SECONDS_BUCKETS.to_vec()),
                &["admin"],
            )
            .unwrap(),
            session_opens: IntCounterVec::new(
                Opts::new("psbroker_session_opens_total", "Session open attempts by admin and result"),
                &["admin", "result"],
            )
            .unwrap(),
            session_open_failures: IntCounterVec::new(
                Opts::new("psbroker_session_open_failures_total", "Failed session opens by admin and fault class"),
                &["admin", "class"],
            )
            .unwrap(),
            reconnects: IntCounterVec::new(
                Opts::new("psbroker_session_closes_total", "Sessions closed by the broker, by reason"),
                &["reason"],
            )
            .unwrap(),
            remote_faults: IntCounterVec::new(
                Opts::new("psbroker_remote_faults_total", "Failures reported by the remote side, by class"),
                &["class"],
            )
            .unwrap(),
            retries: IntCounterVec::new(
                Opts::new("psbroker_invocation_retries_total", "Invocations put back in the queue, by fault class"),
                &["class"],
            )
            .unwrap(),
            cap_saturation: GaugeVec::new(
                Opts::new("psbroker_cap_saturation", "Open sessions / effective cap (admin: per admin; tenant: the fullest tenant, or per tenant when enabled)"),
                &["scope", "name"],
            )
            .unwrap(),
            effective_cap: IntGaugeVec::new(
                Opts::new("psbroker_admin_effective_cap", "An admin's cap after quota cool-downs"),
                &["admin"],
            )
            .unwrap(),
            admin_cap: IntGaugeVec::new(
                Opts::new("psbroker_admin_cap", "An admin's configured cap (concurrent sessions the service allows it)"),
                &["admin"],
            )
            .unwrap(),
            admin_sessions: IntGaugeVec::new(
                Opts::new("psbroker_admin_sessions", "Sessions an admin holds (opening, idle, busy or closing)"),
                &["admin"],
            )
            .unwrap(),
            tenants_below_cap: IntGauge::new(
                "psbroker_tenants_below_cap",
                "Tenants whose effective cap is below their cap (a quota cool-down: someone else holds their shells)",
            )
            .unwrap(),
            tenant_cap: IntGaugeVec::new(
                Opts::new("psbroker_tenant_cap", "A tenant's configured cap (only with metrics.tenant_labels)"),
                &["tenant"],
            )
            .unwrap(),
            tenant_effective_cap: IntGaugeVec::new(
                Opts::new(
                    "psbroker_tenant_effective_cap",
                    "A tenant's cap after quota cool-downs (only with metrics.tenant_labels)",
                ),
                &["tenant"],
            )
            .unwrap(),
            tenant_sessions: IntGaugeVec::new(
                Opts::new("psbroker_tenant_sessions", "Open sessions per tenant (only with metrics.tenant_labels)"),
                &["tenant"],
            )
            .unwrap(),
            http_requests: IntCounterVec::new(
                Opts::new("psbroker_http_requests_total", "HTTP requests by matched route and status"),
                &["route", "status"],
            )
            .unwrap(),
            http_connections: IntGauge::new("psbroker_http_connections", "Open connections to the API listener")
                .unwrap(),
            http_connections_closed: IntCounterVec::new(
                Opts::new(
                    "psbroker_http_connections_closed_total",
                    "API connections the server ended itself (timeouts, room for newer ones, refusals at the limit, shutdown), by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            ready: IntGauge::new("psbroker_ready", "1 while the daemon accepts work").unwrap(),
            token_requests: IntCounterVec::new(
                Opts::new(
                    "psbroker_token_requests_total",
                    "Requests to the identity provider for access tokens, by grant and outcome (issued, or the failure code)",
                ),
                &["grant", "outcome"],
            )
            .unwrap(),
            cluster_nodes: IntGauge::new(
                "psbroker_cluster_nodes",
                "Nodes alive on the shared PostgreSQL store (0 on SQLite: one node)",
            )
            .unwrap(),
            cluster_leases: IntGauge::new(
                "psbroker_cluster_leases",
                "Session leases this node holds in the shared store (one per remote session it holds or opens)",
            )
            .unwrap(),
            cluster_fenced: IntGauge::new(
                "psbroker_cluster_fenced",
                "1 while this node could not renew its leases and holds no sessions",
            )
            .unwrap(),
            admissions_refused: IntCounter::new(
                "psbroker_cluster_admissions_refused_total",
                "Session opens the shared store refused because other nodes held the rest of a cap",
            )
            .unwrap(),
            rescued: IntCounterVec::new(
                Opts::new(
                    "psbroker_cluster_rescued_total",
                    "What this node took over from dead nodes: invocations requeued, writes ended node_lost, shells deleted",
                ),
                &["outcome"],
            )
            .unwrap(),
            registry,
        };
        for c in m.collectors() {
            m.registry.register(c).expect("metric names are unique");
        }
        // Every fault class is a series from the start (at 0), so dashboards and alerts see
        // the whole closed set, not only the classes that happened.
        for class in crate::remote::FaultClass::ALL {
            m.remote_faults.with_label_values(&[class.code()]);
            m.retries.with_label_values(&[class.code()]);
        }
        for outcome in ["requeued", "node_lost", "shell_deleted"] {
            m.rescued.with_label_values(&[outcome]);
        }
        for reason in CONNECTION_CLOSE_REASONS {
            m.http_connections_closed.with_label_values(&[reason]);
        }
        // Likewise the token grants (a daemon without OAuth admins shows zeros, not "no data").
        for grant in TOKEN_GRANTS {
            m.token_requests.with_label_values(&[grant, "issued"]);
        }
        m
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.sessions.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.oldest_queued_seconds.clone()),
            Box::new(self.invocations.clone()),
            Box::new(self.invocation_seconds.clone()),
            Box::new(self.queue_wait_seconds.clone()),
            Box::new(self.run_seconds.clone()),
            Box::new(self.session_open_seconds.clone()),
            Box::new(self.session_opens.clone()),
            Box::new(self.session_open_failures.clone()),
            Box::new(self.reconnects.clone()),
            Box::new(self.remote_faults.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.cap_saturation.clone()),
            Box::new(self.effective_cap.clone()),
            Box::new(self.admin_cap.clone()),
            Box::new(self.admin_sessions.clone()),
            Box::new(self.tenants_below_cap.clone()),
            Box::new(self.tenant_cap.clone()),
            Box::new(self.tenant_effective_cap.clone()),
            Box::new(self.tenant_sessions.clone()),
            Box::new(self.http_requests.clone()),
            Box::new(self.http_connections.clone()),
            Box::new(self.http_connections_closed.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.token_requests.clone()),
            Box::new(self.cluster_nodes.clone()),
            Box::new(self.cluster_leases.clone()),
            Box::new(self.cluster_fenced.clone()),
            Box::new(self.admissions_refused.clone()),
            Box::new(self.rescued.clone()),
        ]
    }

    /// Series per configured admin from the start (at 0): opens by result, and failed opens of
    /// every class that blocks an admin's identity, so `increase()` sees the first logon failure
    /// (a series born at 1 has no increase) and alerts see every admin.
    pub fn init_admins<'a>(&self, admins: impl IntoIterator<Item = &'a str>) {
        use crate::broker::failure::{after_open_failure, PoolEffect};
        for admin in admins {
            for result in ["ok", "failed"] {
                self.session_opens.with_label_values(&[admin, result]);
            }
            for class in crate::remote::FaultClass::ALL {
                if after_open_failure(class) == PoolEffect::BlockAdmin {
                    self.session_open_failures.with_label_values(&[admin, class.code()]);
                }
            }
        }
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_declared_metrics_with_help() {
        let m = Metrics::new(false);
        m.invocations.with_label_values(&["succeeded", ""]).inc();
        m.sessions.with_label_values(&["idle"]).set(2);
        let text = m.render();
        assert!(text.contains("# HELP psbroker_invocations_total"));
        assert!(text.contains("psbroker_sessions{state=\"idle\"} 2"));
        for class in crate::remote::FaultClass::ALL {
            let series = format!("psbroker_invocation_retries_total{{class=\"{}\"}} 0", class.code());
            assert!(text.contains(&series), "{series}");
            assert!(text.contains(&format!("psbroker_remote_faults_total{{class=\"{}\"}} 0", class.code())));
        }
        for grant in TOKEN_GRANTS {
            assert!(text.contains(&format!("psbroker_token_requests_total{{grant=\"{grant}\",outcome=\"issued\"}} 0")));
        }
    }

    #[test]
    fn admins_start_with_their_identity_failure_series_at_zero() {
        let m = Metrics::new(false);
        m.init_admins(["alice"]);
        let text = m.render();
        for class in ["logon_failed", "account_locked", "mfa_required"] {
            let series = format!("psbroker_session_open_failures_total{{admin=\"alice\",class=\"{class}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
        let not_seeded = "psbroker_session_open_failures_total{admin=\"alice\",class=\"unknown_cmdlet\"}";
        assert!(!text.contains(not_seeded), "only classes that block an admin are seeded");
        assert!(text.contains("psbroker_session_opens_total{admin=\"alice\",result=\"failed\"} 0"));
    }
}
