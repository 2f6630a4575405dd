//! The diesel schema, portable across Postgres and SQLite (migrations in
//! `migrations/{postgres,sqlite}` create the same tables).
#![allow(missing_docs)]

diesel::table! {
    tenants (id) {
        id -> Text,
        slug -> Text,
        name -> Text,
        two_factor_enabled -> Bool,
        methods_admin -> Integer,
        methods_supervisor -> Integer,
        methods_agent -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
        settings -> Text,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        tenant_id -> Text,
        email -> Text,
        name -> Text,
        role -> Text,
        password_hash -> Text,
        preferred_method -> Nullable<Text>,
        otp_failures -> Integer,
        otp_blocked_until -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        enroll_asked_at -> Nullable<BigInt>,
        preferred_chosen -> Bool,
    }
}

diesel::table! {
    signin_attempts (key_hash) {
        key_hash -> Binary,
        tenant_id -> Nullable<Text>,
        attempts -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    enrollments (user_id, method) {
        user_id -> Text,
        method -> Text,
        tenant_id -> Text,
        secret_sealed -> Nullable<Binary>,
        last_step -> Nullable<BigInt>,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        token_hash -> Binary,
        tenant_id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        second_factor_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    challenges (id) {
        id -> Text,
        token_hash -> Binary,
        tenant_id -> Text,
        user_id -> Text,
        purpose -> Text,
        next_action -> Text,
        methods -> Integer,
        session_id -> Nullable<Text>,
        pending_secret -> Nullable<Binary>,
        created_at -> BigInt,
        expires_at -> BigInt,
        ended_at -> Nullable<BigInt>,
        ceremony -> Nullable<Binary>,
    }
}

diesel::table! {
    email_codes (id) {
        id -> Text,
        tenant_id -> Text,
        user_id -> Text,
        challenge_id -> Text,
        code_hash -> Binary,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
        voided_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    reset_tokens (id) {
        id -> Text,
        token_hash -> Binary,
        tenant_id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
        voided_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Text,
        tenant_id -> Text,
        kind -> Text,
        state -> Text,
        attempts -> Integer,
        payload -> Nullable<Binary>,
        expires_at -> Nullable<BigInt>,
        next_attempt_at -> BigInt,
        lease_until -> BigInt,
        webhook_id -> Nullable<Text>,
        event_id -> Nullable<Text>,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    recovery_requests (id) {
        id -> Text,
        tenant_id -> Text,
        user_id -> Text,
        status -> Text,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        created_at -> BigInt,
        decided_at -> Nullable<BigInt>,
        decided_by -> Nullable<Text>,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Text,
        tenant_id -> Text,
        at -> BigInt,
        actor_id -> Nullable<Text>,
        subject_id -> Nullable<Text>,
        kind -> Text,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        detail -> Text,
    }
}

diesel::table! {
    recovery_codes (id) {
        id -> Text,
        tenant_id -> Text,
        user_id -> Text,
        code_hash -> Binary,
        created_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    trusted_devices (id) {
        id -> Text,
        token_hash -> Binary,
        tenant_id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        user_agent -> Nullable<Text>,
        ip -> Nullable<Text>,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Text,
        tenant_id -> Text,
        url -> Text,
        events -> Text,
        description -> Nullable<Text>,
        enabled -> Bool,
        secret_sealed -> Binary,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    handoff_codes (code_hash) {
        code_hash -> Binary,
        tenant_id -> Text,
        user_id -> Text,
        code_challenge -> Text,
        second_factor_at -> Nullable<BigInt>,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    webauthn_credentials (tenant_id, credential_id) {
        tenant_id -> Text,
        credential_id -> Text,
        user_id -> Text,
        name -> Text,
        credential -> Text,
        sign_count -> BigInt,
        transports -> Text,
        backup_eligible -> Bool,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    webauthn_handles (user_id) {
        user_id -> Text,
        tenant_id -> Text,
        handle -> Text,
    }
}

diesel::table! {
    passkey_ceremonies (id) {
        id -> Text,
        token_hash -> Binary,
        tenant_id -> Text,
        state -> Binary,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    server_key (id) {
        id -> Integer,
        fingerprint -> Text,
        check_value -> Binary,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::joinable!(users -> tenants (tenant_id));
diesel::joinable!(recovery_requests -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    users,
    signin_attempts,
    enrollments,
    sessions,
    challenges,
    email_codes,
    reset_tokens,
    deliveries,
    recovery_requests,
    audit_events,
    recovery_codes,
    trusted_devices,
    webhooks,
    handoff_codes,
    webauthn_credentials,
    webauthn_handles,
    passkey_ceremonies,
    server_key,
);
