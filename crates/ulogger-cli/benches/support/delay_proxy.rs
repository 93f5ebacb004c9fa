//! A user-space TCP delay proxy: the network round trip a benchmark needs
//! where the kernel has no netem.
//!
//! Each connection accepted on `127.0.0.1:0` is joined to the upstream
//! address; every chunk of bytes read in either direction is written on
//! after a fixed one-way delay, in order. Bandwidth is not limited and the
//! bytes in the air are held in memory (a 50 ms round trip holds at most
//! what the peers send in 25 ms), so it models latency only.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running delay proxy; stops (and drops its connections) on drop.
pub struct DelayProxy {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DelayProxy {
    /// Forwards connections to `upstream`, delaying each direction by
    /// `one_way` (half the round trip it adds). `Duration::MAX` forwards
    /// nothing, as if the bytes never arrived.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> io::Result<DelayProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delay-proxy")
            .enable_all()
            .build()?;
        let listener =
            runtime.block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        join(client, server, one_way).await;
                    }
                });
            }
        });
        Ok(DelayProxy {
            addr,
            runtime: Some(runtime),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn join(client: TcpStream, server: TcpStream, one_way: Duration) {
    // The delay is the proxy's; Nagle's would come on top of it.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        delayed_pipe(client_read, server_write, one_way),
        delayed_pipe(server_read, client_write, one_way),
    );
}

/// Copies `from` to `to`, each chunk `delay` after it was read; the write
/// side is shut down once `from` ends and everything read was written.
async fn delayed_pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    // `None`: a delay past the clock's range, never due.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<Instant>, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending::<()>().await,
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now().checked_add(delay);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
