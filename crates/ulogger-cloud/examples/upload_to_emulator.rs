//! Register a device and upload a log to a local emulator of the cloud,
//! over mutual TLS, with the async client.
//!
//! ```sh
//! cargo run -p ulogger-cloud --example upload_to_emulator
//! ```

use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};
use ulogger_cloud::{Client, MqttConfig};
use ulogger_emulator::{Emulator, EmulatorConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local cloud for customer 42; it generates a CA, server and client
    // certificates and requires the client's.
    let emulator = Emulator::start(EmulatorConfig::new(42))?;
    let certs = emulator.certs().ok_or("the emulator runs with TLS")?;

    let config = MqttConfig::new(42)
        .broker("127.0.0.1")
        .port(emulator.addr().port())
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    let client = Client::builder(config).build()?;

    // What the device told us over BLE, and a log it handed over.
    let device = DeviceInfo::new(7, "SN-0001", "sensor-board", "v1.2.0", "abcdef0");
    let mut header = LogHeader::new(3)?;
    header.tick_rate_hz = Some(1000);
    let log = build_log(header, b"\x01\x02\x03 compressed log records")?;

    let receipt = client.upload_log(&device, &log).await?;
    println!(
        "uploaded {} bytes to {} with session token {}",
        receipt.size, receipt.topic, receipt.token
    );
    client.shutdown().await;
    Ok(())
}
