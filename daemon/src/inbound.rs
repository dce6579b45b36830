//! The daemon-wide budget for message bodies being received, and the frame decoder that
//! enforces it.
//!
//! Each connection may send messages up to `max_message_size` (16 MiB), but many connections
//! each holding a body just short of it would together take gigabytes. Every body is therefore
//! counted, from the moment its header announces its length until the message has been parsed,
//! against one [`InboundBudget`] (`[daemon] inbound_budget`). A body that does not fit is not
//! buffered at all: its bytes are read and thrown away as they arrive, and the connection gets
//! one `Overloaded` error (id `null`, since the id is inside the body nobody read). The
//! connection stays usable: framing is intact, because the header said how much to skip.
//!
//! Bodies of up to [`UNCOUNTED_BODY`] bytes are not counted: a connection reads one message at a
//! time, so they cost at most `max_connections` × 64 KiB together, and the requests of healthy
//! clients are that small — a few large messages filling the budget never lock everybody out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crush_protocol::{FrameError, LspCodec};

/// Bodies up to this size are read without taking from the budget (see the module comment).
pub const UNCOUNTED_BODY: usize = 64 * 1024;

/// The read buffer a connection skips a refused body through: large enough that skipping takes
/// few reads, small enough that it costs nothing.
const SKIP_BUFFER: usize = 64 * 1024;

/// Bytes of message bodies held on every connection together, against one limit.
#[derive(Debug)]
pub struct InboundBudget {
    max: usize,
    used: AtomicUsize,
}

impl InboundBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` from the budget, or `None` when they do not fit. A small body takes nothing.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        if bytes <= UNCOUNTED_BODY {
            return Some(Reservation {
                budget: self.clone(),
                bytes: 0,
            });
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let next = used.checked_add(bytes).filter(|n| *n <= self.max)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<InboundBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What the decoder yields.
#[derive(Debug)]
pub enum Inbound {
    /// A whole body, with its share of the budget (held until the message is parsed).
    Body(Bytes, Reservation),
    /// A body of `len` bytes that did not fit in the budget: yielded as soon as that is known,
    /// so the client hears at once; its bytes are then skipped as they arrive.
    Refused { len: usize },
}

/// [`LspCodec`] with every body counted against an [`InboundBudget`].
#[derive(Debug)]
pub struct BudgetedCodec {
    inner: LspCodec,
    budget: Arc<InboundBudget>,
    /// The budget held for the body being received.
    held: Option<Reservation>,
    /// Bytes of a refused body still to be skipped.
    skipping: Option<usize>,
}

impl BudgetedCodec {
    pub fn new(inner: LspCodec, budget: Arc<InboundBudget>) -> Self {
        Self {
            inner,
            budget,
            held: None,
            skipping: None,
        }
    }

    /// Whether a message has been started but not finished (see [`LspCodec::in_frame`]); a
    /// body being skipped counts, so `frame_timeout` applies to it too.
    pub fn in_frame(&self, buffered: &[u8]) -> bool {
        self.skipping.is_some() || self.inner.in_frame(buffered)
    }

    fn finish(&mut self, body: Bytes) -> Inbound {
        let held = self.held.take();
        match held.or_else(|| self.budget.try_reserve(body.len())) {
            Some(r) => Inbound::Body(body, r),
            None => Inbound::Refused { len: body.len() },
        }
    }
}

impl Decoder for BudgetedCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        if let Some(left) = self.skipping {
            let n = left.min(src.len());
            src.advance(n);
            if n < left {
                self.skipping = Some(left - n);
                return Ok(None);
            }
            self.skipping = None;
        }
        if let Some(body) = self.inner.decode(src)? {
            return Ok(Some(self.finish(body)));
        }
        if self.held.is_none()
            && let Some(len) = self.inner.pending_body()
        {
            match self.budget.try_reserve(len) {
                Some(r) => self.held = Some(r),
                None => {
                    // Everything buffered belongs to this body (it is incomplete): drop it and
                    // the room reserved for the rest, and skip what is still to come.
                    self.inner.abandon_body();
                    self.skipping = Some(len - src.len());
                    *src = BytesMut::with_capacity(SKIP_BUFFER);
                    return Ok(Some(Inbound::Refused { len }));
                }
            }
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        if self.skipping.is_some() {
            // The peer left in the middle of a refused body.
            self.skipping = None;
            src.clear();
            return Err(FrameError::Truncated);
        }
        let body = self.inner.decode_eof(src);
        if body.is_err() || matches!(body, Ok(None)) {
            self.held = None;
        }
        Ok(body?.map(|b| self.finish(b)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crush_protocol::codec::frame;

    fn decode_all(codec: &mut BudgetedCodec, bytes: &[u8], step: usize) -> Vec<Inbound> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                out.push(item);
            }
        }
        out
    }

    const K: usize = UNCOUNTED_BODY;

    #[test]
    fn a_body_past_the_budget_is_skipped_and_the_next_message_still_decodes() {
        let budget = InboundBudget::new(2 * K);
        let mut codec = BudgetedCodec::new(LspCodec::new(1 << 20), budget.clone());
        let big = vec![b'x'; 4 * K];
        let mut bytes = frame(&big);
        bytes.extend(frame(br#"{"a":1}"#));
        for step in [1, 7, 4096, 1 << 20] {
            let out = decode_all(&mut codec, &bytes, step);
            assert_eq!(out.len(), 2, "step {step}");
            assert!(
                matches!(out[0], Inbound::Refused { len } if len == 4 * K),
                "{:?}",
                out[0]
            );
            match &out[1] {
                Inbound::Body(b, _) => assert_eq!(&b[..], br#"{"a":1}"#),
                other => panic!("{other:?}"),
            }
            drop(out);
            assert_eq!(budget.used(), 0, "everything given back");
        }
    }

    #[test]
    fn a_body_holds_its_share_until_dropped_and_others_wait_their_turn() {
        let budget = InboundBudget::new(2 * K);
        let mut a = BudgetedCodec::new(LspCodec::new(1 << 20), budget.clone());
        let mut b = BudgetedCodec::new(LspCodec::new(1 << 20), budget.clone());
        let size = K + K / 2;
        let f = frame(&vec![b'y'; size]);
        // `a` has its header and half its body: its whole length is held.
        let mut abuf = BytesMut::from(&f[..f.len() - size / 2]);
        assert!(a.decode(&mut abuf).unwrap().is_none());
        assert_eq!(budget.used(), size);
        // `b`'s body does not fit beside it; a small message still does.
        let mut bytes = f.clone();
        bytes.extend(frame(br#"{"small":true}"#));
        let out = decode_all(&mut b, &bytes, 4096);
        assert!(
            matches!(out[..], [Inbound::Refused { len }, Inbound::Body(..)] if len == size),
            "{out:?}"
        );
        drop(out);
        abuf.extend_from_slice(&f[f.len() - size / 2..]);
        let got = a.decode(&mut abuf).unwrap().unwrap();
        assert_eq!(budget.used(), size);
        drop(got);
        assert_eq!(budget.used(), 0);
        let out = decode_all(&mut b, &f, 4096);
        assert!(matches!(out[..], [Inbound::Body(..)]), "{out:?}");
    }
}
