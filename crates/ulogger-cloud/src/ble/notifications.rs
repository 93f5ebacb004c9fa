//! The device's notifications, as a pull receives them: on the sockets
//! BlueZ hands out (`AcquireNotify`), or as D-Bus signals when it will
//! not.
//!
//! On the sockets, a chunk is read straight into a buffer kept for the
//! whole transfer: no allocation per chunk (bluer's `recv` allocates an
//! MTU-sized `Vec` for each), and only the socket that is ready is read.
//!
//! The sockets are taken over from bluer as tokio's own
//! ([`adopt`]): tokio forgets that a socket is readable only when a read
//! finds it empty, which would cost each chunk a second `recv` failing
//! with `EAGAIN`. The device is stop-and-wait: after a chunk accepted in
//! order it sends nothing before our ack, so the pull says so
//! ([`Notifications::quiet`]) and the readiness is dropped without a
//! system call. After any other datagram (a duplicate, one out of order)
//! the next read is a real one, so a datagram queued behind it is never
//! left unread. bluer lends the socket only as a raw descriptor number;
//! it is duplicated with `pidfd_getfd` (Linux 5.6), which gives an owned
//! descriptor without `unsafe`. Where the kernel refuses, bluer's reader
//! is kept and each chunk pays the empty `recv` (decision 49).

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use bluer::gatt::CharacteristicReader;
use futures_util::stream::{Stream, StreamExt};
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::UnixDatagram;

use crate::wire::Characteristic;

/// The largest ATT MTU (Bluetooth Core 5.x, Vol 3 Part F 3.2.9): no
/// notification is longer.
const LARGEST_MTU: usize = 517;

/// Where a pull's notifications come from.
pub(super) enum Notifications {
    /// `log_data`'s and `core_dump_data`'s acquired sockets, taken over.
    Owned {
        logs: UnixDatagram,
        dumps: UnixDatagram,
        /// The last datagram read; at least the MTU long.
        buf: Box<[u8]>,
        /// The socket the last datagram came from.
        last: Option<Characteristic>,
    },
    /// `log_data`'s and `core_dump_data`'s acquired sockets, bluer's.
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
    /// bluer's acquired sockets, taken over where the kernel allows it.
    /// Must run on the runtime that will read them.
    pub(super) fn sockets(
        logs: CharacteristicReader,
        dumps: CharacteristicReader,
    ) -> Notifications {
        let len = LARGEST_MTU.max(logs.mtu()).max(dumps.mtu());
        match adopt(&logs, &dumps) {
            Ok((owned_logs, owned_dumps)) => {
                // Closes bluer's descriptors; ours keep the sockets open.
                drop((logs, dumps));
                return Notifications::Owned {
                    logs: owned_logs,
                    dumps: owned_dumps,
                    buf: vec![0; len].into_boxed_slice(),
                    last: None,
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "the notify sockets stay bluer's: each chunk costs an empty read");
            }
        }
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
            Notifications::Owned {
                logs,
                dumps,
                buf,
                last,
            } => {
                let (from, len) = first_datagram(buf, [&*logs, &*dumps], |socket, cx, read| {
                    socket.poll_recv(cx, read)
                })
                .await?;
                *last = Some(from);
                // An empty read is the socket's end: the link went down.
                (len > 0).then(|| (from, &buf[..len]))
            }
            Notifications::Sockets { logs, dumps, buf } => {
                let (from, len) =
                    first_datagram(buf, [&mut *logs, &mut *dumps], |socket, cx, read| {
                        Pin::new(socket).poll_read(cx, read)
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

    /// Says the device sends nothing more until our next ack: the last
    /// notification was a chunk accepted in order (stop and wait). Its
    /// socket's readiness is dropped, sparing the read that would find
    /// it empty. Call it for nothing else: a datagram queued behind
    /// another would wait for the next one, or for the stall timer.
    pub(super) fn quiet(&mut self) {
        if let Notifications::Owned {
            logs, dumps, last, ..
        } = self
        {
            let socket = match last.take() {
                Some(Characteristic::LogData) => &*logs,
                Some(Characteristic::CoreDumpData) => &*dumps,
                _ => return,
            };
            // The closure's "would block" is what clears the readiness;
            // a readiness newer than the read is kept by tokio.
            let _ = socket.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }
}

/// The first datagram either socket (`log_data`'s, then
/// `core_dump_data`'s) has, read into `buf` by `poll`: where it came from
/// and its length; `None` at a read error.
async fn first_datagram<S>(
    buf: &mut [u8],
    mut sockets: [S; 2],
    mut poll: impl FnMut(&mut S, &mut Context<'_>, &mut ReadBuf<'_>) -> Poll<io::Result<()>>,
) -> Option<(Characteristic, usize)> {
    std::future::poll_fn(|cx| {
        let from = [Characteristic::LogData, Characteristic::CoreDumpData];
        for (from, socket) in from.into_iter().zip(sockets.iter_mut()) {
            let mut read = ReadBuf::new(buf);
            match poll(socket, cx, &mut read) {
                Poll::Ready(Ok(())) => return Poll::Ready(Some((from, read.filled().len()))),
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Both readers' sockets, as tokio sockets of our own on this runtime:
/// each descriptor duplicated through this process's pidfd.
fn adopt(
    logs: &CharacteristicReader,
    dumps: &CharacteristicReader,
) -> io::Result<(UnixDatagram, UnixDatagram)> {
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};

    // Opened for each pull, never kept: a pidfd kept across a `fork`
    // would name the parent.
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty())?;
    let take = |reader: &CharacteristicReader| -> io::Result<UnixDatagram> {
        let fd = pidfd_getfd(&pidfd, reader.as_raw_fd(), PidfdGetfdFlags::empty())?;
        // The same open socket (bluer's is non-blocking already).
        let socket = std::os::unix::net::UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        UnixDatagram::from_std(socket)
    };
    Ok((take(logs)?, take(dumps)?))
}
