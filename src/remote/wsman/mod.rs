//! The WS-Management (MS-WSMV) SOAP envelope layer, sans IO.
//!
//! - [`envelope`]: client requests (Create, Command, Send, Receive, Signal, Delete, Enumerate,
//!   Pull) as complete SOAP 1.2 bodies.
//! - [`response`]: client-side parsing of the server's answers, with the wsa:RelatesTo check.
//! - [`fault`]: SOAP faults with their WSManFault detail, classified into
//!   [`FaultClass`](crate::remote::FaultClass); also builds faults in WinRM's shape.
//! - [`server`]: the other direction, for a simulator: parses requests, builds responses.
//!
//! Nothing here does networking: callers POST the strings with
//! `Content-Type: application/soap+xml;charset=UTF-8` (see [`CONTENT_TYPE`]) and feed the bodies
//! they get back to the parsers. Parsers match namespace URIs and local names, never prefixes,
//! and return [`WsmanError`] on anything malformed; they never panic.

pub mod envelope;
pub mod fault;
pub mod response;
pub mod server;
mod xml;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use envelope::{RequestContext, SIGNAL_PS_CTRL_C, SIGNAL_TERMINATE};
pub use fault::WsmanFault;
pub use response::{
    CommandResponse, CommandState, CreateResponse, EnumerationResponse, ReceiveResponse, ResponseHeader, ShellInfo,
    StreamData,
};
pub use server::{Action, Request, RequestBody};

/// The HTTP Content-Type of every request and response body.
pub const CONTENT_TYPE: &str = "application/soap+xml;charset=UTF-8";

/// Namespace URIs ([MS-WSMV] 2.2.1). Prefixes in what this module writes are fixed; what it
/// reads may use any prefix.
pub mod ns {
    pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
    pub const ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
    pub const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
    pub const WSMV: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd";
    pub const SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
    pub const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
    pub const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
    pub const WSMAN_FAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
    pub const POWERSHELL: &str = "http://schemas.microsoft.com/powershell";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}

/// wsa:Action URIs.
pub mod action {
    pub const CREATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
    pub const CREATE_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse";
    pub const DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
    pub const DELETE_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse";
    pub const ENUMERATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate";
    pub const ENUMERATE_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/EnumerateResponse";
    pub const PULL: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull";
    pub const PULL_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/PullResponse";
    pub const COMMAND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
    pub const COMMAND_RESPONSE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse";
    pub const RECEIVE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive";
    pub const RECEIVE_RESPONSE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse";
    pub const SEND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send";
    pub const SEND_RESPONSE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SendResponse";
    pub const SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal";
    pub const SIGNAL_RESPONSE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse";
    /// The wsa:Action of a fault response.
    pub const FAULT: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";
}

/// The wsa:ReplyTo / wsa:To address meaning "the HTTP back channel".
pub const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

/// ResourceURI for enumerating (and deleting) the user's shells, whatever plugin hosts them.
pub const SHELL_RESOURCE_URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";

/// rsp:CommandState State URIs.
pub const COMMAND_STATE_DONE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
pub const COMMAND_STATE_RUNNING: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running";
pub const COMMAND_STATE_PENDING: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Pending";

/// The ResourceURI of a PowerShell session configuration (`Microsoft.Exchange`,
/// `Microsoft.PowerShell`, a JEA endpoint, ...).
pub fn powershell_resource_uri(configuration_name: &str) -> String {
    format!("{}/{}", ns::POWERSHELL, configuration_name)
}

/// Why a WS-Management message could not be built into something usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WsmanError {
    /// Not well-formed XML (or nested absurdly deep).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// Well-formed, but a required element or attribute is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// An element or attribute is present with a value that cannot be used.
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
    /// The reply answers some other request.
    #[error("wsa:RelatesTo {got:?} does not match the request's MessageID uuid:{expected}")]
    RelatesTo { expected: uuid::Uuid, got: Option<String> },
    /// The server answered with a SOAP fault.
    #[error("{0}")]
    Fault(Box<WsmanFault>),
}

impl WsmanError {
    /// How the broker should treat this failure: a fault is classified from what the server
    /// said; anything else is a protocol error.
    pub fn class(&self, http_status: u16) -> crate::remote::FaultClass {
        match self {
            WsmanError::Fault(f) => f.class(http_status),
            _ => crate::remote::FaultClass::Protocol,
        }
    }

    /// The fault, when the server sent one.
    pub fn fault(&self) -> Option<&WsmanFault> {
        match self {
            WsmanError::Fault(f) => Some(f),
            _ => None,
        }
    }
}

/// Formats a duration as an xs:duration the way WinRM writes timeouts: `PT20S`, `PT7.5S`,
/// `PT0.250S`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    if millis == 0 {
        format!("PT{secs}S")
    } else {
        format!("PT{secs}.{millis:03}S")
    }
}

/// Parses an xs:duration as WinRM writes them (`PT20S`, `PT7200.000S`, `P0DT0H0M1S`,
/// `PT2147483.647S`). Years and months are refused (their length is not fixed); so are
/// negative durations and values that overflow.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let rest = s.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return None;
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    let mut total_ms: u128 = 0;
    let mut add = |num: &str, unit_ms: u128| -> Option<()> {
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut frac_ms: u128 = 0;
        // Only millisecond precision matters here.
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
        if !frac.is_empty() {
            frac_ms = digits.parse::<u128>().ok()? * unit_ms / 1000;
        }
        total_ms = total_ms.checked_add(int.checked_mul(unit_ms)?)?.checked_add(frac_ms)?;
        Some(())
    };
    let mut parse_part = |part: &str, units: &[(char, u128)]| -> Option<()> {
        let mut num = String::new();
        let mut idx = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
            } else {
                let pos = units[idx..].iter().position(|(u, _)| *u == c)?;
                idx += pos + 1;
                add(&num, units[idx - 1].1)?;
                num.clear();
            }
        }
        if num.is_empty() {
            Some(())
        } else {
            None
        }
    };
    parse_part(date, &[('D', 86_400_000)])?;
    if let Some(time) = time {
        parse_part(time, &[('H', 3_600_000), ('M', 60_000), ('S', 1_000)])?;
    }
    let ms = u64::try_from(total_ms).ok()?;
    Some(Duration::from_millis(ms))
}

/// `uuid:XXXXXXXX-...` in upper case, as WinRM writes MessageIDs and SessionIds.
pub(crate) fn uuid_urn(id: uuid::Uuid) -> String {
    format!("uuid:{}", upper(id))
}

/// A UUID in upper-case hyphenated form, as WinRM writes ShellIds and CommandIds.
pub fn upper(id: uuid::Uuid) -> String {
    id.hyphenated().encode_upper(&mut uuid::Uuid::encode_buffer()).to_string()
}

/// Parses `uuid:...` (any case, surrounding whitespace allowed) or a bare UUID.
pub(crate) fn parse_uuid_urn(s: &str) -> Option<uuid::Uuid> {
    let s = s.trim();
    let bare = match s.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("uuid:") => &s[5..],
        _ => s,
    };
    uuid::Uuid::parse_str(bare.trim()).ok()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_parse_winrm_forms() {
        assert_eq!(format_duration(Duration::from_secs(20)), "PT20S");
        assert_eq!(format_duration(Duration::from_millis(7500)), "PT7.500S");
        assert_eq!(parse_duration("PT20S"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("PT7200.000S"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("P0DT0H0M1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("P1DT2H3M4.5S"), Some(Duration::from_millis(93_784_500)));
        assert_eq!(parse_duration(" PT2147483.647S "), Some(Duration::from_millis(2_147_483_647)));
        assert_eq!(parse_duration("PT0.250S"), Some(Duration::from_millis(250)));
        for bad in [
            "",
            "P",
            "PT",
            "20S",
            "PTS",
            "PT1X",
            "P1Y",
            "PT1S2H",
            "PT-1S",
            "PT1..2S",
            "PT99999999999999999999999999999999999999999S",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuid_urns() {
        let id = uuid::Uuid::parse_str("c7b5ecdb-ba3d-42d5-956a-09f386821b2c").unwrap();
        assert_eq!(uuid_urn(id), "uuid:C7B5ECDB-BA3D-42D5-956A-09F386821B2C");
        assert_eq!(parse_uuid_urn(" UUID:c7b5ecdb-ba3d-42d5-956a-09f386821b2c\n"), Some(id));
        assert_eq!(parse_uuid_urn("C7B5ECDB-BA3D-42D5-956A-09F386821B2C"), Some(id));
        assert_eq!(parse_uuid_urn("uuid:ABABABAB-58905844435185278054"), None);
        assert_eq!(parse_uuid_urn("ü"), None);
        assert_eq!(parse_uuid_urn("üüü"), None);
    }
}
