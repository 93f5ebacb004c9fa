//! Bridge mode over the application's paho-mqtt client: the library's
//! [`MqttLink`] implemented over a Python adapter
//! (`ulogger_cloud/_paho_link.py`), which calls paho and reports back
//! through the two classes here.
//!
//! The engine never waits for the GIL on its runtime's workers: every call
//! into Python runs on Tokio's blocking pool, and an operation then waits
//! for its [`Completion`] (paho's PUBACK, SUBACK or UNSUBACK, reported by
//! the adapter from paho's network thread) with the GIL released. paho's
//! callbacks hand messages and connection changes to the engine through
//! [`Inbox`], which never blocks.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use tokio::sync::oneshot;
use ulogger_cloud::{Error, ErrorKind, IncomingMessage, LinkFuture, LinkInbox, MqttLink};

type Done = oneshot::Sender<Result<(), Error>>;

/// Where the adapter reports how one publish, subscribe or unsubscribe
/// ended. The first report counts; later ones are ignored.
#[pyclass(module = "ulogger_cloud._native", frozen)]
pub(crate) struct Completion {
    done: Mutex<Option<Done>>,
}

impl Completion {
    fn finish(&self, result: Result<(), Error>) {
        let sender = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            // The operation may have been given up (timed out): nothing waits.
            let _ = sender.send(result);
        }
    }
}

#[pymethods]
impl Completion {
    /// The broker acknowledged the operation.
    fn done(&self) {
        self.finish(Ok(()));
    }

    /// The operation failed: `kind` is `"connection_lost"` (it will not be
    /// completed; the engine retries where its rules say so),
    /// `"refused"` (a SUBACK failure code for `topic`) or `"shutdown"`;
    /// `reason` is paho's.
    #[pyo3(signature = (kind, reason, topic=String::new()))]
    fn failed(&self, kind: &str, reason: String, topic: String) {
        let kind = match kind {
            "refused" => ErrorKind::SubscribeRefused { topic },
            "shutdown" => ErrorKind::Shutdown,
            _ => ErrorKind::ConnectionLost,
        };
        self.finish(Err(Error::from_link(kind, reason)));
    }
}

/// The engine's side of the application's connection: what paho
/// delivers and when it connects or drops. Every method returns at once.
#[pyclass(module = "ulogger_cloud._native", frozen)]
pub(crate) struct Inbox {
    inner: LinkInbox,
}

#[pymethods]
impl Inbox {
    /// A message paho delivered on a topic the engine subscribed to.
    #[pyo3(signature = (topic, payload, retain=false, dup=false))]
    fn deliver(&self, topic: String, payload: PyBackedBytes, retain: bool, dup: bool) {
        let payload = Bytes::copy_from_slice(&payload);
        self.inner
            .deliver(IncomingMessage::new(topic, payload).retain(retain).dup(dup));
    }

    /// The client connected (a CONNACK accepted); `session_present` is
    /// its flag (false: the engine subscribes again).
    fn connected(&self, session_present: bool) {
        self.inner.connected(session_present);
    }

    /// The client is disconnected, for `reason`.
    fn disconnected(&self, reason: &str) {
        self.inner.disconnected(reason);
    }

    /// True once the engine shut down.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// The [`MqttLink`] over the Python adapter.
pub(crate) struct PyLink {
    adapter: Arc<Py<PyAny>>,
}

impl PyLink {
    pub(crate) fn new(adapter: Py<PyAny>) -> Self {
        PyLink {
            adapter: Arc::new(adapter),
        }
    }

    /// Calls `adapter.<method>(argument, completion)` on the blocking pool
    /// and waits, without the GIL, for the completion.
    fn call(&self, method: &'static str, topic: String, payload: Option<Bytes>) -> LinkFuture<'_> {
        let adapter = self.adapter.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let completion = Completion {
                done: Mutex::new(Some(tx)),
            };
            let handed = tokio::task::spawn_blocking(move || {
                Python::attach(|py| -> PyResult<()> {
                    let completion = Py::new(py, completion)?;
                    match payload {
                        Some(payload) => adapter.call_method1(
                            py,
                            method,
                            (topic, PyBytes::new(py, &payload), completion),
                        )?,
                        None => adapter.call_method1(py, method, (topic, completion))?,
                    };
                    Ok(())
                })
                .map_err(|e| {
                    Error::from_link(
                        ErrorKind::ConnectionLost,
                        format!("the paho client's {method} raised {e}"),
                    )
                })
            })
            .await;
            match handed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(Error::from_link(
                        ErrorKind::Shutdown,
                        format!("the call into Python did not finish: {e}"),
                    ))
                }
            }
            rx.await.unwrap_or_else(|_| {
                Err(Error::from_link(
                    ErrorKind::ConnectionLost,
                    "the paho adapter dropped the operation without completing it",
                ))
            })
        })
    }
}

impl MqttLink for PyLink {
    fn attach(&self, inbox: LinkInbox) {
        // Called from `ClientBuilder::build`, on the thread of the Python
        // call that builds the engine (it released the GIL to build).
        Python::attach(|py| {
            let attached = Py::new(py, Inbox { inner: inbox })
                .and_then(|inbox| self.adapter.call_method1(py, "attach", (inbox,)));
            if let Err(e) = attached {
                // The adapter reports the connection through the inbox;
                // without it operations time out waiting for it.
                e.print(py);
            }
        });
    }

    fn publish(&self, topic: String, payload: Bytes) -> LinkFuture<'_> {
        self.call("publish", topic, Some(payload))
    }

    fn subscribe(&self, filter: String) -> LinkFuture<'_> {
        self.call("subscribe", filter, None)
    }

    fn unsubscribe(&self, filter: String) -> LinkFuture<'_> {
        self.call("unsubscribe", filter, None)
    }
}
