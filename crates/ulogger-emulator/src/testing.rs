//! Test fixtures for other crates.
