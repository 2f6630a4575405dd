//! `tenants`: tenants and their 2FA policy.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::settings::TenantSettings;
use latchkey_core::{MethodSet, TenantId};

use crate::DbConn;
use crate::error::{StoreError, StoreResult};
use crate::model::{Tenant, TwoFactorPolicy, at, ms, parse};
use crate::schema::tenants;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
struct Row {
    id: String,
    slug: String,
    name: String,
    two_factor_enabled: bool,
    methods_admin: i32,
    methods_supervisor: i32,
    methods_agent: i32,
    created_at: i64,
    updated_at: i64,
    settings: String,
}

impl Row {
    fn into_tenant(self) -> StoreResult<Tenant> {
        Ok(Tenant {
            id: parse("tenant id", &self.id)?,
            slug: self.slug,
            name: self.name,
            policy: TwoFactorPolicy {
                enabled: self.two_factor_enabled,
                admin: MethodSet::from_bits(self.methods_admin),
                supervisor: MethodSet::from_bits(self.methods_supervisor),
                agent: MethodSet::from_bits(self.methods_agent),
            },
            settings: TenantSettings::from_json(&self.settings).ok_or(StoreError::Corrupt("tenant settings"))?,
            created_at: at(self.created_at)?,
        })
    }
}

/// Inserts a tenant. Errors: `Conflict` when the slug is taken.
pub fn insert(conn: &mut DbConn, t: &Tenant) -> StoreResult<()> {
    let row = Row {
        id: t.id.to_string(),
        slug: t.slug.clone(),
        name: t.name.clone(),
        two_factor_enabled: t.policy.enabled,
        methods_admin: t.policy.admin.bits(),
        methods_supervisor: t.policy.supervisor.bits(),
        methods_agent: t.policy.agent.bits(),
        created_at: ms(t.created_at),
        updated_at: ms(t.created_at),
        settings: t.settings.to_json(),
    };
    diesel::insert_into(tenants::table).values(&row).execute(conn)?;
    Ok(())
}

/// The tenant with `slug`.
pub fn by_slug(conn: &mut DbConn, slug: &str) -> StoreResult<Option<Tenant>> {
    tenants::table
        .filter(tenants::slug.eq(slug))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_tenant)
        .transpose()
}

/// The tenant with `id`.
pub fn by_id(conn: &mut DbConn, id: TenantId) -> StoreResult<Option<Tenant>> {
    tenants::table
        .find(id.to_string())
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_tenant)
        .transpose()
}

/// Turns 2FA on or off.
pub fn set_enabled(conn: &mut DbConn, id: TenantId, enabled: bool, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(tenants::table.find(id.to_string()))
        .set((tenants::two_factor_enabled.eq(enabled), tenants::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}

/// Sets the methods allowed per role.
pub fn set_methods(conn: &mut DbConn, id: TenantId, policy: &TwoFactorPolicy, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(tenants::table.find(id.to_string()))
        .set((
            tenants::methods_admin.eq(policy.admin.bits()),
            tenants::methods_supervisor.eq(policy.supervisor.bits()),
            tenants::methods_agent.eq(policy.agent.bits()),
            tenants::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Replaces the tenant's settings (DESIGN.md 5.8).
pub fn set_settings(conn: &mut DbConn, id: TenantId, settings: &TenantSettings, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(tenants::table.find(id.to_string()))
        .set((tenants::settings.eq(settings.to_json()), tenants::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}
