//! Bodies of the PSRP messages the broker's client sends and its server simulator answers
//! with (MS-PSRP 2.2.2), built and parsed over the [`clixml`] codec.
//!
//! Builders return a whole [`Message`]; parsers take one ([`ServerMessage::parse`] on the
//! client, [`ClientMessage::parse`] on the server). Parsers dispatch on the message type and
//! do not check the destination field.

use super::message::{Destination, Message, MessageType};
use super::PsrpError;
use crate::remote::clixml::{self, ClixmlWriter, MemberSet};
use crate::remote::fault::ErrorRecord;
use crate::remote::value::{PsObject, PsValue};
use uuid::Uuid;

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: &str = "2.3";
pub const PS_VERSION: &str = "2.0";
pub const SERIALIZATION_VERSION: &str = "1.1.0.1";

const PIPELINE_RESULT_TYPES: &str = "System.Management.Automation.Runspaces.PipelineResultTypes";
const APARTMENT_STATE: &str = "System.Threading.ApartmentState";
const REMOTE_STREAM_OPTIONS: &str = "System.Management.Automation.RemoteStreamOptions";
const PS_THREAD_OPTIONS: &str = "System.Management.Automation.Runspaces.PSThreadOptions";
const PSOBJECT_LIST: [&str; 2] = [
    "System.Collections.Generic.List`1[[System.Management.Automation.PSObject, System.Management.Automation, Version=1.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35]]",
    "System.Object",
];
const PRIMITIVE_DICTIONARY: [&str; 3] =
    ["System.Management.Automation.PSPrimitiveDictionary", "System.Collections.Hashtable", "System.Object"];

fn content(msg: impl Into<String>) -> PsrpError {
    PsrpError::Content(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// SESSION_CAPABILITY (2.2.2.1), sent by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCapability {
    pub protocol_version: String,
    pub ps_version: String,
    pub serialization_version: String,
}

impl Default for SessionCapability {
    fn default() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION.into(),
            ps_version: PS_VERSION.into(),
            serialization_version: SERIALIZATION_VERSION.into(),
        }
    }
}

impl SessionCapability {
    pub fn to_clixml(&self) -> String {
        let mut w = ClixmlWriter::new();
        w.object::<&str>(None, &[], None, |w| {
            w.members(MemberSet::Ms, |w| {
                w.value(Some("protocolversion"), &PsValue::Version(self.protocol_version.clone()));
                w.value(Some("PSVersion"), &PsValue::Version(self.ps_version.clone()));
                w.value(Some("SerializationVersion"), &PsValue::Version(self.serialization_version.clone()));
            });
        });
        w.finish()
    }

    pub fn from_value(value: &PsValue) -> Result<Self, PsrpError> {
        let obj = object(value, "SESSION_CAPABILITY")?;
        let text = |name: &str| -> Result<String, PsrpError> {
            match obj.get(name) {
                Some(PsValue::Version(s)) | Some(PsValue::String(s)) => Ok(s.clone()),
                _ => Err(content(format!("SESSION_CAPABILITY without {name}"))),
            }
        };
        Ok(Self {
            protocol_version: text("protocolversion")?,
            ps_version: text("PSVersion")?,
            serialization_version: text("SerializationVersion")?,
        })
    }
}

/// A protocol enum numbered 0.. in declaration order, keeping values it does not know.
macro_rules! numbered_state {
    ($(#[$doc:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
            Unknown(i32),
        }

        impl $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_i32(self) -> i32 {
                match self {
                    Self::Unknown(v) => v,
                    known => Self::ALL.iter().position(|s| *s == known).unwrap_or(0) as i32,
                }
            }

            pub fn from_i32(v: i32) -> Self {
                usize::try_from(v).ok().and_then(|i| Self::ALL.get(i)).copied().unwrap_or(Self::Unknown(v))
            }
        }
    };
}

numbered_state!(
    /// RunspacePoolState (2.2.3.4).
    RunspacePoolState {
        BeforeOpen,
        Opening,
        Opened,
        Closed,
        Closing,
        Broken,
        NegotiationSent,
        NegotiationSucceeded,
        Connecting,
        Disconnected,
    }
);

numbered_state!(
    /// PSInvocationState (2.2.3.5), the state in PIPELINE_STATE.
    PipelineState { NotStarted, Running, Stopping, Stopped, Completed, Failed, Disconnected }
);

impl PipelineState {
    /// Completed, Failed or Stopped: no more messages follow for the pipeline.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Stopped)
    }
}

fn object<'a>(value: &'a PsValue, what: &str) -> Result<&'a PsObject, PsrpError> {
    match value {
        PsValue::Object(o) => Ok(o),
        _ => Err(content(format!("{what} body is not an object"))),
    }
}

fn int_prop(obj: &PsObject, name: &str, what: &str) -> Result<i32, PsrpError> {
    obj.get(name)
        .and_then(PsValue::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| content(format!("{what} without an integer {name}")))
}

fn write_enum(w: &mut ClixmlWriter, name: &str, type_name: &str, text: &str, value: i64) {
    w.enum_value(Some(name), &[type_name], text, value);
}

fn write_null_host_info(w: &mut ClixmlWriter) {
    w.object::<&str>(Some("HostInfo"), &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            for flag in ["_isHostNull", "_isHostUINull", "_isHostRawUINull", "_useRunspaceHost"] {
                w.value(Some(flag), &PsValue::Bool(true));
            }
        });
    });
}

fn body_message(destination: Destination, message_type: MessageType, rpid: Uuid, pid: Uuid, body: String) -> Message {
    Message::new(destination, message_type, rpid, pid, body.into_bytes())
}

fn state_body(state_name: &str, state: i32, error: Option<&ErrorRecord>) -> String {
    let mut w = ClixmlWriter::new();
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some(state_name), &PsValue::Int32(state));
            if let Some(record) = error {
                clixml::write_error_record(w, Some("ExceptionAsErrorRecord"), record);
            }
        });
    });
    w.finish()
}

fn state_error(obj: &PsObject) -> Option<ErrorRecord> {
    obj.get("ExceptionAsErrorRecord").and_then(clixml::error_record_from_value)
}

// ---------------------------------------------------------------------------------------------
// Client → server

/// SESSION_CAPABILITY from the client: protocol 2.3, PSVersion 2.0, serialization 1.1.0.1.
pub fn client_session_capability(rpid: Uuid) -> Message {
    body_message(
        Destination::Server,
        MessageType::SessionCapability,
        rpid,
        Uuid::nil(),
        SessionCapability::default().to_clixml(),
    )
}

/// What the server reads from INIT_RUNSPACEPOOL (2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitRunspacePool {
    pub min_runspaces: i32,
    pub max_runspaces: i32,
}

/// INIT_RUNSPACEPOOL: one runspace, default thread options, apartment Unknown, a null host,
/// no application arguments.
pub fn init_runspace_pool(rpid: Uuid) -> Message {
    let mut w = ClixmlWriter::new();
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some("MinRunspaces"), &PsValue::Int32(1));
            w.value(Some("MaxRunspaces"), &PsValue::Int32(1));
            write_enum(w, "PSThreadOptions", PS_THREAD_OPTIONS, "Default", 0);
            write_enum(w, "ApartmentState", APARTMENT_STATE, "Unknown", 2);
            write_null_host_info(w);
            w.value(Some("ApplicationArguments"), &PsValue::Null);
        });
    });
    body_message(Destination::Server, MessageType::InitRunspacePool, rpid, Uuid::nil(), w.finish())
}

/// What the server reads from CREATE_PIPELINE (2.2.2.10): the single command and its named
/// parameters. A positional argument (no name) comes out with an empty name.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatePipeline {
    pub command: String,
    pub is_script: bool,
    pub parameters: Vec<(String, PsValue)>,
    pub no_input: bool,
}

/// CREATE_PIPELINE for one cmdlet with named parameters (never script text), shaped as
/// pypsrp and PowerShell send it: no input, no history, streams not merged, a null host.
pub fn create_pipeline(rpid: Uuid, pid: Uuid, command: &str, parameters: &[(String, PsValue)]) -> Message {
    let mut w = ClixmlWriter::new();
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            w.object::<&str>(Some("PowerShell"), &[], None, |w| {
                w.members(MemberSet::Ms, |w| {
                    w.list_with(Some("Cmds"), &PSOBJECT_LIST, |w| write_command(w, command, parameters));
                    w.value(Some("IsNested"), &PsValue::Bool(false));
                    w.value(Some("History"), &PsValue::Null);
                    w.value(Some("RedirectShellErrorOutputPipe"), &PsValue::Bool(true));
                });
            });
            w.value(Some("NoInput"), &PsValue::Bool(true));
            write_enum(w, "ApartmentState", APARTMENT_STATE, "Unknown", 2);
            write_enum(w, "RemoteStreamOptions", REMOTE_STREAM_OPTIONS, "None", 0);
            w.value(Some("AddToHistory"), &PsValue::Bool(false));
            write_null_host_info(w);
            w.value(Some("IsNested"), &PsValue::Bool(false));
        });
    });
    body_message(Destination::Server, MessageType::CreatePipeline, rpid, pid, w.finish())
}

fn write_command(w: &mut ClixmlWriter, command: &str, parameters: &[(String, PsValue)]) {
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some("Cmd"), &PsValue::String(command.into()));
            w.value(Some("IsScript"), &PsValue::Bool(false));
            w.value(Some("UseLocalScope"), &PsValue::Null);
            for merge in ["MergeMyResult", "MergeToResult", "MergePreviousResults"] {
                write_enum(w, merge, PIPELINE_RESULT_TYPES, "None", 0);
            }
            w.list_with(Some("Args"), &PSOBJECT_LIST, |w| {
                for (name, value) in parameters {
                    w.object::<&str>(None, &[], None, |w| {
                        w.members(MemberSet::Ms, |w| {
                            w.value(Some("N"), &PsValue::String(name.clone()));
                            w.value(Some("V"), value);
                        });
                    });
                }
            });
            for merge in ["MergeError", "MergeWarning", "MergeVerbose", "MergeDebug", "MergeInformation"] {
                write_enum(w, merge, PIPELINE_RESULT_TYPES, "None", 0);
            }
        });
    });
}

impl CreatePipeline {
    pub fn from_value(value: &PsValue) -> Result<Self, PsrpError> {
        let obj = object(value, "CREATE_PIPELINE")?;
        let no_input = obj.get("NoInput").and_then(PsValue::as_bool).unwrap_or(true);
        let ps = match obj.get("PowerShell") {
            Some(PsValue::Object(o)) => o,
            _ => return Err(content("CREATE_PIPELINE without a PowerShell object")),
        };
        // Several statements travel as ExtraCmds (a list of {Cmds}); one as Cmds alone.
        let mut commands: Vec<&PsValue> = Vec::new();
        match ps.get("ExtraCmds") {
            Some(PsValue::List(statements)) => {
                for s in statements {
                    match s {
                        PsValue::Object(st) => match st.get("Cmds") {
                            Some(PsValue::List(c)) => commands.extend(c),
                            _ => return Err(content("ExtraCmds statement without Cmds")),
                        },
                        _ => return Err(content("ExtraCmds statement is not an object")),
                    }
                }
            }
            _ => match ps.get("Cmds") {
                Some(PsValue::List(c)) => commands.extend(c),
                _ => return Err(content("CREATE_PIPELINE without Cmds")),
            },
        }
        let [PsValue::Object(cmd)] = commands.as_slice() else {
            return Err(content(format!("expected one command, found {}", commands.len())));
        };
        let command = match cmd.get("Cmd") {
            Some(PsValue::String(s)) => s.clone(),
            _ => return Err(content("command without Cmd")),
        };
        let is_script = cmd.get("IsScript").and_then(PsValue::as_bool).unwrap_or(false);
        let mut parameters = Vec::new();
        match cmd.get("Args") {
            Some(PsValue::List(args)) => {
                for arg in args {
                    let PsValue::Object(arg) = arg else { return Err(content("command argument is not an object")) };
                    let name = match arg.get("N") {
                        Some(PsValue::String(s)) => s.clone(),
                        Some(PsValue::Null) | None => String::new(),
                        Some(_) => return Err(content("argument name is not a string")),
                    };
                    parameters.push((name, arg.get("V").cloned().unwrap_or(PsValue::Null)));
                }
            }
            Some(PsValue::Null) | None => {}
            Some(_) => return Err(content("command Args is not a list")),
        }
        Ok(Self { command, is_script, parameters, no_input })
    }
}

/// What the client sent, as the server simulator sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    SessionCapability(SessionCapability),
    InitRunspacePool(InitRunspacePool),
    CreatePipeline(CreatePipeline),
    /// Any other type; the body is left undecoded.
    Other {
        message_type: MessageType,
        data: Vec<u8>,
    },
}

impl ClientMessage {
    pub fn parse(msg: &Message) -> Result<Self, PsrpError> {
        Ok(match msg.message_type {
            MessageType::SessionCapability => Self::SessionCapability(SessionCapability::from_value(&msg.value()?)?),
            MessageType::InitRunspacePool => {
                let v = msg.value()?;
                let obj = object(&v, "INIT_RUNSPACEPOOL")?;
                Self::InitRunspacePool(InitRunspacePool {
                    min_runspaces: int_prop(obj, "MinRunspaces", "INIT_RUNSPACEPOOL")?,
                    max_runspaces: int_prop(obj, "MaxRunspaces", "INIT_RUNSPACEPOOL")?,
                })
            }
            MessageType::CreatePipeline => Self::CreatePipeline(CreatePipeline::from_value(&msg.value()?)?),
            other => Self::Other { message_type: other, data: msg.data.clone() },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client

fn to_client(message_type: MessageType, rpid: Uuid, pid: Uuid, body: String) -> Message {
    body_message(Destination::Client, message_type, rpid, pid, body)
}

/// SESSION_CAPABILITY from the server.
pub fn server_session_capability(rpid: Uuid) -> Message {
    to_client(MessageType::SessionCapability, rpid, Uuid::nil(), SessionCapability::default().to_clixml())
}

/// APPLICATION_PRIVATE_DATA with the given entries (a PSPrimitiveDictionary).
pub fn application_private_data(rpid: Uuid, data: &[(PsValue, PsValue)]) -> Message {
    let mut w = ClixmlWriter::new();
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| w.dict(Some("ApplicationPrivateData"), &PRIMITIVE_DICTIONARY, data));
    });
    to_client(MessageType::ApplicationPrivateData, rpid, Uuid::nil(), w.finish())
}

/// RUNSPACEPOOL_INIT_DATA.
pub fn runspace_pool_init_data(rpid: Uuid, min_runspaces: i32, max_runspaces: i32) -> Message {
    let mut w = ClixmlWriter::new();
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some("MinRunspaces"), &PsValue::Int32(min_runspaces));
            w.value(Some("MaxRunspaces"), &PsValue::Int32(max_runspaces));
        });
    });
    to_client(MessageType::RunspacePoolInitData, rpid, Uuid::nil(), w.finish())
}

/// RUNSPACEPOOL_STATE, with the reason when the pool broke.
pub fn runspace_pool_state(rpid: Uuid, state: RunspacePoolState, error: Option<&ErrorRecord>) -> Message {
    to_client(MessageType::RunspacePoolState, rpid, Uuid::nil(), state_body("RunspaceState", state.as_i32(), error))
}

/// RUNSPACE_AVAILABILITY answering call `call_id`.
pub fn runspace_availability(rpid: Uuid, call_id: i64, response: &PsValue) -> Message {
    let mut w = ClixmlWriter::new();
    w.object::<&str>(None, &[], None, |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some("SetMinMaxRunspacesResponse"), response);
            w.value(Some("ci"), &PsValue::Int64(call_id));
        });
    });
    to_client(MessageType::RunspaceAvailability, rpid, Uuid::nil(), w.finish())
}

/// PIPELINE_OUTPUT carrying one object.
pub fn pipeline_output(rpid: Uuid, pid: Uuid, value: &PsValue) -> Message {
    to_client(MessageType::PipelineOutput, rpid, pid, clixml::to_clixml(value))
}

/// ERROR_RECORD (a non-terminating error).
pub fn error_record(rpid: Uuid, pid: Uuid, record: &ErrorRecord) -> Message {
    to_client(MessageType::ErrorRecord, rpid, pid, clixml::error_record_to_clixml(record))
}

/// The streams that carry an InformationalRecord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InformationalStream {
    Warning,
    Verbose,
    Debug,
}

/// WARNING_RECORD, VERBOSE_RECORD or DEBUG_RECORD with the given text.
pub fn informational_record(rpid: Uuid, pid: Uuid, stream: InformationalStream, text: &str) -> Message {
    let (message_type, record_type) = match stream {
        InformationalStream::Warning => (MessageType::Warning, "System.Management.Automation.WarningRecord"),
        InformationalStream::Verbose => (MessageType::Verbose, "System.Management.Automation.VerboseRecord"),
        InformationalStream::Debug => (MessageType::Debug, "System.Management.Automation.DebugRecord"),
    };
    let mut w = ClixmlWriter::new();
    let types = [record_type, "System.Management.Automation.InformationalRecord", "System.Object"];
    w.object(None, &types, Some(text), |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some("InformationalRecord_Message"), &PsValue::String(text.into()));
            w.value(Some("InformationalRecord_SerializeInvocationInfo"), &PsValue::Bool(false));
        });
    });
    to_client(message_type, rpid, pid, w.finish())
}

/// WARNING_RECORD with the given text.
pub fn warning_record(rpid: Uuid, pid: Uuid, text: &str) -> Message {
    informational_record(rpid, pid, InformationalStream::Warning, text)
}

/// INFORMATION_RECORD whose MessageData is the given text.
pub fn information_record(rpid: Uuid, pid: Uuid, text: &str) -> Message {
    let mut w = ClixmlWriter::new();
    let types = ["System.Management.Automation.InformationRecord", "System.Object"];
    w.object(None, &types, Some(text), |w| {
        w.members(MemberSet::Ms, |w| {
            w.value(Some("MessageData"), &PsValue::String(text.into()));
            w.value(Some("Source"), &PsValue::String(String::new()));
            w.value(Some("TimeGenerated"), &PsValue::DateTime("0001-01-01T00:00:00".into()));
            w.value(Some("Tags"), &PsValue::List(Vec::new()));
            w.value(Some("User"), &PsValue::String(String::new()));
            w.value(Some("Computer"), &PsValue::String(String::new()));
            w.value(Some("ProcessId"), &PsValue::UInt32(0));
            w.value(Some("NativeThreadId"), &PsValue::UInt32(0));
            w.value(Some("ManagedThreadId"), &PsValue::UInt32(0));
        });
    });
    to_client(MessageType::Information, rpid, pid, w.finish())
}

/// PIPELINE_STATE, with the terminating error when the pipeline failed.
pub fn pipeline_state(rpid: Uuid, pid: Uuid, state: PipelineState, error: Option<&ErrorRecord>) -> Message {
    to_client(MessageType::PipelineState, rpid, pid, state_body("PipelineState", state.as_i32(), error))
}

/// What the server sent, as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    SessionCapability(SessionCapability),
    /// The pool's private data (a dictionary, or `Null`).
    ApplicationPrivateData(PsValue),
    /// RUNSPACEPOOL_INIT_DATA; its content is not used.
    RunspacePoolInitData,
    RunspacePoolState {
        state: RunspacePoolState,
        error: Option<ErrorRecord>,
    },
    RunspaceAvailability {
        call_id: i64,
        response: PsValue,
    },
    PipelineOutput(PsValue),
    ErrorRecord(ErrorRecord),
    PipelineState {
        state: PipelineState,
        error: Option<ErrorRecord>,
    },
    Warning(String),
    Verbose(String),
    Debug(String),
    Information(String),
    /// Any other type (progress, host calls, …); the body is left undecoded.
    Other {
        message_type: MessageType,
        data: Vec<u8>,
    },
}

impl ServerMessage {
    pub fn parse(msg: &Message) -> Result<Self, PsrpError> {
        let t = msg.message_type;
        Ok(match t {
            MessageType::SessionCapability => Self::SessionCapability(SessionCapability::from_value(&msg.value()?)?),
            MessageType::ApplicationPrivateData => {
                let v = msg.value()?;
                let data = object(&v, "APPLICATION_PRIVATE_DATA")?.get("ApplicationPrivateData").cloned();
                Self::ApplicationPrivateData(data.unwrap_or(PsValue::Null))
            }
            MessageType::RunspacePoolInitData => Self::RunspacePoolInitData,
            MessageType::RunspacePoolState => {
                let v = msg.value()?;
                let obj = object(&v, "RUNSPACEPOOL_STATE")?;
                let state = RunspacePoolState::from_i32(int_prop(obj, "RunspaceState", "RUNSPACEPOOL_STATE")?);
                Self::RunspacePoolState { state, error: state_error(obj) }
            }
            MessageType::RunspaceAvailability => {
                let v = msg.value()?;
                let obj = object(&v, "RUNSPACE_AVAILABILITY")?;
                let call_id = obj
                    .get("ci")
                    .and_then(PsValue::as_i64)
                    .ok_or_else(|| content("RUNSPACE_AVAILABILITY without ci"))?;
                let response = obj.get("SetMinMaxRunspacesResponse").cloned().unwrap_or(PsValue::Null);
                Self::RunspaceAvailability { call_id, response }
            }
            MessageType::PipelineOutput => Self::PipelineOutput(msg.value()?),
            MessageType::ErrorRecord => Self::ErrorRecord(
                clixml::error_record_from_value(&msg.value()?).ok_or_else(|| content("ERROR_RECORD is null"))?,
            ),
            MessageType::PipelineState => {
                let v = msg.value()?;
                let obj = object(&v, "PIPELINE_STATE")?;
                let state = PipelineState::from_i32(int_prop(obj, "PipelineState", "PIPELINE_STATE")?);
                Self::PipelineState { state, error: state_error(obj) }
            }
            MessageType::Warning => Self::Warning(informational_text(&msg.value()?)),
            MessageType::Verbose => Self::Verbose(informational_text(&msg.value()?)),
            MessageType::Debug => Self::Debug(informational_text(&msg.value()?)),
            MessageType::Information => Self::Information(information_text(&msg.value()?)),
            other => Self::Other { message_type: other, data: msg.data.clone() },
        })
    }
}

/// The text of a WARNING/VERBOSE/DEBUG record: `InformationalRecord_Message`, else its
/// ToString, else the value's own text (servers of protocol 2.0 may send a bare string).
fn informational_text(v: &PsValue) -> String {
    match v {
        PsValue::Object(o) => match o.get("InformationalRecord_Message") {
            Some(m) if !matches!(m, PsValue::Null) => m.display(),
            _ => o.to_string.clone().unwrap_or_default(),
        },
        other => other.display(),
    }
}

/// The text of an INFORMATION record: its MessageData when that is a string, the `Message`
/// of a HostInformationMessage, else the MessageData's or the record's ToString.
fn information_text(v: &PsValue) -> String {
    let PsValue::Object(o) = v else { return v.display() };
    match o.get("MessageData") {
        Some(PsValue::Object(data)) => match data.get("Message") {
            Some(m) if !matches!(m, PsValue::Null) => m.display(),
            _ => data.to_string.clone().or_else(|| o.to_string.clone()).unwrap_or_default(),
        },
        Some(PsValue::Null) | None => o.to_string.clone().unwrap_or_default(),
        Some(other) => other.display(),
    }
}
