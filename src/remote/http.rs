//! What the connectors that speak HTTP share: a failed exchange as a class of the taxonomy, and
//! the start of an unexpected body quoted for a message.

use crate::remote::{FaultClass, RemoteError};

/// Maps a transport failure: a timeout is [`FaultClass::Timeout`]; a request that could not be
/// built, or an endpoint whose TLS certificate is not trusted, is a protocol error (retrying
/// cannot help; the message says which); anything else (refused, reset, body cut short) lost
/// the connection.
pub(crate) fn transport_error(what: &str, e: reqwest::Error) -> RemoteError {
    let class = if e.is_timeout() {
        FaultClass::Timeout
    } else if e.is_builder() || tls_refused(&e) {
        FaultClass::Protocol
    } else {
        FaultClass::ConnectionLost
    };
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    RemoteError::new(class, message)
}

/// True when the TLS handshake failed on the endpoint's certificate (untrusted CA, wrong name,
/// expired): a configuration problem (`ca_file`), not a network one.
fn tls_refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if matches!(s.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        // io::Error hides its payload from source() (and may wrap another io::Error).
        source = match s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(payload) => Some(payload as &dyn std::error::Error),
            None => s.source(),
        };
    }
    false
}

/// The start of a body, whitespace collapsed, at most `max_chars` long, for an error message.
pub(crate) fn quote(text: &str, max_chars: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = collapsed.chars().take(max_chars).collect();
    if out.len() < collapsed.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_short_and_on_one_line() {
        assert_eq!(quote("a\n  b\tc", 10), "a b c");
        assert_eq!(quote("abcdef", 3), "abc…");
    }
}
