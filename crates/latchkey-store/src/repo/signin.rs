//! `signin_failures`: wrong passwords per user (subject = user id) or per unknown address of
//! a tenant (subject = keyed hash of the address), so the limit holds across processes.

use diesel::prelude::*;
use diesel::upsert::excluded;
use latchkey_core::TenantId;
use latchkey_core::otp::SigninThrottle;

use crate::error::StoreResult;
use crate::model::{at, ms};
use crate::schema::signin_failures as sf;
use crate::{DbConn, per_backend};

/// The throttle state of `subject` in `tenant`.
pub fn get(conn: &mut DbConn, tenant: TenantId, subject: &str) -> StoreResult<Option<SigninThrottle>> {
    let row: Option<(i32, i64)> = sf::table
        .filter(sf::tenant_id.eq(tenant.to_string()))
        .filter(sf::subject.eq(subject))
        .select((sf::failures, sf::window_started_at))
        .first(conn)
        .optional()?;
    row.map(|(failures, start)| {
        Ok(SigninThrottle { failures: u32::try_from(failures).unwrap_or(0), window_started_at: at(start)? })
    })
    .transpose()
}

/// Stores the throttle state of `subject` (insert or replace).
pub fn put(conn: &mut DbConn, tenant: TenantId, subject: &str, state: SigninThrottle) -> StoreResult<()> {
    let values = (
        sf::tenant_id.eq(tenant.to_string()),
        sf::subject.eq(subject.to_owned()),
        sf::failures.eq(i32::try_from(state.failures).unwrap_or(i32::MAX)),
        sf::window_started_at.eq(ms(state.window_started_at)),
    );
    per_backend!(conn, c => diesel::insert_into(sf::table)
        .values(values.clone())
        .on_conflict((sf::tenant_id, sf::subject))
        .do_update()
        .set((sf::failures.eq(excluded(sf::failures)), sf::window_started_at.eq(excluded(sf::window_started_at))))
        .execute(c))?;
    Ok(())
}

/// Forgets the failures of `subject` (after a successful sign-in).
pub fn clear(conn: &mut DbConn, tenant: TenantId, subject: &str) -> StoreResult<()> {
    diesel::delete(sf::table.filter(sf::tenant_id.eq(tenant.to_string())).filter(sf::subject.eq(subject)))
        .execute(conn)?;
    Ok(())
}
