//! The device's notifications, as a pull receives them: on the sockets
//! BlueZ hands out (`AcquireNotify`), or as D-Bus signals when it will
//! not.
//!
//! On the sockets, a chunk is read straight into a buffer kept for the
//! whole transfer: no allocation per chunk (bluer's `recv` allocates an
//! MTU-sized `Vec` for each), and only the socket that is ready is read.
//!
//! Left on purpose: tokio forgets that a socket is readable only when a
//! read finds it empty, so each chunk also costs a `recv` that fails with
//! `EAGAIN`. A pull could skip it (the device is stop-and-wait and sends
//! nothing before our ack), but marking the socket not ready needs it as
//! tokio's own, which bluer does not lend: taking it over would be the
//! workspace's only `unsafe`, for a gain measured within the noise
//! (decision 42).

use std::pin::Pin;
use std::task::Poll;

use bluer::gatt::CharacteristicReader;
use futures_util::stream::{Stream, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};

use crate::wire::Characteristic;

/// The largest ATT MTU (Bluetooth Core 5.x, Vol 3 Part F 3.2.9): no
/// notification is longer.
const LARGEST_MTU: usize = 517;

/// Where a pull's notifications come from.
pub(super) enum Notifications {
    /// `log_data`'s and `core_dump_data`'s acquired sockets.
    Sockets {
        logs: CharacteristicReader,
        dumps: CharacteristicReader,
        /// The last datagram read; at least the MTU long, so that bluer
        /// reads into it directly.
        buf: Box<[u8]>,
    },
    /// Both characteristics' `PropertiesChanged` signals.
    Signals {
        stream: Pin<Box<dyn Stream<Item = (Characteristic, Vec<u8>)> + Send>>,
        /// The last value received.
        last: Vec<u8>,
    },
}

impl Notifications {
    /// bluer's acquired sockets.
    pub(super) fn sockets(
        logs: CharacteristicReader,
        dumps: CharacteristicReader,
    ) -> Notifications {
        let len = LARGEST_MTU.max(logs.mtu()).max(dumps.mtu());
        Notifications::Sockets {
            logs,
            dumps,
            buf: vec![0; len].into_boxed_slice(),
        }
    }

    /// The signals of two `notify` streams.
    pub(super) fn signals(
        logs: impl Stream<Item = Vec<u8>> + Send + 'static,
        dumps: impl Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Notifications {
        Notifications::Signals {
            stream: Box::pin(futures_util::stream::select(
                logs.map(|v| (Characteristic::LogData, v)),
                dumps.map(|v| (Characteristic::CoreDumpData, v)),
            )),
            last: Vec::new(),
        }
    }

    /// The next notification and where it came from; `None` once the
    /// link is gone (a socket's end, an error, the signals' end).
    pub(super) async fn next(&mut self) -> Option<(Characteristic, &[u8])> {
        match self {
            Notifications::Sockets { logs, dumps, buf } => {
                let (from, len) = std::future::poll_fn(|cx| {
                    for (from, socket) in [
                        (Characteristic::LogData, &mut *logs),
                        (Characteristic::CoreDumpData, &mut *dumps),
                    ] {
                        let mut read = ReadBuf::new(&mut buf[..]);
                        match Pin::new(socket).poll_read(cx, &mut read) {
                            Poll::Ready(Ok(())) => {
                                return Poll::Ready(Some((from, read.filled().len())));
                            }
                            Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Pending => {}
                        }
                    }
                    Poll::Pending
                })
                .await?;
                // An empty read is the socket's end: the link went down.
                (len > 0).then(|| (from, &buf[..len]))
            }
            Notifications::Signals { stream, last } => {
                let (from, value) = stream.next().await?;
                *last = value;
                Some((from, last.as_slice()))
            }
        }
    }
}
