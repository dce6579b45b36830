//! Byte-stream plumbing shared by the daemon and its clients: one stream used from two tasks
//! (a reader and a writer), and the writer loop that drains a connection's outbound queue into
//! LSP frames.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::codec::LspCodec;

/// One end of a stream shared by a reader task and a writer task. Streams whose shared
/// reference reads and writes (`&T: AsyncRead + AsyncWrite`, as interprocess's local sockets do)
/// need no lock to be used from both; interprocess deprecates its own `split` for exactly this.
#[derive(Debug)]
pub struct SharedHalf<T>(pub Arc<T>);

impl<T> SharedHalf<T> {
    /// Two halves of one stream.
    pub fn pair(stream: T) -> (Self, Self) {
        let shared = Arc::new(stream);
        (Self(shared.clone()), Self(shared))
    }
}

impl<T> AsyncRead for SharedHalf<T>
where
    for<'a> &'a T: AsyncRead,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl<T> AsyncWrite for SharedHalf<T>
where
    for<'a> &'a T: AsyncWrite,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}

/// Writes every message from `rx` as an LSP frame, batching whatever is already queued into one
/// flush. Ends when `rx` closes, on a write error, or when `close` fires — then it still writes
/// what was queued before returning, so a last answer is not lost.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    write: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    close: CancellationToken,
) -> std::io::Result<()> {
    use futures::SinkExt;
    let mut sink = FramedWrite::new(write, LspCodec::default());
    loop {
        let next = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = close.cancelled() => None,
        };
        let Some(first) = next else { break };
        sink.feed(first).await.map_err(to_io)?;
        while let Ok(more) = rx.try_recv() {
            sink.feed(more).await.map_err(to_io)?;
        }
        sink.flush().await.map_err(to_io)?;
    }
    while let Ok(more) = rx.try_recv() {
        sink.feed(more).await.map_err(to_io)?;
    }
    sink.flush().await.map_err(to_io)?;
    Ok(())
}

fn to_io(e: crate::codec::FrameError) -> std::io::Error {
    match e {
        crate::codec::FrameError::Io(e) => e,
        other => std::io::Error::other(other),
    }
}
