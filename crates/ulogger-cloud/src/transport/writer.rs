//! The connection's write side, shared by the driver and the callers.
//!
//! Every byte for the broker goes through `out`, in order, so that
//! packets never interleave whoever writes them. `out` is a list of
//! chunks (`super::chunks`), written with vectored writes: payloads are
//! not copied into a packet buffer first. The driver writes with
//! its own waker and may wait for the socket; a caller whose publish may
//! go at once (see `session`) writes it itself, without waiting: if the
//! socket does not take all of it at once, the rest stays in `out` and
//! the caller wakes the driver to finish. A caller writes only while the
//! driver is not waiting on the socket, so it never displaces the
//! driver's waker.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncWrite, WriteHalf};

use super::chunks::{Chunks, MAX_SLICES};
use super::connect::Stream;

/// What one step of writing did.
pub(crate) enum Step {
    /// Some bytes went; there may be more to write or flush.
    Progress,
    /// Everything is written and flushed.
    Done,
}

/// See the module documentation.
pub(crate) struct Writer {
    stream: Option<WriteHalf<Box<dyn Stream>>>,
    /// Which connection `stream` is (see `Session::generation`).
    generation: u64,
    /// Bytes not yet taken by the stream, oldest first.
    out: Chunks,
    /// Bytes taken by the stream may still sit in its (TLS) buffer.
    unflushed: bool,
    /// The driver's waker is registered with the stream.
    driver_waiting: bool,
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            stream: None,
            generation: 0,
            out: Chunks::default(),
            unflushed: false,
            driver_waiting: false,
        }
    }

    /// Starts writing on connection `generation`.
    pub fn attach(&mut self, stream: WriteHalf<Box<dyn Stream>>, generation: u64) {
        self.stream = Some(stream);
        self.generation = generation;
        self.out.clear();
        self.unflushed = false;
        self.driver_waiting = false;
    }

    /// Ends the connection's write side; what was not written is dropped
    /// (publishes among it are re-sent from the session after reconnect).
    pub fn detach(&mut self) -> Option<WriteHalf<Box<dyn Stream>>> {
        self.out.clear();
        self.unflushed = false;
        self.driver_waiting = false;
        self.stream.take()
    }

    /// Something is left to write or flush.
    pub fn pending(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    /// Appends `chunks` (leaving it empty) after what is already queued.
    pub fn push(&mut self, chunks: &mut Chunks) {
        self.out.append(chunks);
    }

    /// The driver's step: writes some of `out`, or flushes once all of it
    /// is written.
    pub fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
        let step = self.poll_once(cx);
        self.driver_waiting = step.is_pending();
        step
    }

    /// A caller's write of `chunks`, encoded for connection `generation`,
    /// without waiting. Returns true when they are written and flushed (or
    /// belong to a connection that is gone, whose publishes are re-sent
    /// from the session); false when the driver must finish the job.
    pub fn write_now(&mut self, chunks: &mut Chunks, generation: u64) -> bool {
        if self.stream.is_none() || generation != self.generation {
            return true;
        }
        let busy = self.driver_waiting || self.pending();
        self.push(chunks);
        if busy {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match self.poll_once(&mut cx) {
                Poll::Ready(Ok(Step::Progress)) => {}
                Poll::Ready(Ok(Step::Done)) => return true,
                // The driver meets the error again and reports it; or it
                // waits for the socket with a waker of its own.
                Poll::Ready(Err(_)) | Poll::Pending => return false,
            }
        }
    }

    fn poll_once(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(Step::Done));
        };
        if !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.out.slices(&mut slices);
            return match Pin::new(stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection takes no more bytes",
                ))),
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    self.unflushed = true;
                    Poll::Ready(Ok(Step::Progress))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        if self.unflushed {
            match Pin::new(stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(Step::Done))
    }
}
