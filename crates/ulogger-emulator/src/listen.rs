//! Binding the emulator's TCP listeners (the broker's port and the HTTP
//! port) before its runtime runs them, so that `Emulator::start` can say
//! which address failed and report the bound ports (port 0 resolved).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use crate::EmulatorError;

/// Binds `addr` and registers the listener with `runtime`: the listener
/// and the address it got.
pub(crate) fn bind(
    addr: SocketAddr,
    runtime: &Runtime,
) -> Result<(TcpListener, SocketAddr), EmulatorError> {
    let failed = |source| EmulatorError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    let _guard = runtime.enter();
    let listener = TcpListener::from_std(listener).map_err(failed)?;
    Ok((listener, bound))
}
