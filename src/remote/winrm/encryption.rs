//! WinRM message encryption over HTTP (MS-WSMV 2.2.9.1, "Encrypted Message Types"): once an
//! NTLM (or Kerberos) security context is established on a connection, every SOAP body travels
//! sealed with that context, framed as
//!
//! ```text
//! Content-Type: multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";boundary="Encrypted Boundary"
//!
//! --Encrypted Boundary\r\n
//! \tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n
//! \tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=<plain length>\r\n
//! --Encrypted Boundary\r\n
//! \tContent-Type: application/octet-stream\r\n
//! <u32 LE signature length><signature><sealed SOAP>--Encrypted Boundary--\r\n
//! ```
//!
//! The signature carries the context's sequence number, so the two sides must seal and unseal in
//! the same order: one conversation, one request at a time. Both the connector and the simulator
//! use this module; the cryptography is the `sspi` crate's.

use sspi::{EncryptionFlags, SecurityBufferRef, Sspi};

/// The boundary Windows and pypsrp use (some Exchange servers put a space after `--`).
pub(crate) const BOUNDARY: &str = "Encrypted Boundary";
/// The protocol of an SPNEGO (NTLM or Negotiate) sealed conversation.
pub(crate) const PROTOCOL_SPNEGO: &str = "application/HTTP-SPNEGO-session-encrypted";
/// The protocol of a conversation logged on with `Authorization: Kerberos`.
pub(crate) const PROTOCOL_KERBEROS: &str = "application/HTTP-Kerberos-session-encrypted";
/// What the sealed body was before sealing.
const ORIGINAL_TYPE: &str = "application/soap+xml;charset=UTF-8";

/// Why a sealed body could not be read (or a body could not be sealed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncryptionError {
    #[error("the encrypted message is not framed as MS-WSMV specifies: {0}")]
    Framing(String),
    #[error("the encrypted message does not verify: {0}")]
    Crypto(String),
}

/// True when a `Content-Type` says the body is sealed.
pub(crate) fn is_encrypted(content_type: &str) -> bool {
    let ct = content_type.trim_start().to_ascii_lowercase();
    ct.starts_with("multipart/encrypted") || ct.starts_with("multipart/x-multi-encrypted")
}

/// The `Content-Type` of a sealed body.
pub(crate) fn content_type(protocol: &str) -> String {
    format!("multipart/encrypted;protocol=\"{protocol}\";boundary=\"{BOUNDARY}\"")
}

/// Seals `plain` with `context` and frames it: the body of a request or an answer.
pub(crate) fn seal<S: Sspi>(context: &mut S, protocol: &str, plain: &[u8]) -> Result<Vec<u8>, EncryptionError> {
    let trailer = context.query_context_sizes().map_err(crypto)?.security_trailer as usize;
    let mut signature = vec![0u8; trailer];
    let mut data = plain.to_vec();
    {
        let mut buffers = [SecurityBufferRef::token_buf(&mut signature), SecurityBufferRef::data_buf(&mut data)];
        context.encrypt_message(EncryptionFlags::empty(), &mut buffers).map_err(crypto)?;
        // The token buffer may have been shortened to the signature actually written.
        let written = buffers[0].data().len();
        signature.truncate(written);
    }
    Ok(frame(protocol, plain.len(), &signature, &data))
}

/// Reads a sealed body framed with `boundary` (from the `Content-Type`) and unseals every part
/// with `context`, checking each part's announced length.
pub(crate) fn unseal<S: Sspi>(context: &mut S, body: &[u8], boundary: &str) -> Result<Vec<u8>, EncryptionError> {
    let mut plain = Vec::new();
    for part in parse(body, boundary)? {
        let mut signature = part.signature;
        let mut data = part.sealed;
        let mut buffers = [SecurityBufferRef::token_buf(&mut signature), SecurityBufferRef::data_buf(&mut data)];
        context.decrypt_message(&mut buffers).map_err(crypto)?;
        let unsealed = buffers[1].data();
        if unsealed.len() != part.length {
            return Err(EncryptionError::Framing(format!(
                "the part announces {} bytes but holds {}",
                part.length,
                unsealed.len()
            )));
        }
        plain.extend_from_slice(unsealed);
    }
    Ok(plain)
}

/// The `boundary` parameter of a `Content-Type` (quoted or not).
pub(crate) fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_string())
    })
}

fn crypto(e: sspi::Error) -> EncryptionError {
    EncryptionError::Crypto(e.to_string())
}

/// The MIME framing of one sealed message.
fn frame(protocol: &str, plain_len: usize, signature: &[u8], sealed: &[u8]) -> Vec<u8> {
    let head = format!(
        "--{BOUNDARY}\r\n\tContent-Type: {protocol}\r\n\tOriginalContent: type={ORIGINAL_TYPE};Length={plain_len}\r\n\
         --{BOUNDARY}\r\n\tContent-Type: application/octet-stream\r\n"
    );
    let mut out = Vec::with_capacity(head.len() + 4 + signature.len() + sealed.len() + BOUNDARY.len() + 6);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&(signature.len() as u32).to_le_bytes());
    out.extend_from_slice(signature);
    out.extend_from_slice(sealed);
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

/// One sealed part: the plain length it announces, its signature and its sealed bytes.
#[derive(Debug, PartialEq, Eq)]
struct Part {
    length: usize,
    signature: Vec<u8>,
    sealed: Vec<u8>,
}

/// Splits a framed body into its parts. The sealed bytes are binary, so this walks the bytes:
/// a header part (with `Length=`), then a part whose payload is length-prefixed.
fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, EncryptionError> {
    let bad = |m: &str| EncryptionError::Framing(m.to_string());
    let mut rest = body;
    let mut parts = Vec::new();
    loop {
        rest = skip_boundary(rest, boundary).ok_or_else(|| bad("a part does not start with the boundary"))?;
        if rest.starts_with(b"--") {
            return if parts.is_empty() { Err(bad("no encrypted part")) } else { Ok(parts) };
        }
        // The header part: lines up to the next boundary.
        let next = find(rest, b"--").ok_or_else(|| bad("the header part does not end"))?;
        let header = std::str::from_utf8(&rest[..next]).map_err(|_| bad("the header part is not text"))?;
        let length = header
            .split(';')
            .find_map(|p| p.trim().strip_prefix("Length="))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .ok_or_else(|| bad("the header part has no Length"))?;
        rest = skip_boundary(&rest[next..], boundary).ok_or_else(|| bad("no data part"))?;
        // The data part: its Content-Type line, then the length-prefixed signature and the rest
        // up to the closing (or next) boundary.
        let line_end = find(rest, b"\r\n").ok_or_else(|| bad("the data part has no header line"))?;
        rest = &rest[line_end + 2..];
        if rest.len() < 4 {
            return Err(bad("the data part is cut short"));
        }
        let sig_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < sig_len {
            return Err(bad("the signature is cut short"));
        }
        let signature = rest[..sig_len].to_vec();
        rest = &rest[sig_len..];
        let end = rfind_boundary(rest, boundary).ok_or_else(|| bad("the data part does not end with the boundary"))?;
        parts.push(Part { length, signature, sealed: rest[..end].to_vec() });
        rest = &rest[end..];
    }
}

/// `rest` after `--<boundary>\r\n` (or `--<boundary>` followed by `--`), allowing the space some
/// Exchange servers put after `--`.
fn skip_boundary<'a>(rest: &'a [u8], boundary: &str) -> Option<&'a [u8]> {
    let rest = rest.strip_prefix(b"--")?;
    let rest = trim_spaces(rest);
    let rest = rest.strip_prefix(boundary.as_bytes())?;
    if rest.starts_with(b"--") {
        return Some(rest);
    }
    rest.strip_prefix(b"\r\n")
}

fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let Some(r) = b.strip_prefix(b" ") {
        b = r;
    }
    b
}

/// Where the next boundary line starts in a data part (the last part ends with the closing one).
fn rfind_boundary(data: &[u8], boundary: &str) -> Option<usize> {
    let close = format!("--{boundary}--\r\n");
    if data.ends_with(close.as_bytes()) {
        return Some(data.len() - close.len());
    }
    let spaced = format!("-- {boundary}--\r\n");
    if data.ends_with(spaced.as_bytes()) {
        return Some(data.len() - spaced.len());
    }
    // A multi-part body: the data runs up to the next part's boundary line.
    let next = format!("--{boundary}\r\n");
    find(data, next.as_bytes())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::winrm::ntlm::{tests::established_pair, NtlmClient};

    #[test]
    fn framing_is_what_windows_expects() {
        let body = frame(PROTOCOL_SPNEGO, 5, &[1, 2, 3], b"\x00\xffxy");
        let expected = b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\
\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=5\r\n--Encrypted Boundary\r\n\
\tContent-Type: application/octet-stream\r\n\x03\x00\x00\x00\x01\x02\x03\x00\xffxy--Encrypted Boundary--\r\n";
        assert_eq!(body, expected.to_vec());
        let parts = parse(&body, BOUNDARY).unwrap();
        assert_eq!(parts, vec![Part { length: 5, signature: vec![1, 2, 3], sealed: b"\x00\xffxy".to_vec() }]);
        assert_eq!(
            content_type(PROTOCOL_SPNEGO),
            r#"multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";boundary="Encrypted Boundary""#
        );
        assert_eq!(boundary_of(&content_type(PROTOCOL_SPNEGO)).as_deref(), Some(BOUNDARY));
        assert!(is_encrypted(&content_type(PROTOCOL_SPNEGO)));
        assert!(!is_encrypted("application/soap+xml;charset=UTF-8"));
    }

    #[test]
    fn exchange_style_spaced_boundaries_are_read() {
        let body = frame(PROTOCOL_SPNEGO, 2, &[9], b"ab");
        let spaced = String::from_utf8_lossy(&body).replace("--Encrypted", "-- Encrypted");
        let parts = parse(spaced.as_bytes(), BOUNDARY).unwrap();
        assert_eq!(parts[0].sealed, b"ab");
    }

    #[test]
    fn malformed_frames_are_refused_not_panicking() {
        for body in [&b""[..], b"--Encrypted Boundary\r\n", b"garbage", b"--Encrypted Boundary--\r\n"] {
            assert!(matches!(parse(body, BOUNDARY), Err(EncryptionError::Framing(_))), "{body:?}");
        }
        let mut cut = frame(PROTOCOL_SPNEGO, 2, &[1; 16], b"ab");
        cut.truncate(cut.len() - 30);
        assert!(parse(&cut, BOUNDARY).is_err());
    }

    #[test]
    fn sealed_messages_round_trip_in_order_and_hide_the_text() {
        let (mut client, mut server) = established_pair("alice@contoso.com", "pw", "pw");
        let soap = b"<s:Envelope>Get-Mailbox</s:Envelope>";
        for round in 0..3 {
            let sealed = seal(client.context(), PROTOCOL_SPNEGO, soap).unwrap();
            assert!(find(&sealed, b"Get-Mailbox").is_none(), "round {round}: the text travels sealed");
            assert_eq!(unseal(server.context(), &sealed, BOUNDARY).unwrap(), soap);
            let answer = format!("<answer n='{round}'/>");
            let sealed = seal(server.context(), PROTOCOL_SPNEGO, answer.as_bytes()).unwrap();
            assert_eq!(unseal(client.context(), &sealed, BOUNDARY).unwrap(), answer.as_bytes());
        }
    }

    #[test]
    fn a_replayed_or_tampered_message_does_not_verify() {
        let (mut client, mut server) = established_pair("alice@contoso.com", "pw", "pw");
        let first = seal(client.context(), PROTOCOL_SPNEGO, b"one").unwrap();
        assert_eq!(unseal(server.context(), &first, BOUNDARY).unwrap(), b"one");
        // The same message again: the sequence number is stale.
        assert!(matches!(unseal(server.context(), &first, BOUNDARY), Err(EncryptionError::Crypto(_))));

        let (mut client, mut server) = established_pair("alice@contoso.com", "pw", "pw");
        let mut body = seal(client.context(), PROTOCOL_SPNEGO, b"payload").unwrap();
        let at = body.len() - BOUNDARY.len() - 8;
        body[at] ^= 1;
        assert!(matches!(unseal(server.context(), &body, BOUNDARY), Err(EncryptionError::Crypto(_))));
        let _: &mut NtlmClient = &mut client;
    }
}
