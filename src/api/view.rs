//! How an invocation looks to callers.

use crate::store::{InvocationRecord, Status};
use chrono::{TimeZone, Utc};
use serde::Serialize;
use serde_json::Value as Json;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct InvocationView {
    pub id: Uuid,
    pub status: Status,
    pub tenant: String,
    pub cmdlet: String,
    pub priority: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    /// A batch item's position in its batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub output: Json,
    pub errors: Json,
    pub warnings: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorView>,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The token that submitted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The `client-request-id` of the last REST call made for it (Exchange Online), for support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub timing: Timing,
}

#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Timing {
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From acceptance to the start of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_seconds: Option<f64>,
    /// The last attempt's run time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_seconds: Option<f64>,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl From<InvocationRecord> for InvocationView {
    fn from(r: InvocationRecord) -> Self {
        let secs = |a: Option<i64>, b: Option<i64>| a.zip(b).map(|(a, b)| (b - a) as f64 / 1000.0);
        let s = r.accepted;
        InvocationView {
            id: s.id,
            status: r.status,
            tenant: s.tenant,
            cmdlet: s.cmdlet,
            priority: s.priority,
            batch_id: s.batch_id,
            seq: s.batch_id.map(|_| s.seq),
            idempotency_key: s.idempotency_key,
            output: r.output,
            errors: r.errors,
            warnings: r.warnings,
            error: r.error_code.map(|code| ErrorView { code, message: r.error_message.unwrap_or_default() }),
            attempts: r.attempts,
            admin: r.admin_used.or(s.admin),
            session_id: r.session_id,
            owner: r.owner,
            request_id: r.request_id,
            timing: Timing {
                created_at: rfc3339(s.created_at),
                started_at: r.started_at.map(rfc3339),
                finished_at: r.finished_at.map(rfc3339),
                queue_seconds: secs(Some(s.created_at), r.started_at),
                run_seconds: secs(r.started_at, r.finished_at),
            },
        }
    }
}
