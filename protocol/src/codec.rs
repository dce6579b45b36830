//! LSP base-protocol framing (`Content-Length: N\r\n\r\n<N bytes of UTF-8 JSON>`) as a
//! `tokio-util` codec. It owns the byte level only: what a frame is, how large it may be and
//! which header errors are fatal. JSON parsing happens one layer up (`message`), so a body that
//! is not JSON costs one error response and never the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum body size of one message: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The header block of one frame may not exceed this many bytes. Real headers are two short
/// lines; anything longer is garbage and would otherwise make us buffer without bound.
pub const MAX_HEADER_SIZE: usize = 8 * 1024;

/// Why a frame could not be read. Every variant except `Io` means the byte stream can no longer be
/// resynchronized, so the connection must be closed after reporting it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message header has no Content-Length")]
    MissingContentLength,
    #[error("Content-Length is not a valid length: {0:?}")]
    InvalidContentLength(String),
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("message header exceeds {MAX_HEADER_SIZE} bytes without a blank line")]
    HeaderTooLong,
    #[error("malformed header line: {0:?}")]
    MalformedHeader(String),
    #[error("unsupported Content-Type charset: {0:?} (only utf-8 is supported)")]
    UnsupportedCharset(String),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encoder and decoder for LSP-framed messages. Decoded items are the raw body bytes.
#[derive(Debug, Clone)]
pub struct LspCodec {
    max_message_size: usize,
    /// Body length of the frame whose header has been consumed but whose body has not fully
    /// arrived yet.
    pending_body: Option<usize>,
    /// How many bytes of the buffered header are known to hold no `\r\n\r\n`, so a header
    /// that arrives a byte at a time is scanned once, not once per byte.
    header_scanned: usize,
}

impl Default for LspCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl LspCodec {
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            pending_body: None,
            header_scanned: 0,
        }
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Whether a frame has been started but not finished: its header was read and its body has
    /// not fully arrived, or `buffered` (the undecoded input) holds the start of a header.
    /// Blank lines between messages do not count.
    pub fn in_frame(&self, buffered: &[u8]) -> bool {
        self.pending_body.is_some() || buffered.iter().any(|b| *b != b'\r' && *b != b'\n')
    }

    /// The body length of a frame whose header was read and whose body has not fully arrived.
    pub fn pending_body(&self) -> Option<usize> {
        self.pending_body
    }

    /// Gives up the frame whose body is pending (the caller will skip its bytes itself): the
    /// next `decode` expects a header. Returns the body's length.
    pub fn abandon_body(&mut self) -> Option<usize> {
        self.pending_body.take()
    }

    /// Parses a complete header block (without the terminating blank line).
    fn parse_headers(&self, block: &[u8]) -> Result<usize, FrameError> {
        let text = std::str::from_utf8(block).map_err(|_| {
            FrameError::MalformedHeader(String::from_utf8_lossy(block).into_owned())
        })?;
        let mut length = None;
        for line in text.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                return Err(FrameError::MalformedHeader(truncate(line)));
            };
            let name = name.trim();
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                // Only plain decimal digits: `+5`, `0x10` or `5 5` are garbage, not lengths.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FrameError::InvalidContentLength(truncate(value)));
                }
                let len: usize = value.parse().map_err(|_| FrameError::TooLarge {
                    len: usize::MAX,
                    max: self.max_message_size,
                })?;
                length = Some(len);
            } else if name.eq_ignore_ascii_case("content-type") {
                check_charset(value)?;
            } else if name.is_empty() {
                return Err(FrameError::MalformedHeader(truncate(line)));
            }
            // Other headers are ignored, as LSP allows.
        }
        let len = length.ok_or(FrameError::MissingContentLength)?;
        if len > self.max_message_size {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_message_size,
            });
        }
        Ok(len)
    }
}

fn check_charset(content_type: &str) -> Result<(), FrameError> {
    for param in content_type.split(';').skip(1) {
        if let Some((k, v)) = param.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
        {
            let v = v.trim().trim_matches('"');
            // `utf8` is accepted for backwards compatibility, as the LSP specification asks.
            if !(v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")) {
                return Err(FrameError::UnsupportedCharset(truncate(v)));
            }
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

impl Decoder for LspCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(len) = self.pending_body {
                if src.len() < len {
                    src.reserve(len - src.len());
                    return Ok(None);
                }
                self.pending_body = None;
                return Ok(Some(src.split_to(len).freeze()));
            }
            // Tolerate blank lines between messages (some clients send a trailing CRLF).
            while src.starts_with(b"\r\n") {
                src.advance(2);
                self.header_scanned = 0;
            }
            // The terminator may straddle what was scanned before: back up three bytes.
            let from = self.header_scanned.saturating_sub(3);
            let Some(end) = find_header_end(&src[from..]).map(|i| from + i) else {
                // Refuse once the terminator can no longer start within the limit. It may have
                // begun in the last bytes (`\r`, `\r\n`, `\r\n\r`), so those do not count yet;
                // else the verdict on a header near the limit would depend on how its bytes
                // were split.
                let partial = (1..=3)
                    .rev()
                    .find(|&k| src.ends_with(&b"\r\n\r\n"[..k]))
                    .unwrap_or(0);
                if src.len() - partial > MAX_HEADER_SIZE {
                    return Err(FrameError::HeaderTooLong);
                }
                self.header_scanned = src.len();
                return Ok(None);
            };
            self.header_scanned = 0;
            if end > MAX_HEADER_SIZE {
                return Err(FrameError::HeaderTooLong);
            }
            let len = self.parse_headers(&src[..end])?;
            src.advance(end + 4);
            self.pending_body = Some(len);
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && self.pending_body.is_none() => Ok(None),
            None => {
                // Bytes that end mid-frame are discarded; the peer is gone anyway.
                buf.clear();
                self.pending_body = None;
                self.header_scanned = 0;
                Err(FrameError::Truncated)
            }
        }
    }
}

impl Encoder<Bytes> for LspCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&body, dst);
        Ok(())
    }
}

/// Appends one framed message to `dst`. Outgoing messages are never refused for size here: the
/// peer enforces its own limit, and our outbound size policy lives with the connection.
pub fn encode_frame(body: &[u8], dst: &mut BytesMut) {
    let header = format!("Content-Length: {}\r\n\r\n", body.len());
    dst.reserve(header.len() + body.len());
    dst.put_slice(header.as_bytes());
    dst.put_slice(body);
}

/// Convenience for tests and tools: one framed message as bytes.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_frame(body, &mut dst);
    dst.to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut LspCodec, chunks: &[&[u8]]) -> Result<Vec<Bytes>, FrameError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf)? {
                out.push(frame);
            }
        }
        Ok(out)
    }

    #[test]
    fn decodes_one_frame_and_headers_in_any_case() {
        let mut c = LspCodec::default();
        let input = b"content-length: 2\r\nContent-Type: application/vscode-jsonrpc; charset=utf8\r\n\r\n{}";
        assert_eq!(
            decode_all(&mut c, &[input]).unwrap(),
            vec![Bytes::from_static(b"{}")]
        );
    }

    #[test]
    fn waits_for_the_whole_body() {
        let mut c = LspCodec::default();
        let frames = decode_all(&mut c, &[b"Content-Length: 4\r\n\r\n{}", b"[]"]).unwrap();
        assert_eq!(frames, vec![Bytes::from_static(b"{}[]")]);
    }

    #[test]
    fn header_errors_are_fatal_and_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"Content-Type: x\r\n\r\n{}", "no Content-Length"),
            (b"Content-Length: abc\r\n\r\n", "not a valid length"),
            (b"Content-Length: -1\r\n\r\n", "not a valid length"),
            (
                b"Content-Length: 99999999999999999999999\r\n\r\n",
                "exceeds the maximum",
            ),
            (b"garbage\r\n\r\n", "malformed header"),
            (
                b"Content-Length: 2\r\nContent-Type: text/x; charset=latin1\r\n\r\n",
                "charset",
            ),
        ];
        for (input, needle) in cases {
            let err = decode_all(&mut LspCodec::default(), &[input]).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }

    #[test]
    fn oversized_body_is_refused_before_it_is_buffered() {
        let mut c = LspCodec::new(10);
        let err = decode_all(&mut c, &[b"Content-Length: 11\r\n\r\n"]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 11, max: 10 }));
    }

    #[test]
    fn endless_header_is_refused() {
        let mut c = LspCodec::default();
        let junk = vec![b'a'; MAX_HEADER_SIZE + 1];
        assert!(matches!(
            decode_all(&mut c, &[&junk]),
            Err(FrameError::HeaderTooLong)
        ));
    }

    #[test]
    fn eof_mid_frame_is_truncation() {
        let mut c = LspCodec::default();
        let mut buf = BytesMut::from(&b"Content-Length: 10\r\n\r\n{}"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(matches!(c.decode_eof(&mut buf), Err(FrameError::Truncated)));
    }

    /// Regression (fuzz target `frame_decoder`, differential check): a header whose terminator
    /// starts at byte 8190..=8192 was accepted when it arrived in one read and refused as too
    /// long when it arrived in pieces, because the length check did not leave room for a
    /// terminator still in flight.
    #[test]
    fn header_at_the_size_limit_is_accepted_however_it_arrives() {
        for header_len in [MAX_HEADER_SIZE - 3, MAX_HEADER_SIZE - 1, MAX_HEADER_SIZE] {
            let line = b"Content-Length: 2\r\nX-Pad: ";
            let mut wire = line.to_vec();
            wire.resize(header_len, b'a');
            wire.extend_from_slice(b"\r\n\r\n{}");
            let whole = decode_all(&mut LspCodec::default(), &[&wire]).unwrap();
            assert_eq!(whole, vec![Bytes::from_static(b"{}")]);
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            let bytewise = decode_all(&mut LspCodec::default(), &bytes).unwrap();
            assert_eq!(
                bytewise, whole,
                "header of {header_len} bytes, byte by byte"
            );
            let (a, b) = wire.split_at(MAX_HEADER_SIZE + 1);
            assert_eq!(
                decode_all(&mut LspCodec::default(), &[a, b]).unwrap(),
                whole
            );
        }
        let mut over = b"Content-Length: 2\r\nX-Pad: ".to_vec();
        over.resize(MAX_HEADER_SIZE + 1, b'a');
        over.extend_from_slice(b"\r\n\r\n{}");
        let bytes: Vec<&[u8]> = over.chunks(1).collect();
        assert!(matches!(
            decode_all(&mut LspCodec::default(), &bytes),
            Err(FrameError::HeaderTooLong)
        ));
        assert!(matches!(
            decode_all(&mut LspCodec::default(), &[&over]),
            Err(FrameError::HeaderTooLong)
        ));
    }

    /// A header dripped in a byte at a time is scanned once overall: the terminator is still
    /// found when it straddles reads, and blank lines before a frame still reset the scan.
    #[test]
    fn header_split_anywhere_around_the_terminator() {
        let wire = b"\r\n\r\nContent-Length: 2\r\n\r\n{}\r\nContent-Length: 1\r\n\r\n1";
        for cut in 0..=wire.len() {
            for cut2 in cut..=wire.len() {
                let frames = decode_all(
                    &mut LspCodec::default(),
                    &[&wire[..cut], &wire[cut..cut2], &wire[cut2..]],
                )
                .unwrap();
                assert_eq!(
                    frames,
                    vec![Bytes::from_static(b"{}"), Bytes::from_static(b"1")]
                );
            }
        }
    }

    /// `data` cut at the given points (each taken modulo its length + 1).
    fn split<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(&data[prev..p]);
            prev = p;
        }
        chunks.push(&data[prev..]);
        chunks
    }

    proptest! {
        // Nothing on the wire can make the decoder panic or buffer past its limits, however
        // the bytes are split.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096),
                                       cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let mut c = LspCodec::new(1024);
            if let Ok(frames) = decode_all(&mut c, &split(&data, &cuts)) {
                for f in frames { prop_assert!(f.len() <= 1024); }
            }
        }

        // Valid frames decode to the same bodies whatever the split points.
        #[test]
        fn valid_frames_survive_any_split(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
                                          cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10)) {
            let mut wire = Vec::new();
            for b in &bodies { wire.extend_from_slice(&frame(b)); }
            let frames = decode_all(&mut LspCodec::default(), &split(&wire, &cuts)).unwrap();
            let got: Vec<Vec<u8>> = frames.into_iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(got, bodies);
        }
    }
}
