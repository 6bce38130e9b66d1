//! `$batch`: up to ten cmdlets for one tenant in one request, as CIPP sends them
//! (`POST {host}/adminapi/beta/{tenantId}/$batch`, `Prefer: odata.continue-on-error`). Each
//! sub-request carries its own id, headers and body; each sub-answer is classified on its own,
//! and pages on its own (its next links are followed one by one, like a single call's).

use super::answer::{BatchAnswer, SubAnswer, SubBody};
use super::errors::{self, Call, ErrorBody};
use super::request;
use super::session::{header_value, ExoSession};
use crate::remote::{Command, CommandOutput, FaultClass, RemoteError};
use bytes::Bytes;
use reqwest::header::HeaderValue;
use serde_json::{json, Map, Value as Json};

/// Cmdlets per `$batch` request (CIPP's size; the service documents no maximum).
pub(super) const MAX_PER_BATCH: usize = 10;

type Outcome = Result<CommandOutput, RemoteError>;

/// Runs `commands` in `$batch` requests of up to [`MAX_PER_BATCH`], answering for each in order.
pub(super) async fn invoke(session: &ExoSession, commands: &[Command]) -> Vec<Outcome> {
    let mut results = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(MAX_PER_BATCH) {
        results.extend(one_batch(session, chunk).await);
    }
    results
}

/// One sub-request: the command's body (kept for its next pages) and its JSON form.
struct Sub {
    body: Bytes,
    request: Json,
}

async fn one_batch(session: &ExoSession, chunk: &[Command]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; chunk.len()];
    let mut subs: Vec<Option<Sub>> = Vec::with_capacity(chunk.len());
    for (i, command) in chunk.iter().enumerate() {
        match sub_request(session, i, command) {
            Ok(sub) => subs.push(Some(sub)),
            Err(e) => {
                outcomes[i] = Some(Err(e));
                subs.push(None);
            }
        }
    }
    let sent: Vec<&Json> = subs.iter().flatten().map(|s| &s.request).collect();
    if !sent.is_empty() {
        let batch_id = uuid::Uuid::new_v4().to_string();
        match post(session, &sent, &batch_id).await {
            Err(e) => {
                // The batch as a whole failed: every command in it shares the failure (and the
                // batch's request id, which is what the service knows it by).
                tracing::info!(request_id = %batch_id, class = %e.class, error = %e.message, "$batch failed");
                for (i, sub) in subs.iter().enumerate() {
                    if sub.is_some() {
                        outcomes[i] = Some(Err(e.clone().with_request_id(&batch_id)));
                    }
                }
            }
            Ok(answer) => {
                for sub_answer in answer.responses {
                    let Some(i) = sub_answer.id.trim().parse::<usize>().ok().and_then(|n| n.checked_sub(1)) else {
                        continue;
                    };
                    let (Some(Some(sub)), Some(None)) = (subs.get(i), outcomes.get(i)) else { continue };
                    outcomes[i] = Some(settle(session, &chunk[i], &sub.body, sub_answer).await);
                }
            }
        }
    }
    outcomes
        .into_iter()
        .zip(chunk)
        .map(|(outcome, command)| {
            let outcome = outcome.unwrap_or_else(|| {
                Err(RemoteError::new(
                    FaultClass::ServerError,
                    "the $batch answer has no answer for this cmdlet: whether it ran is unknown",
                ))
            });
            session.report(&command.cmdlet, &command.invocation_id.to_string(), outcome)
        })
        .collect()
}

fn sub_request(session: &ExoSession, index: usize, command: &Command) -> Result<Sub, RemoteError> {
    let body = request::invoke_body(command)?;
    let request_id = command.invocation_id.to_string();
    let mut headers = Map::new();
    for (name, value) in request::headers(&session.caller.anchor, &request_id, Some(&command.cmdlet))?.iter() {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_string(), Json::String(v.to_string()));
        }
    }
    headers.insert("prefer".into(), Json::String(session.prefer()));
    let request = json!({
        "id": (index + 1).to_string(),
        "method": "POST",
        "url": session.endpoint("InvokeCommand")?.as_str(),
        "headers": headers,
        "body": body,
    });
    Ok(Sub { body: Bytes::from(body.to_string()), request })
}

/// POSTs the batch. Each sub-request carries the bearer token too (as the open clients send
/// them), so the body is built again when a 401 asks for a fresh token.
async fn post(session: &ExoSession, requests: &[&Json], batch_id: &str) -> Result<BatchAnswer, RemoteError> {
    let url = session.endpoint("$batch")?;
    let mut headers = request::headers(&session.caller.anchor, batch_id, None)?;
    headers.insert("prefer", header_value(&format!("odata.continue-on-error, {}", session.prefer()))?);
    // Sub-requests run one after another: the batch may take as long as all of them.
    let timeout = session.request_timeout() * requests.len() as u32;
    let body = |bearer: &HeaderValue| {
        let token = Json::String(bearer.to_str().unwrap_or_default().to_string());
        let with_token: Vec<Json> = requests
            .iter()
            .map(|r| {
                let mut r = (*r).clone();
                r["headers"]["authorization"] = token.clone();
                r
            })
            .collect();
        json!({ "requests": with_token }).to_string()
    };
    let bytes = session.post(&url, &headers, timeout, body, Call::Batch).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // The service answered: the cmdlets ran or not, but nobody can say which.
        RemoteError::new(FaultClass::ServerError, format!("$batch: the answer cannot be read ({e}): outcomes unknown"))
    })
}

/// One sub-answer, classified on its own; a first page is followed by its next pages.
async fn settle(session: &ExoSession, command: &Command, body: &Bytes, answer: SubAnswer) -> Outcome {
    let request_id = command.invocation_id.to_string();
    let status = answer.status;
    if status == 401 {
        // Not processed: the cmdlet goes again on its own, where a 401 gets a fresh token.
        return session.run(command, &request_id).await;
    }
    if (300..400).contains(&status) {
        return Err(session.moved(reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::FOUND)));
    }
    let wait = answer.header("Retry-After").and_then(errors::retry_after);
    match answer.body {
        SubBody::Page(page) if (200..300).contains(&status) => {
            let url = session.endpoint("InvokeCommand")?;
            session.rest_of(page, &url, body, &request_id, &command.cmdlet).await
        }
        _ if (200..300).contains(&status) => Err(RemoteError::new(
            FaultClass::Protocol,
            format!("$batch: a sub-answer with status {status} carries no InvokeCommand result"),
        )),
        SubBody::Error(json) => {
            Err(errors::from_status(status, wait, &ErrorBody::Json(json), Call::Cmdlet(&command.cmdlet)))
        }
        SubBody::Page(_) => {
            Err(errors::from_status(status, wait, &ErrorBody::Text(String::new()), Call::Cmdlet(&command.cmdlet)))
        }
        SubBody::Other(text) => {
            Err(errors::from_status(status, wait, &ErrorBody::Text(text), Call::Cmdlet(&command.cmdlet)))
        }
    }
}
