//! Opening a connection: TCP, TLS, then MQTT CONNECT / CONNACK.

use std::io;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Settings;
use crate::error::{Error, ErrorKind};

/// A byte stream to the broker, TLS or not.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The largest packet we accept from the broker: a 128 KiB payload plus
/// a maximal topic and the fixed header.
pub(crate) const MAX_INCOMING_PACKET: usize = 131_072 + 65_536 + 16;

/// A failed attempt, and whether retrying can help.
pub(crate) struct Failure {
    pub error: Error,
    pub permanent: bool,
}

impl Failure {
    fn transient(error: Error) -> Self {
        Failure {
            error,
            permanent: false,
        }
    }
}

/// Connects and completes the MQTT handshake. `buf` receives any bytes the
/// broker sent after its CONNACK.
pub(crate) async fn open(
    settings: &Settings,
    buf: &mut BytesMut,
) -> Result<Box<dyn Stream>, Failure> {
    let broker = settings.broker();
    let connect_error = |e: io::Error| {
        Error::with_source(
            ErrorKind::Connect {
                broker: broker.clone(),
            },
            e,
        )
    };
    let tcp = TcpStream::connect((settings.host.as_str(), settings.port))
        .await
        .map_err(|e| Failure::transient(connect_error(e)))?;
    // Uploads are latency-bound request/acknowledge exchanges.
    tcp.set_nodelay(true)
        .map_err(|e| Failure::transient(connect_error(e)))?;
    let mut stream: Box<dyn Stream> = match &settings.tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from(settings.host.clone()).map_err(|e| Failure {
                error: Error::config("broker", format!("not a valid TLS server name: {e}")),
                permanent: true,
            })?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = connector.connect(name, tcp).await.map_err(|e| {
                // A certificate the other side rejects will be rejected
                // again; a reset during the handshake may not be.
                let permanent = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
                Failure {
                    error: connect_error(e),
                    permanent,
                }
            })?;
            Box::new(tls)
        }
    };

    let mut connect = Connect::new(settings.client_id.clone());
    connect.keep_alive = settings.keep_alive;
    connect.clean_session = true;
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .map_err(|e| Failure::transient(Error::from(ErrorKind::Protocol(e.to_string()))))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| Failure::transient(connect_error(e)))?;
    stream
        .flush()
        .await
        .map_err(|e| Failure::transient(connect_error(e)))?;

    let connack = loop {
        match Packet::read(buf, MAX_INCOMING_PACKET) {
            Ok(Packet::ConnAck(ack)) => break ack,
            Ok(other) => {
                return Err(Failure::transient(
                    ErrorKind::Protocol(format!("expected CONNACK, got {other:?}")).into(),
                ))
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => {
                return Err(Failure::transient(
                    ErrorKind::Protocol(format!("malformed CONNACK: {e}")).into(),
                ))
            }
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| Failure::transient(connect_error(e)))?;
        if n == 0 {
            return Err(Failure::transient(connect_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the connection before CONNACK (client id or policy refused?)",
            ))));
        }
    };
    check_connack(&connack)?;
    Ok(stream)
}

fn check_connack(ack: &ConnAck) -> Result<(), Failure> {
    let reason = match ack.code {
        ConnectReturnCode::Success => return Ok(()),
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "client id rejected",
        ConnectReturnCode::ServiceUnavailable => "service unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    };
    Err(Failure {
        // "Service unavailable" is the one refusal that may pass.
        permanent: ack.code != ConnectReturnCode::ServiceUnavailable,
        error: ErrorKind::ConnectionRefused {
            reason: reason.to_owned(),
        }
        .into(),
    })
}
