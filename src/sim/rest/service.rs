//! The requests: authentication, the host a tenant is served from, injected faults, limits,
//! then the operation (a cmdlet and its pages, a `$batch`, a discovery probe).

use super::auth::{self, Caller, Refusal};
use super::route::{Operation, Route, Service};
use super::state::InFlight;
use super::RestCall;
use crate::remote::exo::odata;
use crate::remote::{classify_error_record, CommandOutput, ErrorRecord, FaultClass, PsValue};
use crate::sim::connector::pause;
use crate::sim::wire::{bare, server_error, Peer};
use crate::sim::{RequestFault, SimFault, Simulator};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Map, Value as Json};
use std::collections::VecDeque;
use std::sync::Arc;
use uuid::Uuid;

/// The most sub-requests one `$batch` may carry.
const MAX_BATCH: usize = 20;
/// What the service sends for an unknown cmdlet: `Content-Encoding: gzip` on bytes that are not.
const NOT_GZIP: &[u8] = b"\x8b\x08\x00\xffnot gzip at all\x00\x13\x37";

pub(super) struct Rest {
    pub sim: Simulator,
    /// `https` when the listener serves TLS (the scheme of audiences and links).
    pub scheme: &'static str,
}

/// Where a call is served: what links and redirects are built from.
struct Endpoint {
    /// `http://127.0.0.1:5985`.
    origin: String,
    /// The host's path prefix (`/t/nam12b`, `/ipps/r/nam12b`, or the front door's).
    prefix: String,
    service: Service,
    version: String,
    tenant: String,
}

impl Endpoint {
    fn invoke_url(&self) -> String {
        format!("{}{}/adminapi/{}/{}/InvokeCommand", self.origin, self.prefix, self.version, self.tenant)
    }

    fn context(&self) -> String {
        format!(
            "{}{}/adminapi/{}/$metadata#Collection(Exchange.GenericHashTable)",
            self.origin,
            self.service.root(),
            self.version
        )
    }
}

/// One answer, before it becomes an HTTP response or a `$batch` sub-answer.
struct Answer {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: AnswerBody,
}

enum AnswerBody {
    Json(Json),
    /// The unknown-cmdlet answer's bytes (they claim gzip).
    NotGzip,
    Empty,
}

impl Answer {
    fn json(status: StatusCode, body: Json) -> Answer {
        Answer { status, headers: vec![], body: AnswerBody::Json(body) }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self, request_id: Option<&str>) -> Response {
        let (content_type, body) = match self.body {
            AnswerBody::Json(j) => {
                (Some("application/json; odata.metadata=minimal; charset=utf-8"), Body::from(j.to_string()))
            }
            AnswerBody::NotGzip => (Some("application/json; charset=utf-8"), Body::from(NOT_GZIP)),
            AnswerBody::Empty => (None, Body::empty()),
        };
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        if let Some(ct) = content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            h.insert("client-request-id", id);
        }
        h.insert("request-id", HeaderValue::from_str(&Uuid::new_v4().to_string()).expect("a GUID is a header value"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        r
    }

    fn into_sub_answer(self, id: &str) -> Json {
        let mut headers = Map::new();
        for (name, value) in self.headers {
            headers.insert(name.to_string(), Json::String(value));
        }
        let body = match self.body {
            AnswerBody::Json(j) => {
                headers.insert("Content-Type".into(), json!("application/json; odata.metadata=minimal"));
                j
            }
            AnswerBody::NotGzip => Json::String(String::from_utf8_lossy(NOT_GZIP).into_owned()),
            AnswerBody::Empty => Json::Null,
        };
        json!({ "id": id, "status": self.status.as_u16(), "headers": headers, "body": body })
    }
}

/// `{"error":{"code","message","details":[{"message"}],"innererror":{"internalException":{"message"}}}}`:
/// the generic message on top, the cmdlet's own words in `details`.
fn odata_error(status: StatusCode, code: &str, detail: &str) -> Answer {
    let generic = match status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => "Error executing cmdlet",
        _ => detail,
    };
    Answer::json(
        status,
        json!({"error": {
            "code": code,
            "message": generic,
            "details": [{"code": "Context", "target": "", "message": detail}],
            "innererror": {"message": detail, "internalException": {"message": detail}}
        }}),
    )
}

fn refused(refusal: Refusal) -> Answer {
    let challenge = refusal.challenge();
    let answer = match refusal {
        Refusal::Unauthorized { message, .. } => {
            Answer::json(StatusCode::UNAUTHORIZED, json!({"error": {"code": "Unauthorized", "message": message}}))
        }
        Refusal::Forbidden(message) => odata_error(StatusCode::FORBIDDEN, "Forbidden", &message),
    };
    match challenge {
        Some(c) => answer.with("WWW-Authenticate", c),
        None => answer,
    }
}

fn too_many(retry_after_seconds: f64, why: &str) -> Answer {
    odata_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", why).with("Retry-After", seconds(retry_after_seconds))
}

fn seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// `Prefer: odata.maxpagesize=N` (among other preferences, `,` or `;` separated).
fn preferred_page_size(prefer: Option<&str>) -> Option<u32> {
    prefer?.split([',', ';']).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("odata.maxpagesize").then(|| value.trim().parse().ok()).flatten()
    })
}

fn skip_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        matches!(name, "$skiptoken" | "%24skiptoken" | "%24SkipToken" | "$SkipToken").then(|| value.to_string())
    })
}

/// Every request to `/adminapi/…`, `/t/…` and `/ipps/…`.
pub(super) async fn handle(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = header_text(&headers, "client-request-id").map(str::to_string);
    let answer = |a: Answer| a.into_response(request_id.as_deref());
    let Some(route) = Route::parse(uri.path()) else {
        return answer(odata_error(StatusCode::NOT_FOUND, "NotFound", "No such resource."));
    };
    let sim = &rest.sim;
    let host = header_text(&headers, "host").map(str::to_string).or_else(|| uri.authority().map(|a| a.to_string()));
    let origin = format!("{}://{}", rest.scheme, host.as_deref().unwrap_or("localhost"));
    let audience = format!("{origin}{}", route.service.root());
    let caller = match auth::authenticate(sim, header_text(&headers, "authorization"), &audience, &route.tenant) {
        Ok(c) => c,
        Err(refusal) => return answer(refused(refusal)),
    };
    let config = sim.inner.rest.config();
    let page_size = preferred_page_size(header_text(&headers, "prefer"))
        .unwrap_or(config.max_page_size)
        .clamp(1, config.max_page_size) as usize;
    let batch = match route.operation {
        Operation::Batch => Some(parse_batch(&body)),
        _ => None,
    };
    let input = match (&route.operation, skip_token(uri.query())) {
        (Operation::Invoke, None) => Some(parse_input(&body)),
        _ => None,
    };
    sim.inner.rest.note(RestCall {
        operation: route.operation.action().to_string(),
        tenant: caller.tenant.clone(),
        identity: caller.identity.clone(),
        host: route.label.clone(),
        anchor_mailbox: header_text(&headers, "x-anchormailbox").map(str::to_string),
        client_request_id: request_id.clone(),
        max_page_size: preferred_page_size(header_text(&headers, "prefer")),
        cmdlet: input.as_ref().and_then(|i| i.as_ref().ok()).map(|i| i.cmdlet.clone()),
    });
    let served_from = match route.service {
        Service::Exchange => sim.inner.rest.tenant_host(&caller.tenant),
        Service::Compliance => Some(config.compliance_region.to_ascii_lowercase()),
    };
    if route.label != served_from {
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let location = format!("{origin}{}{}{query}", Route::prefix(route.service, served_from.as_deref()), route.tail);
        return answer(Answer {
            status: StatusCode::FOUND,
            headers: vec![("Location", location)],
            body: AnswerBody::Empty,
        });
    }
    let allowed = match route.operation {
        Operation::Unknown(ref op) => {
            return answer(odata_error(StatusCode::NOT_FOUND, "NotFound", &format!("No operation '{op}'.")));
        }
        Operation::Probe => method == Method::GET || method == Method::HEAD,
        Operation::Invoke | Operation::Batch => method == Method::POST,
    };
    if !allowed {
        return answer(odata_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not allowed here."),
        ));
    }

    // Faults in front of the service: the request is not processed.
    let fault = sim.roll_request_fault(route.operation.action());
    if let Some(f) = fault {
        let pids = match &batch {
            Some(Ok(subs)) => subs.iter().map(|s| s.pipeline_id).collect(),
            _ => vec![pipeline_id(request_id.as_deref())],
        };
        for pid in pids {
            sim.note_pipeline_fault(pid, f.kind());
        }
    }
    match fault {
        Some(RequestFault::DropBefore) => return severed(&peer),
        Some(RequestFault::Http503 { retry_after_seconds }) => {
            return bare(
                StatusCode::SERVICE_UNAVAILABLE,
                "No server is available to handle this request.",
                Some(retry_after_seconds),
            );
        }
        Some(RequestFault::Http429 { retry_after_seconds }) => {
            return answer(too_many(
                retry_after_seconds as f64,
                "Too many requests. Retry after the time in Retry-After.",
            ));
        }
        Some(RequestFault::Http500 { processed: false }) => return server_error(),
        _ => {}
    }
    let _in_flight = match InFlight::enter(sim, &caller.identity, &caller.tenant) {
        Ok(guard) => guard,
        Err(over) => {
            return answer(too_many(
                over.retry_after_seconds,
                "The identity or tenant has too many requests in flight. Retry after the time in Retry-After.",
            ));
        }
    };
    let endpoint = Endpoint {
        origin,
        prefix: Route::prefix(route.service, route.label.as_deref()),
        service: route.service,
        version: route.version.clone(),
        tenant: route.tenant.clone(),
    };
    let result = match route.operation {
        Operation::Probe => {
            Answer::json(StatusCode::OK, json!({"value": [{"exportedCmdlets": Simulator::cmdlets().join(",")}]}))
        }
        Operation::Batch => match batch.unwrap_or_else(|| Err("no batch".into())) {
            Ok(subs) => run_batch(&rest, &caller, &audience, subs, page_size, &endpoint).await,
            Err(why) => odata_error(StatusCode::BAD_REQUEST, "BadRequest", &why),
        },
        Operation::Invoke | Operation::Unknown(_) => match (input, skip_token(uri.query())) {
            (Some(input), _) => {
                run_invoke(sim, &caller, input, pipeline_id(request_id.as_deref()), page_size, &endpoint).await
            }
            (None, Some(token)) => next_page(sim, &caller, &token, page_size, &endpoint),
            (None, None) => odata_error(StatusCode::BAD_REQUEST, "BadRequest", "No cmdlet."),
        },
    };
    // Faults after the work was done: the answer is lost, replaced or late.
    match fault {
        Some(RequestFault::DropAfter) => return severed(&peer),
        Some(RequestFault::Http500 { processed: true }) => return server_error(),
        Some(RequestFault::LatencySpike(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    answer(result)
}

fn severed(peer: &Peer) -> Response {
    peer.cut();
    Response::new(Body::empty())
}

/// The pipeline id of a call: its `client-request-id` when that is a GUID (the broker's
/// invocation id), else a fresh one.
fn pipeline_id(request_id: Option<&str>) -> Uuid {
    request_id.and_then(|id| Uuid::parse_str(id).ok()).unwrap_or_else(Uuid::new_v4)
}

/// A cmdlet and its parameters, decoded with the module's typing.
struct CmdletInput {
    cmdlet: String,
    parameters: Vec<(String, PsValue)>,
}

fn parse_input(body: &[u8]) -> Result<CmdletInput, String> {
    let json: Json = serde_json::from_slice(body).map_err(|e| format!("The request body is not JSON: {e}"))?;
    input_from(json)
}

fn input_from(json: Json) -> Result<CmdletInput, String> {
    let Json::Object(mut top) = json else { return Err("The request body is not a JSON object.".into()) };
    let Some(Json::Object(mut input)) = top.remove("CmdletInput") else {
        return Err("The request body has no CmdletInput object.".into());
    };
    let cmdlet = match input.remove("CmdletName") {
        Some(Json::String(name)) if !name.trim().is_empty() => name.trim().to_string(),
        _ => return Err("CmdletInput has no CmdletName.".into()),
    };
    let parameters = match input.remove("Parameters") {
        None | Some(Json::Null) => vec![],
        Some(Json::Object(map)) => odata::decode_members(map),
        Some(_) => return Err("CmdletInput.Parameters is not an object.".into()),
    };
    Ok(CmdletInput { cmdlet, parameters })
}

/// Runs the cmdlet (after the command latency) and answers with its first page.
async fn run_invoke(
    sim: &Simulator,
    caller: &Caller,
    input: Result<CmdletInput, String>,
    pipeline_id: Uuid,
    page_size: usize,
    endpoint: &Endpoint,
) -> Answer {
    let input = match input {
        Ok(i) => i,
        Err(why) => return odata_error(StatusCode::BAD_REQUEST, "BadRequest", &why),
    };
    pause(sim, sim.latency().1).await;
    match sim.run_stateless(&caller.tenant, pipeline_id, &input.cmdlet, &input.parameters) {
        Ok(output) => first_page(sim, caller, output, page_size, endpoint),
        Err(fault) => fault_answer(fault),
    }
}

/// How a failed command answers. Unknown cmdlet: 403 with a body that claims gzip and is not;
/// parameter binding: 400; a terminating error: 404 for an object not found, else 400.
fn fault_answer(fault: SimFault) -> Answer {
    let Some(record) = fault.record else {
        let status = StatusCode::from_u16(fault.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return odata_error(status, status.canonical_reason().unwrap_or("Error"), &fault.message);
    };
    match classify_error_record(&record) {
        FaultClass::UnknownCmdlet => Answer {
            status: StatusCode::FORBIDDEN,
            headers: vec![("Content-Encoding", "gzip".into())],
            body: AnswerBody::NotGzip,
        },
        FaultClass::CmdletError if record.fully_qualified_error_id.contains("NotFound") => {
            odata_error(StatusCode::NOT_FOUND, "NotFound", &record.message)
        }
        _ => odata_error(StatusCode::BAD_REQUEST, "BadRequest", &record.message),
    }
}

fn first_page(
    sim: &Simulator,
    caller: &Caller,
    output: CommandOutput,
    page_size: usize,
    endpoint: &Endpoint,
) -> Answer {
    let mut items: VecDeque<PsValue> = output.objects.into();
    let page: Vec<PsValue> = items.drain(..page_size.min(items.len())).collect();
    let next = (!items.is_empty()).then(|| sim.inner.rest.open_cursor(&caller.identity, &caller.tenant, items));
    page_answer(page, next, &output.warnings, &output.errors, page_size, endpoint)
}

/// A further page: nothing runs again; the rest of the answer is read from its cursor.
fn next_page(sim: &Simulator, caller: &Caller, token: &str, page_size: usize, endpoint: &Endpoint) -> Answer {
    match sim.inner.rest.next_page(token, &caller.identity, &caller.tenant, page_size) {
        Some((page, more)) => page_answer(page, more.then(|| token.to_string()), &[], &[], page_size, endpoint),
        None => odata_error(StatusCode::BAD_REQUEST, "BadRequest", "The skip token is invalid or has expired."),
    }
}

fn page_answer(
    page: Vec<PsValue>,
    next: Option<String>,
    warnings: &[String],
    errors: &[ErrorRecord],
    page_size: usize,
    endpoint: &Endpoint,
) -> Answer {
    let mut body = Map::new();
    body.insert("@odata.context".into(), Json::String(endpoint.context()));
    body.insert("value".into(), Json::Array(page.iter().map(odata::encode_item).collect()));
    if let Some(token) = next {
        body.insert("@odata.nextLink".into(), Json::String(format!("{}?$skiptoken={token}", endpoint.invoke_url())));
    }
    if !warnings.is_empty() {
        body.insert("@adminapi.warnings".into(), json!(warnings));
    }
    if !errors.is_empty() {
        let errors: Vec<Json> = errors
            .iter()
            .map(|e| {
                let mut o = json!({"message": e.message, "category": e.category, "fullyQualifiedErrorId": e.fully_qualified_error_id});
                if let Some(t) = &e.target {
                    o["targetObject"] = json!(t);
                }
                o
            })
            .collect();
        body.insert("@adminapi.errors".into(), Json::Array(errors));
    }
    Answer::json(StatusCode::OK, Json::Object(body))
        .with("Preference-Applied", format!("odata.maxpagesize={page_size}"))
}

/// One sub-request of a `$batch`.
struct SubRequest {
    id: String,
    method: String,
    url: String,
    pipeline_id: Uuid,
    page_size: Option<u32>,
    authorization: Option<String>,
    body: Json,
}

fn parse_batch(body: &[u8]) -> Result<Vec<SubRequest>, String> {
    let json: Json = serde_json::from_slice(body).map_err(|e| format!("The request body is not JSON: {e}"))?;
    let Some(Json::Array(requests)) = json.get("requests").cloned() else {
        return Err("The batch has no requests array.".into());
    };
    if requests.is_empty() || requests.len() > MAX_BATCH {
        return Err(format!("A batch carries 1 to {MAX_BATCH} requests, not {}.", requests.len()));
    }
    requests
        .into_iter()
        .map(|r| {
            let text = |v: Option<&Json>| match v {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let headers = r.get("headers").and_then(Json::as_object);
            let header = |name: &str| {
                headers.and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))).and_then(|(_, v)| v.as_str())
            };
            let id = text(r.get("id")).ok_or("A batch request has no id.")?;
            Ok(SubRequest {
                method: text(r.get("method")).unwrap_or_default(),
                url: text(r.get("url")).ok_or(format!("Batch request {id} has no url."))?,
                pipeline_id: pipeline_id(header("client-request-id")),
                page_size: preferred_page_size(header("prefer")),
                authorization: header("authorization").map(str::to_string),
                body: r.get("body").cloned().unwrap_or(Json::Null),
                id,
            })
        })
        .collect()
}

/// Runs the sub-requests one after another, each answered on its own.
async fn run_batch(
    rest: &Rest,
    caller: &Caller,
    audience: &str,
    subs: Vec<SubRequest>,
    page_size: usize,
    endpoint: &Endpoint,
) -> Answer {
    let sim = &rest.sim;
    let max = sim.inner.rest.config().max_page_size;
    let mut responses = Vec::with_capacity(subs.len());
    for sub in subs {
        let size = sub.page_size.map_or(page_size, |n| n.clamp(1, max) as usize);
        let answer = sub_answer(sim, caller, audience, &sub, size, endpoint).await;
        responses.push(answer.into_sub_answer(&sub.id));
    }
    Answer::json(StatusCode::OK, json!({ "responses": responses }))
}

async fn sub_answer(
    sim: &Simulator,
    caller: &Caller,
    audience: &str,
    sub: &SubRequest,
    page_size: usize,
    endpoint: &Endpoint,
) -> Answer {
    if !sub.method.eq_ignore_ascii_case("POST") {
        return odata_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "Batch requests are POSTed.");
    }
    let uri: Option<Uri> = if sub.url.starts_with("http") || sub.url.starts_with('/') {
        sub.url.parse().ok()
    } else {
        format!("/{}", sub.url).parse().ok()
    };
    let route = uri.as_ref().and_then(|u| Route::parse(u.path()));
    let same_tenant = route.as_ref().is_some_and(|r| {
        r.operation == Operation::Invoke && sim.tenant_domain_key(&r.tenant).as_deref() == Some(caller.tenant.as_str())
    });
    let (Some(uri), Some(route), true) = (uri, route, same_tenant) else {
        return odata_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("'{}' is not this tenant's InvokeCommand.", sub.url),
        );
    };
    if let Some(authorization) = &sub.authorization {
        match auth::authenticate(sim, Some(authorization), audience, &route.tenant) {
            Ok(c) if c.identity == caller.identity => {}
            Ok(_) => return refused(Refusal::Forbidden("A batch request names another identity.".into())),
            Err(refusal) => return refused(refusal),
        }
    }
    sim.inner.rest.note(RestCall {
        operation: "BatchItem".into(),
        tenant: caller.tenant.clone(),
        identity: caller.identity.clone(),
        host: route.label.clone(),
        anchor_mailbox: None,
        client_request_id: Some(sub.pipeline_id.to_string()),
        max_page_size: sub.page_size,
        cmdlet: sub.body.pointer("/CmdletInput/CmdletName").and_then(Json::as_str).map(str::to_string),
    });
    match skip_token(uri.query()) {
        Some(token) => next_page(sim, caller, &token, page_size, endpoint),
        None => run_invoke(sim, caller, input_from(sub.body.clone()), sub.pipeline_id, page_size, endpoint).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_and_skip_tokens_parse() {
        assert_eq!(preferred_page_size(Some("odata.maxpagesize=1000")), Some(1000));
        assert_eq!(preferred_page_size(Some("odata.maxpagesize = 250;odata.continue-on-error")), Some(250));
        assert_eq!(preferred_page_size(Some("odata.continue-on-error, odata.maxpagesize=5")), Some(5));
        assert_eq!(preferred_page_size(Some("return=minimal")), None);
        assert_eq!(skip_token(Some("$skiptoken=abc")), Some("abc".into()));
        assert_eq!(skip_token(Some("x=1&%24skiptoken=abc")), Some("abc".into()));
        assert_eq!(skip_token(Some("x=1")), None);
        assert_eq!(seconds(1.0), "1");
        assert_eq!(seconds(0.25), "0.25");
    }

    #[test]
    fn bodies_decode_with_the_module_typing() {
        let input = parse_input(br##"{"CmdletInput":{"CmdletName":"Set-Mailbox","Parameters":{"Identity":"u","H":{"@odata.type":"#Exchange.GenericHashTable","Add":["a"]}}}}"##).unwrap();
        assert_eq!(input.cmdlet, "Set-Mailbox");
        assert_eq!(input.parameters[1].1, PsValue::Dict(vec![("Add".into(), PsValue::List(vec!["a".into()]))]));
        assert!(parse_input(br#"{"CmdletInput":{}}"#).is_err());
        assert!(parse_input(b"\x1f\x8b").is_err());
        assert!(parse_input(br#"{"CmdletInput":{"CmdletName":"x","Parameters":[1]}}"#).is_err());
        let subs = parse_batch(br#"{"requests":[{"id":1,"method":"POST","url":"/adminapi/beta/t/InvokeCommand","headers":{"Client-Request-Id":"6babcaad-604b-40ac-a9d7-9fd97c0b779f","Prefer":"odata.maxpagesize=3"},"body":{}}]}"#).unwrap();
        assert_eq!((subs[0].id.as_str(), subs[0].page_size), ("1", Some(3)));
        assert_eq!(subs[0].pipeline_id.to_string(), "6babcaad-604b-40ac-a9d7-9fd97c0b779f");
        assert!(parse_batch(br#"{"requests":[]}"#).is_err());
    }
}
