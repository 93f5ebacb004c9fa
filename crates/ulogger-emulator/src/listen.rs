//! Binding the emulator's TCP listeners (the broker's port and the HTTP
//! port) before its runtime runs them, so that `Emulator::start` can say
//! which address failed and report the bound ports (port 0 resolved);
//! and [`PortHold`], a broker port kept across the broker's absences.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

use crate::EmulatorError;

/// A loopback port held for brokers that come and go: while no emulator
/// listens on it, connecting is refused (as to a broker that is down),
/// and no other socket can take it, neither a server binding it nor an
/// outgoing connection picking it as its own port. Emulators started with
/// [`EmulatorConfig::listen_on`](crate::EmulatorConfig::listen_on) listen
/// on it, one after another, for as long as the hold lives (one at a
/// time: two on the same hold would share its connections).
///
/// Letting a port go between two emulators (bind port 0, note the port,
/// close) leaves it to whoever binds or connects next: a test that did so
/// failed now and then with "address in use". The hold is a bound socket
/// that never listens, with `SO_REUSEPORT`, which the emulators set too
/// (the kernel allows it only to sockets of the same user).
///
/// ```
/// use ulogger_emulator::PortHold;
///
/// let hold = PortHold::new().unwrap();
/// // Nobody listens yet: refused at once.
/// assert!(std::net::TcpStream::connect(hold.addr()).is_err());
/// ```
#[derive(Debug)]
pub struct PortHold {
    /// Holds the port while it lives; never listens.
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl PortHold {
    /// Holds a free port on 127.0.0.1.
    ///
    /// # Errors
    ///
    /// The system's, when no socket can be made or bound.
    pub fn new() -> io::Result<PortHold> {
        let socket = reusable()?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = socket.local_addr()?;
        Ok(PortHold {
            _socket: socket,
            addr,
        })
    }

    /// The held address, for clients and for
    /// [`EmulatorConfig::listen_on`](crate::EmulatorConfig::listen_on).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A TCP socket for 127.0.0.1 that may share its port with a [`PortHold`].
fn reusable() -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// Binds `addr` and registers the listener with `runtime`: the listener
/// and the address it got. With `share_port`, the port may be a
/// [`PortHold`]'s.
pub(crate) fn bind(
    addr: SocketAddr,
    share_port: bool,
    runtime: &Runtime,
) -> Result<(TcpListener, SocketAddr), EmulatorError> {
    let failed = |source| EmulatorError::Listen { addr, source };
    let _guard = runtime.enter();
    let listener = if share_port {
        let socket = reusable().map_err(failed)?;
        socket.bind(addr).map_err(failed)?;
        socket.listen(1024).map_err(failed)?
    } else {
        let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        TcpListener::from_std(listener).map_err(failed)?
    };
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}
