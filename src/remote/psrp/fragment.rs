//! PSRP fragments (MS-PSRP 2.2.4): how messages are cut to fit WS-Management envelopes.
//!
//! Wire form, big-endian: ObjectId u64, FragmentId u64, flags u8 (`0x1` start, `0x2` end),
//! BlobLength u32, then the blob. Every fragment of one message shares the ObjectId; its
//! FragmentIds count up from 0. Fragments of different messages may interleave.

use super::PsrpError;
use std::collections::HashMap;

/// Bytes of a fragment header.
pub const HEADER_LEN: usize = 21;
const FLAG_START: u8 = 0x1;
const FLAG_END: u8 = 0x2;

/// One fragment of a PSRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub object_id: u64,
    pub fragment_id: u64,
    pub start: bool,
    pub end: bool,
    pub data: Vec<u8>,
}

impl Fragment {
    /// Appends the wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + self.data.len());
        out.extend_from_slice(&self.object_id.to_be_bytes());
        out.extend_from_slice(&self.fragment_id.to_be_bytes());
        let flags = if self.start { FLAG_START } else { 0 } | if self.end { FLAG_END } else { 0 };
        out.push(flags);
        // Blobs are built by the Fragmenter or decoded from a u32 length, so they fit.
        out.extend_from_slice(&u32::try_from(self.data.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&self.data);
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        self.encode_into(&mut out);
        out
    }

    /// Reads one fragment from the front of `input`: `Ok(None)` when `input` holds less than
    /// a whole fragment, else the fragment and the bytes it took.
    pub fn decode(input: &[u8], max_blob: usize) -> Result<Option<(Fragment, usize)>, PsrpError> {
        let Some(header) = input.get(..HEADER_LEN) else { return Ok(None) };
        let (header, len) = parse_header(header, max_blob)?;
        let Some(data) = input.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
        Ok(Some((Fragment { data: data.to_vec(), ..header }, HEADER_LEN + len)))
    }
}

fn parse_header(h: &[u8], max_blob: usize) -> Result<(Fragment, usize), PsrpError> {
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let object_id = be64(&h[0..8]);
    let fragment_id = be64(&h[8..16]);
    let flags = h[16];
    if flags & !(FLAG_START | FLAG_END) != 0 {
        return Err(PsrpError::Fragment(format!("unknown flags {flags:#04x}")));
    }
    let len = u32::from_be_bytes([h[17], h[18], h[19], h[20]]) as usize;
    if len > max_blob {
        return Err(PsrpError::TooLarge(format!("fragment blob of {len} bytes (limit {max_blob})")));
    }
    let frag = Fragment {
        object_id,
        fragment_id,
        start: flags & FLAG_START != 0,
        end: flags & FLAG_END != 0,
        data: Vec::new(),
    };
    Ok((frag, len))
}

/// Cuts messages into fragments of at most `max_fragment_bytes` each (header included), giving
/// each message the next ObjectId (starting at 1, as PowerShell does).
#[derive(Debug, Clone)]
pub struct Fragmenter {
    max_fragment_bytes: usize,
    next_object_id: u64,
}

impl Fragmenter {
    /// `max_fragment_bytes` must leave room for a header and one byte of data. Derive it from
    /// the negotiated MaxEnvelopeSize minus the SOAP envelope overhead, times 3/4 for base64.
    pub fn new(max_fragment_bytes: usize) -> Result<Self, PsrpError> {
        if max_fragment_bytes <= HEADER_LEN {
            return Err(PsrpError::Fragment(format!("max fragment size {max_fragment_bytes} leaves no room for data")));
        }
        Ok(Self { max_fragment_bytes, next_object_id: 1 })
    }

    pub fn max_fragment_bytes(&self) -> usize {
        self.max_fragment_bytes
    }

    /// The ObjectId the next message will get.
    pub fn next_object_id(&self) -> u64 {
        self.next_object_id
    }

    /// Splits one message into fragments (an empty message is one empty start+end fragment).
    pub fn fragment(&mut self, message: &[u8]) -> Vec<Fragment> {
        let object_id = self.next_object_id;
        self.next_object_id = self.next_object_id.wrapping_add(1);
        let chunk = (self.max_fragment_bytes - HEADER_LEN).min(u32::MAX as usize);
        if message.is_empty() {
            return vec![Fragment { object_id, fragment_id: 0, start: true, end: true, data: Vec::new() }];
        }
        let count = message.len().div_ceil(chunk);
        message
            .chunks(chunk)
            .enumerate()
            .map(|(i, data)| Fragment {
                object_id,
                fragment_id: i as u64,
                start: i == 0,
                end: i + 1 == count,
                data: data.to_vec(),
            })
            .collect()
    }

    /// [`Fragmenter::fragment`], each fragment in its wire form (one per envelope).
    pub fn fragment_encoded(&mut self, message: &[u8]) -> Vec<Vec<u8>> {
        self.fragment(message).iter().map(Fragment::encode).collect()
    }
}

#[derive(Debug)]
struct Partial {
    next_fragment_id: u64,
    data: Vec<u8>,
}

/// Reassembles messages from a stream of fragment bytes.
///
/// Accepts bytes in any slicing (a fragment may span pushes) and fragments of several
/// messages interleaved. Refuses, with an error and never a panic: a fragment of an unknown
/// message that is not a start, a second start for a message in progress, FragmentIds that
/// skip or repeat, unknown flags, a blob larger than `max_fragment_blob`, a message larger
/// than `max_message_bytes`, and more than `max_buffered_bytes` held at once. After an error
/// the stream is unusable: drop the defragmenter with the connection.
#[derive(Debug)]
pub struct Defragmenter {
    max_fragment_blob: usize,
    max_message_bytes: usize,
    max_buffered_bytes: usize,
    pending: Vec<u8>,
    partial: HashMap<u64, Partial>,
    buffered: usize,
}

impl Default for Defragmenter {
    fn default() -> Self {
        Self::new()
    }
}

impl Defragmenter {
    /// Limits: 1 MiB per fragment blob, 64 MiB per message, 128 MiB held in all.
    pub fn new() -> Self {
        Self::with_limits(1024 * 1024, 64 * 1024 * 1024, 128 * 1024 * 1024)
    }

    pub fn with_limits(max_fragment_blob: usize, max_message_bytes: usize, max_buffered_bytes: usize) -> Self {
        Self {
            max_fragment_blob,
            max_message_bytes,
            max_buffered_bytes,
            pending: Vec::new(),
            partial: HashMap::new(),
            buffered: 0,
        }
    }

    /// True when no partial fragment or message is held.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.partial.is_empty()
    }

    /// Bytes currently held (partial fragment bytes plus partial messages).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered + self.pending.len()
    }

    /// Feeds stream bytes; returns the messages they complete, in completion order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, PsrpError> {
        let mut out = Vec::new();
        if self.pending.is_empty() {
            let used = self.consume(bytes, &mut out)?;
            self.hold(&bytes[used..])?;
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(bytes);
            let used = self.consume(&pending, &mut out)?;
            pending.drain(..used);
            self.pending = pending;
            self.hold(&[])?;
        }
        Ok(out)
    }

    fn hold(&mut self, rest: &[u8]) -> Result<(), PsrpError> {
        self.pending.extend_from_slice(rest);
        if self.buffered_bytes() > self.max_buffered_bytes {
            return Err(PsrpError::TooLarge(format!("more than {} bytes buffered", self.max_buffered_bytes)));
        }
        Ok(())
    }

    fn consume(&mut self, mut input: &[u8], out: &mut Vec<Vec<u8>>) -> Result<usize, PsrpError> {
        let mut used = 0;
        while let Some((fragment, n)) = Fragment::decode(input, self.max_fragment_blob)? {
            input = &input[n..];
            used += n;
            if let Some(message) = self.push_fragment(fragment)? {
                out.push(message);
            }
        }
        // Check the header of an incomplete fragment now rather than after buffering its blob.
        if let Some(h) = input.get(..HEADER_LEN) {
            parse_header(h, self.max_fragment_blob)?;
        }
        Ok(used)
    }

    /// Feeds one decoded fragment; returns the message it completes, if any.
    pub fn push_fragment(&mut self, fragment: Fragment) -> Result<Option<Vec<u8>>, PsrpError> {
        let Fragment { object_id, fragment_id, start, end, data } = fragment;
        if data.len() > self.max_fragment_blob {
            return Err(PsrpError::TooLarge(format!("fragment blob of {} bytes", data.len())));
        }
        if start {
            if fragment_id != 0 {
                return Err(PsrpError::Fragment(format!("object {object_id}: start fragment has id {fragment_id}")));
            }
            if self.partial.contains_key(&object_id) {
                return Err(PsrpError::Fragment(format!("object {object_id}: restarted before its end")));
            }
            if data.len() > self.max_message_bytes {
                return Err(PsrpError::TooLarge(format!("message over {} bytes", self.max_message_bytes)));
            }
            if end {
                return Ok(Some(data));
            }
            self.buffered += data.len();
            self.partial.insert(object_id, Partial { next_fragment_id: 1, data });
        } else {
            let Some(p) = self.partial.get_mut(&object_id) else {
                return Err(PsrpError::Fragment(format!("object {object_id}: fragment {fragment_id} without a start")));
            };
            if fragment_id != p.next_fragment_id {
                return Err(PsrpError::Fragment(format!(
                    "object {object_id}: fragment {fragment_id} where {} was expected",
                    p.next_fragment_id
                )));
            }
            if p.data.len() + data.len() > self.max_message_bytes {
                return Err(PsrpError::TooLarge(format!("message over {} bytes", self.max_message_bytes)));
            }
            p.next_fragment_id += 1;
            p.data.extend_from_slice(&data);
            self.buffered += data.len();
            if end {
                let done = self.partial.remove(&object_id).map(|p| p.data).unwrap_or_default();
                self.buffered -= done.len();
                return Ok(Some(done));
            }
        }
        if self.buffered_bytes() > self.max_buffered_bytes {
            return Err(PsrpError::TooLarge(format!("more than {} bytes buffered", self.max_buffered_bytes)));
        }
        Ok(None)
    }
}
