//! Building requests: the `InvokeCommand` body from a [`Command`], and the headers every call
//! carries.

use super::odata::{self, Typing};
use crate::identity::{AccessToken, Actor};
use crate::remote::{Command, FaultClass, RemoteError};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use secrecy::ExposeSecret;
use serde_json::{json, Value as Json};

/// The system mailbox an app-only identity anchors its calls on (as the module does).
pub(crate) const APP_ANCHOR_MAILBOX: &str = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}";

/// `{"CmdletInput":{"CmdletName":…,"Parameters":{…}}}`, parameters typed as the module sends
/// them. Parameter names are taken without PowerShell's `-` and `:` dressing; a name given twice
/// is refused here, before anything is sent.
pub(crate) fn invoke_body(command: &Command) -> Result<Json, RemoteError> {
    let cmdlet = command.cmdlet.trim();
    if cmdlet.is_empty() {
        return Err(RemoteError::new(FaultClass::InvalidParameter, "the cmdlet name is empty"));
    }
    let mut names: Vec<&str> = Vec::with_capacity(command.parameters.len());
    for (raw, _) in &command.parameters {
        let name = raw.trim().trim_start_matches('-').trim_end_matches(':');
        if name.is_empty() {
            return Err(RemoteError::new(FaultClass::InvalidParameter, "a parameter has an empty name"));
        }
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(RemoteError::new(
                FaultClass::InvalidParameter,
                format!("parameter '{name}' is given more than once"),
            ));
        }
        names.push(name);
    }
    let parameters =
        odata::encode_members(names.into_iter().zip(command.parameters.iter().map(|(_, v)| v)), Typing::Parameters)
            .map_err(|e| RemoteError::new(FaultClass::InvalidParameter, e.to_string()))?;
    Ok(json!({ "CmdletInput": { "CmdletName": cmdlet, "Parameters": parameters } }))
}

/// `X-AnchorMailbox`: the app's system mailbox in the tenant, or the signed-in user.
pub(crate) fn anchor_mailbox(token: &AccessToken, tenant_id: &str) -> String {
    match &token.actor {
        Actor::App => format!("APP:{APP_ANCHOR_MAILBOX}@{tenant_id}"),
        Actor::User { upn } => format!("UPN:{upn}"),
    }
}

/// `Authorization: Bearer …`, marked sensitive so it never shows in debug output.
pub(crate) fn bearer(token: &AccessToken) -> Result<HeaderValue, RemoteError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.bearer.expose_secret()))
        .map_err(|_| RemoteError::new(FaultClass::Protocol, "the access token cannot be sent in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The headers of one call besides `Authorization` (and `Prefer`, which differs by call).
pub(crate) fn headers(anchor: &str, request_id: &str, cmdlet: Option<&str>) -> Result<HeaderMap, RemoteError> {
    let value = |text: &str| {
        HeaderValue::from_str(text).map_err(|_| {
            RemoteError::new(FaultClass::InvalidParameter, format!("{text:?} cannot be sent in an HTTP header"))
        })
    };
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    headers.insert(HeaderName::from_static("x-responseformat"), HeaderValue::from_static("json"));
    headers.insert(HeaderName::from_static("x-anchormailbox"), value(anchor)?);
    headers.insert(HeaderName::from_static("client-request-id"), value(request_id)?);
    if let Some(cmdlet) = cmdlet {
        headers.insert(HeaderName::from_static("x-cmdletname"), value(cmdlet)?);
    }
    Ok(headers)
}

/// `Prefer: odata.maxpagesize=N`.
pub(crate) fn page_size_preference(max_page_size: u32) -> String {
    format!("odata.maxpagesize={max_page_size}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::PsValue;
    use secrecy::SecretString;

    fn command(parameters: Vec<(&str, PsValue)>) -> Command {
        Command {
            invocation_id: uuid::Uuid::nil(),
            cmdlet: " Set-Mailbox ".into(),
            parameters: parameters.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
        }
    }

    #[test]
    fn the_body_names_the_cmdlet_and_its_typed_parameters() {
        let body = invoke_body(&command(vec![("-Identity", "user001".into()), ("Confirm:", false.into())])).unwrap();
        assert_eq!(
            body,
            json!({"CmdletInput": {"CmdletName": "Set-Mailbox", "Parameters": {"Identity": "user001", "Confirm": false}}})
        );
    }

    #[test]
    fn bad_parameters_are_refused_before_sending() {
        let twice = invoke_body(&command(vec![("Identity", "a".into()), ("identity", "b".into())])).unwrap_err();
        assert_eq!(twice.class, FaultClass::InvalidParameter);
        assert!(twice.message.contains("more than once"));
        let unnamed = invoke_body(&command(vec![("-", "a".into())])).unwrap_err();
        assert_eq!(unnamed.class, FaultClass::InvalidParameter);
        let script = invoke_body(&command(vec![("Filter", PsValue::ScriptBlock("x".into()))])).unwrap_err();
        assert!(script.message.starts_with("parameter 'Filter'"), "{}", script.message);
    }

    #[test]
    fn anchors_follow_the_actor() {
        let token = |actor| AccessToken {
            bearer: SecretString::from("t"),
            expires_at: std::time::SystemTime::now(),
            tenant_id: None,
            actor,
        };
        assert_eq!(
            anchor_mailbox(&token(Actor::App), "6babcaad-604b-40ac-a9d7-9fd97c0b779f"),
            "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@6babcaad-604b-40ac-a9d7-9fd97c0b779f"
        );
        assert_eq!(
            anchor_mailbox(&token(Actor::User { upn: "admin@partner.com".into() }), "x"),
            "UPN:admin@partner.com"
        );
        let header = bearer(&token(Actor::App)).unwrap();
        assert!(header.is_sensitive());
        assert!(headers("UPN:a@b\n", "id", None).is_err(), "no header injection");
    }
}
