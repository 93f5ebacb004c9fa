//! What the CLI's benchmarks share.
#![allow(dead_code)]

pub mod delay_proxy;
