//! The `latchkey` binary's library: configuration loading and the wiring of the crates,
//! shared by `main.rs` and the integration tests.

pub mod app;
pub mod config;
pub mod keys;
pub mod logging;
