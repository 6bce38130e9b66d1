//! PowerShell `ErrorRecord`s (MS-PSRP 2.2.3.15) ⇄ the broker's [`ErrorRecord`].
//!
//! Reading (an ERROR_RECORD message body, or `ExceptionAsErrorRecord` of a RUNSPACEPOOL_STATE /
//! PIPELINE_STATE message):
//! - `message`: `ErrorDetails_Message` when non-empty, else the exception's `Message`, else
//!   the exception's or the record's `ToString`, else `ErrorCategory_Message`;
//! - `category`: the name of the `ErrorCategory_Category` number (`13` → `"ObjectNotFound"`;
//!   an enum object gives its own name; a number outside the table gives its digits), else
//!   `"NotSpecified"`. The reason (`ErrorCategory_Reason`, usually the exception's short type
//!   name) is not kept;
//! - `fully_qualified_error_id`: `FullyQualifiedErrorId`, else `""`;
//! - `target`: the `TargetObject`'s text when it is not null, else a non-empty
//!   `ErrorCategory_TargetName`, else `None`.
//!
//! The same names are also read from a record serialized by plain (non-remoting) serialization,
//! where they sit under `ErrorDetails.Message`, `CategoryInfo.Category` and `Exception.Message`.
//!
//! Writing ([`write_error_record`]) produces what PowerShell itself sends with
//! `SerializeExtendedInfo` false, and reads back to an equal record for the 32 standard
//! category names (others are written as `NotSpecified`).

use super::ser::{ClixmlWriter, MemberSet};
use crate::remote::fault::ErrorRecord;
use crate::remote::value::{PsObject, PsValue};

const CATEGORIES: [&str; 32] = [
    "NotSpecified",
    "OpenError",
    "CloseError",
    "DeviceError",
    "DeadlockDetected",
    "InvalidArgument",
    "InvalidData",
    "InvalidOperation",
    "InvalidResult",
    "InvalidType",
    "MetadataError",
    "NotImplemented",
    "NotInstalled",
    "ObjectNotFound",
    "OperationStopped",
    "OperationTimeout",
    "SyntaxError",
    "ParserError",
    "PermissionDenied",
    "ResourceBusy",
    "ResourceExists",
    "ResourceUnavailable",
    "ReadError",
    "WriteError",
    "FromStdErr",
    "SecurityError",
    "ProtocolError",
    "ConnectionError",
    "AuthenticationError",
    "LimitsExceeded",
    "QuotaExceeded",
    "NotEnabled",
];

/// The `System.Management.Automation.ErrorCategory` name of a number, if it has one.
pub fn error_category_name(value: i64) -> Option<&'static str> {
    usize::try_from(value).ok().and_then(|i| CATEGORIES.get(i)).copied()
}

/// The number of an `ErrorCategory` name (case-insensitive), if it is one.
pub fn error_category_value(name: &str) -> Option<i32> {
    CATEGORIES.iter().position(|c| c.eq_ignore_ascii_case(name)).map(|i| i as i32)
}

fn non_empty(v: Option<&PsValue>) -> Option<String> {
    match v? {
        PsValue::Null => None,
        v => Some(v.display()).filter(|s| !s.is_empty()),
    }
}

fn as_object(v: Option<&PsValue>) -> Option<&PsObject> {
    match v? {
        PsValue::Object(o) => Some(o),
        _ => None,
    }
}

fn category_text(v: &PsValue) -> Option<String> {
    match v {
        PsValue::Enum { name, .. } => Some(name.clone()),
        PsValue::String(s) if !s.is_empty() => Some(s.clone()),
        PsValue::Null => None,
        other => other.as_i64().map(|i| error_category_name(i).map(str::to_string).unwrap_or_else(|| i.to_string())),
    }
}

/// Reduces a deserialized error record to the broker's [`ErrorRecord`]. `None` for `Null`; a
/// bare scalar becomes a record with that text as its message.
pub fn error_record_from_value(value: &PsValue) -> Option<ErrorRecord> {
    let obj = match value {
        PsValue::Null => return None,
        PsValue::Object(o) => o,
        other => {
            return Some(ErrorRecord {
                message: other.display(),
                category: "NotSpecified".into(),
                fully_qualified_error_id: String::new(),
                target: None,
            })
        }
    };
    let exception = obj.get("Exception");
    let exception_message = match exception {
        // An exception's Message is taken as is, even when empty.
        Some(PsValue::Object(e)) => match e.get("Message") {
            Some(PsValue::Null) | None => e.to_string.clone().filter(|s| !s.is_empty()),
            Some(m) => Some(m.display()),
        },
        other => non_empty(other),
    };
    let message = non_empty(obj.get("ErrorDetails_Message"))
        .or_else(|| as_object(obj.get("ErrorDetails")).and_then(|d| non_empty(d.get("Message"))))
        .or(exception_message)
        .or_else(|| obj.to_string.clone().filter(|s| !s.is_empty()))
        .or_else(|| non_empty(obj.get("ErrorCategory_Message")))
        .unwrap_or_default();
    let category = obj
        .get("ErrorCategory_Category")
        .and_then(category_text)
        .or_else(|| as_object(obj.get("CategoryInfo")).and_then(|c| c.get("Category")).and_then(category_text))
        .unwrap_or_else(|| "NotSpecified".into());
    let fully_qualified_error_id = non_empty(obj.get("FullyQualifiedErrorId")).unwrap_or_default();
    let target = match obj.get("TargetObject") {
        Some(PsValue::Null) | None => non_empty(obj.get("ErrorCategory_TargetName"))
            .or_else(|| as_object(obj.get("CategoryInfo")).and_then(|c| non_empty(c.get("TargetName")))),
        Some(v) => Some(v.display()),
    };
    Some(ErrorRecord { message, category, fully_qualified_error_id, target })
}

const ERROR_RECORD_TYPES: [&str; 2] = ["System.Management.Automation.ErrorRecord", "System.Object"];
const EXCEPTION_TYPES: [&str; 4] =
    ["System.Management.Automation.RuntimeException", "System.SystemException", "System.Exception", "System.Object"];

/// Writes `record` as PowerShell serializes an ErrorRecord for remoting (named `name`, e.g.
/// `ExceptionAsErrorRecord`, or unnamed as an ERROR_RECORD message body).
pub fn write_error_record(w: &mut ClixmlWriter, name: Option<&str>, record: &ErrorRecord) {
    let category = error_category_value(&record.category).unwrap_or(0);
    let category_name = error_category_name(category as i64).unwrap_or("NotSpecified");
    let activity = record.fully_qualified_error_id.rsplit_once(',').map(|(_, a)| a).unwrap_or("");
    let reason = "RuntimeException";
    let target_name = record.target.as_deref().unwrap_or("");
    let target_type = if record.target.is_some() { "String" } else { "" };
    let category_message = format!("{category_name} ({target_name}:{target_type}) [{activity}], {reason}");
    w.object(name, &ERROR_RECORD_TYPES, Some(&record.message), |w| {
        w.members(MemberSet::Ms, |w| {
            let exception_text = format!("{}: {}", EXCEPTION_TYPES[0], record.message);
            w.object(Some("Exception"), &EXCEPTION_TYPES, Some(&exception_text), |w| {
                w.members(MemberSet::Props, |w| {
                    w.value(Some("ErrorRecord"), &PsValue::Null);
                    w.value(Some("WasThrownFromThrowStatement"), &PsValue::Bool(false));
                    w.value(Some("Message"), &PsValue::String(record.message.clone()));
                    w.value(Some("Data"), &PsValue::Dict(Vec::new()));
                    w.value(Some("InnerException"), &PsValue::Null);
                    w.value(Some("TargetSite"), &PsValue::Null);
                    w.value(Some("StackTrace"), &PsValue::Null);
                    w.value(Some("HelpLink"), &PsValue::Null);
                    w.value(Some("Source"), &PsValue::Null);
                    w.value(Some("HResult"), &PsValue::Int32(-2146233087));
                });
            });
            let target = record.target.clone().map(PsValue::String).unwrap_or(PsValue::Null);
            w.value(Some("TargetObject"), &target);
            w.value(Some("FullyQualifiedErrorId"), &PsValue::String(record.fully_qualified_error_id.clone()));
            w.value(Some("InvocationInfo"), &PsValue::Null);
            w.value(Some("ErrorCategory_Category"), &PsValue::Int32(category));
            w.value(Some("ErrorCategory_Activity"), &PsValue::String(activity.into()));
            w.value(Some("ErrorCategory_Reason"), &PsValue::String(reason.into()));
            w.value(Some("ErrorCategory_TargetName"), &PsValue::String(target_name.into()));
            w.value(Some("ErrorCategory_TargetType"), &PsValue::String(target_type.into()));
            w.value(Some("ErrorCategory_Message"), &PsValue::String(category_message));
            w.value(Some("SerializeExtendedInfo"), &PsValue::Bool(false));
        });
    });
}

/// [`write_error_record`] as a standalone document (an ERROR_RECORD message body).
pub fn error_record_to_clixml(record: &ErrorRecord) -> String {
    let mut w = ClixmlWriter::new();
    write_error_record(&mut w, None, record);
    w.finish()
}
