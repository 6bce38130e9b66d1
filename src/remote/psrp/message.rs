//! PSRP messages (MS-PSRP 2.2.1): the unit a reassembled fragment stream carries.
//!
//! Wire form, little-endian: Destination u32, MessageType u32, RPID (16-byte GUID in .NET byte
//! order), PID (likewise; nil for runspace-pool messages), then the UTF-8 CLIXML body, which a
//! server may prefix with a BOM.

use super::PsrpError;
use crate::remote::clixml::{self, ClixmlError};
use crate::remote::value::PsValue;
use uuid::Uuid;

/// Bytes before the body.
pub const MESSAGE_HEADER_LEN: usize = 40;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Who a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Client,
    Server,
}

impl Destination {
    pub fn as_u32(self) -> u32 {
        match self {
            Destination::Client => 1,
            Destination::Server => 2,
        }
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Destination::Client),
            2 => Some(Destination::Server),
            _ => None,
        }
    }
}

macro_rules! message_types {
    ($($(#[$m:meta])* $name:ident = $value:expr,)*) => {
        /// A PSRP message type; values this code does not know are kept as `Unknown`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MessageType {
            $($(#[$m])* $name,)*
            Unknown(u32),
        }

        impl MessageType {
            pub fn as_u32(self) -> u32 {
                match self {
                    $(MessageType::$name => $value,)*
                    MessageType::Unknown(v) => v,
                }
            }

            pub fn from_u32(v: u32) -> Self {
                match v {
                    $($value => MessageType::$name,)*
                    other => MessageType::Unknown(other),
                }
            }
        }
    };
}

message_types! {
    SessionCapability = 0x0001_0002,
    InitRunspacePool = 0x0001_0004,
    PublicKey = 0x0001_0005,
    EncryptedSessionKey = 0x0001_0006,
    PublicKeyRequest = 0x0001_0007,
    ConnectRunspacePool = 0x0001_0008,
    SetMaxRunspaces = 0x0002_1002,
    SetMinRunspaces = 0x0002_1003,
    RunspaceAvailability = 0x0002_1004,
    RunspacePoolState = 0x0002_1005,
    CreatePipeline = 0x0002_1006,
    GetAvailableRunspaces = 0x0002_1007,
    UserEvent = 0x0002_1008,
    ApplicationPrivateData = 0x0002_1009,
    GetCommandMetadata = 0x0002_100A,
    RunspacePoolInitData = 0x0002_100B,
    ResetRunspaceState = 0x0002_100C,
    RunspacePoolHostCall = 0x0002_1100,
    RunspacePoolHostResponse = 0x0002_1101,
    PipelineInput = 0x0004_1002,
    EndOfPipelineInput = 0x0004_1003,
    PipelineOutput = 0x0004_1004,
    ErrorRecord = 0x0004_1005,
    PipelineState = 0x0004_1006,
    Debug = 0x0004_1007,
    Verbose = 0x0004_1008,
    Warning = 0x0004_1009,
    Progress = 0x0004_1010,
    Information = 0x0004_1011,
    PipelineHostCall = 0x0004_1100,
    PipelineHostResponse = 0x0004_1101,
}

/// One PSRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub destination: Destination,
    pub message_type: MessageType,
    /// The runspace pool (the WS-Management ShellId).
    pub rpid: Uuid,
    /// The pipeline (the CommandId); nil for runspace-pool messages.
    pub pid: Uuid,
    /// The CLIXML body, without a BOM.
    pub data: Vec<u8>,
}

impl Message {
    pub fn new(
        destination: Destination,
        message_type: MessageType,
        rpid: Uuid,
        pid: Uuid,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Self { destination, message_type, rpid, pid, data: data.into() }
    }

    /// The wire form (no BOM is written).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_HEADER_LEN + self.data.len());
        out.extend_from_slice(&self.destination.as_u32().to_le_bytes());
        out.extend_from_slice(&self.message_type.as_u32().to_le_bytes());
        out.extend_from_slice(&self.rpid.to_bytes_le());
        out.extend_from_slice(&self.pid.to_bytes_le());
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses the wire form; a UTF-8 BOM before the body is dropped.
    pub fn decode(bytes: &[u8]) -> Result<Message, PsrpError> {
        if bytes.len() < MESSAGE_HEADER_LEN {
            return Err(PsrpError::Message(format!("{} bytes is shorter than a message header", bytes.len())));
        }
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let guid = |b: &[u8]| {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Uuid::from_bytes_le(a)
        };
        let destination = Destination::from_u32(le32(&bytes[0..4]))
            .ok_or_else(|| PsrpError::Message(format!("unknown destination {}", le32(&bytes[0..4]))))?;
        let message_type = MessageType::from_u32(le32(&bytes[4..8]));
        let body = &bytes[MESSAGE_HEADER_LEN..];
        let body = body.strip_prefix(BOM).unwrap_or(body);
        Ok(Message {
            destination,
            message_type,
            rpid: guid(&bytes[8..24]),
            pid: guid(&bytes[24..40]),
            data: body.to_vec(),
        })
    }

    /// The body decoded as one CLIXML value.
    pub fn value(&self) -> Result<PsValue, ClixmlError> {
        clixml::from_clixml(&self.data)
    }
}
