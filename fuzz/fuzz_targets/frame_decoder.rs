//! The framing decoder on arbitrary bytes, cut into arbitrary chunks: it never panics, never
//! yields a body over its limit, never buffers without bound, and decodes the same frames (and
//! fails the same way) whether the bytes arrive in one read or byte by byte.
//!
//! Input layout: byte 0 picks the maximum message size and the chunking; the rest is the wire.
#![no_main]

use bytes::{Bytes, BytesMut};
use crush_protocol::codec::{LspCodec, MAX_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// What a decoder made of a byte stream: its frames, then whether (and how) it failed.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Bytes>,
    error: Option<String>,
}

fn run(max: usize, wire: &[u8], chunk_sizes: &mut dyn Iterator<Item = usize>) -> Outcome {
    let mut codec = LspCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = wire;
    // Generous but finite: what the decoder may hold is one header, one body and one read.
    let bound = 2 * (MAX_HEADER_SIZE + 4 + max + wire.len()) + 64;
    while !rest.is_empty() {
        let n = chunk_sizes
            .next()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= max,
                        "a {}-byte body passed a {max}-byte limit",
                        frame.len()
                    );
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(e.to_string()),
                    };
                }
            }
            assert!(
                buf.capacity() <= bound,
                "buffer grew to {} bytes",
                buf.capacity()
            );
        }
        assert!(
            buf.capacity() <= bound,
            "buffer grew to {} bytes",
            buf.capacity()
        );
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                return Outcome {
                    frames,
                    error: None,
                };
            }
            Err(e) => {
                return Outcome {
                    frames,
                    error: Some(e.to_string()),
                };
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctrl, wire)) = data.split_first() else {
        return;
    };
    let max = [
        16,
        1024,
        64 * 1024,
        crush_protocol::codec::DEFAULT_MAX_MESSAGE_SIZE,
    ][usize::from(ctrl & 3)];
    let whole = run(max, wire, &mut std::iter::empty());
    // Chunk sizes from a small generator seeded by the control byte: 1..=span bytes per read.
    let span = 1 + usize::from(ctrl >> 2) * 4;
    let mut state = u32::from(ctrl) | 1;
    let mut sizes = std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Some(1 + state as usize % span)
    });
    let chunked = run(max, wire, &mut sizes);
    assert_eq!(
        whole, chunked,
        "the result depends on how the bytes were split"
    );
    let bytewise = run(max, wire, &mut std::iter::repeat(1));
    assert_eq!(
        whole, bytewise,
        "the result depends on how the bytes were split"
    );
});
