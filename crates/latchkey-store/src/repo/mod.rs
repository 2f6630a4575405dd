//! Repositories: one module per table, plain functions over a [`DbConn`](crate::DbConn).
//! Every function returns a `Result`; none reads the clock (callers pass `now`).

pub mod audit;
pub mod challenges;
pub mod deliveries;
pub mod email_codes;
pub mod enrollments;
pub mod handoff_codes;
pub mod locks;
pub mod recovery;
pub mod recovery_codes;
pub mod reset_tokens;
pub mod sealed;
pub mod server_key;
pub mod sessions;
pub mod sign_in_at_once;
pub mod signin;
pub mod tenants;
pub mod trusted_devices;
pub mod users;
pub mod webauthn;
pub mod webhooks;

/// A page of a list: at most `limit` items after the `after` cursor (an id).
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// Only items beyond this id (exclusive), in the list's order.
    pub after: Option<&'a str>,
    /// Most items to return.
    pub limit: i64,
}
