//! Integration tests: the real HTTP app on `127.0.0.1:0`, driven over HTTP with a manual
//! clock. Every test runs on SQLite, and again on Postgres when `LATCHKEY_TEST_DATABASE_URL`
//! is set (each run its own database).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

mod accounts;
mod authenticator;
mod bad_input;
mod binary;
mod deploy;
mod email;
mod fuzz;
mod hardening;
mod http;
mod keys;
mod notices;
mod recovery;
mod self_service;
mod settings;
mod signin;
mod softauthn;
mod web;
mod webauthn;
mod webhooks;
