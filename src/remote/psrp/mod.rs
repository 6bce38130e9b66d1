//! The PowerShell Remoting Protocol (MS-PSRP) framing: fragments, messages and the message
//! bodies the broker needs, sans-IO. The WS-Management transport carries the fragment bytes.
//!
//! Sending: build a [`Message`] (see [`messages`]), [`Message::encode`] it, cut it with a
//! [`Fragmenter`]. Receiving: feed stream bytes to a [`Defragmenter`], [`Message::decode`] each
//! completed message, then [`ServerMessage::parse`] (client) or [`ClientMessage::parse`]
//! (server simulator).

pub mod fragment;
pub mod message;
pub mod messages;

pub use fragment::{Defragmenter, Fragment, Fragmenter, HEADER_LEN};
pub use message::{Destination, Message, MessageType, MESSAGE_HEADER_LEN};
pub use messages::{
    ClientMessage, CreatePipeline, InitRunspacePool, PipelineState, RunspacePoolState, ServerMessage, SessionCapability,
};

use crate::remote::clixml::ClixmlError;

/// Why PSRP bytes were refused. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsrpError {
    #[error("malformed PSRP fragment stream: {0}")]
    Fragment(String),
    #[error("PSRP input too large: {0}")]
    TooLarge(String),
    #[error("malformed PSRP message: {0}")]
    Message(String),
    #[error(transparent)]
    Clixml(#[from] ClixmlError),
    #[error("unexpected PSRP message content: {0}")]
    Content(String),
}

#[cfg(test)]
mod tests;
