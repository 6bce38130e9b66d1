//! CLIXML, the PowerShell serialization format of MS-PSRP 2.2.5, over the [`PsValue`] model.
//!
//! Sans-IO: bytes in, values out, and back. One PSRP message body is one document; decode
//! each message on its own ([`from_clixml`]), so RefIds never leak between messages and a long
//! output stream costs time linear in its size.
//!
//! [`PsValue`]: crate::remote::PsValue

mod de;
mod error_record;
mod escape;
mod ser;

pub use de::{from_clixml, from_clixml_all, from_clixml_with, DecodeLimits};
pub use error_record::{
    error_category_name, error_category_value, error_record_from_value, error_record_to_clixml, write_error_record,
};
pub use escape::{decode_string, encode_string};
pub use ser::{to_clixml, ClixmlWriter, MemberSet, DICT_TYPE_NAMES, ENUM_BASE_TYPE_NAMES, LIST_TYPE_NAMES};

/// Why a CLIXML document was refused. Decoding never panics; every malformed input ends here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClixmlError {
    /// Not well-formed XML (or not UTF-8).
    #[error("CLIXML is not well-formed XML: {0}")]
    Xml(String),
    /// Well-formed XML that is not valid CLIXML (unknown element, bad number, dangling Ref…).
    #[error("invalid CLIXML: {0}")]
    Invalid(String),
    /// Values nested deeper than [`DecodeLimits::max_depth`].
    #[error("CLIXML nests values deeper than {0} levels")]
    TooDeep(usize),
    /// Over one of the [`DecodeLimits`] size limits.
    #[error("CLIXML exceeds the {0} limit")]
    TooLarge(&'static str),
}

#[cfg(test)]
mod tests;
