//! The WebAuthn ceremonies (DESIGN.md 5.1, 5.3): registration on an `enroll` challenge or a
//! self-service setup, authentication on a `verify` challenge or a step-up, the management of
//! one's passkeys, and passwordless sign-in with a discoverable credential.
//!
//! Options are built with webauthn-rs-core's lower-level builder (attestation `none`, user
//! verification `preferred` for the second factor and `required` for passwordless sign-in,
//! resident key `preferred`, ES256 and RS256 among the algorithms); each ceremony's state is
//! sealed on its challenge and taken once by the step that finishes it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::{AuditKind, Method, SecretToken};
use latchkey_store::model::{Challenge, ChallengePurpose, Enrollment, NextAction, User, WebauthnCredential};
use latchkey_store::repo::locks::{self, TenantLock};
use latchkey_store::repo::webauthn::{self as repo, PasskeyCeremony};
use latchkey_store::repo::{challenges, enrollments, users};
use latchkey_store::{DbConn, StoreResult};
use serde_json::{Value, json};
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, COSEAlgorithm, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestRegistrationExtensions, ResidentKeyRequirement, UserVerificationPolicy,
};

use super::factor::{Ceremony, Checked, ceremony_aad, check_assertion, credential_id, default_name, open_ceremony};
use super::self_service::MethodSetup;
use super::signin::IssuedSession;
use super::{Auth, RequestCtx, Service, UserView, clean_name};
use crate::Verifier;
use crate::error::{Error, Result};

/// `POST /api/v1/auth/passkey/start`: the `passkey_token` to finish with and the request options.
#[derive(Debug)]
pub struct PasskeyStart {
    /// The token of the ceremony (stored only as a keyed hash, single-use).
    pub passkey_token: SecretToken,
    /// The request options, `{"publicKey": {…}}`.
    pub options: Value,
}

/// The associated data of a passwordless ceremony's sealed state.
fn passkey_aad(id: &str) -> Vec<u8> {
    format!("passkey-ceremony:{id}").into_bytes()
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("webauthn: {e}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(internal)
}

impl Service {
    /// `InvalidRequest` once the user has `LATCHKEY_WEBAUTHN_MAX_CREDENTIALS` credentials.
    fn credential_room(&self, existing: &[WebauthnCredential]) -> Result<()> {
        let max = self.limits.webauthn_max_credentials as usize;
        if existing.len() >= max {
            return Err(Error::InvalidRequest(format!("a user has at most {max} passkeys; remove one first")));
        }
        Ok(())
    }

    /// Opens a registration ceremony on `ch` for `user` (his user handle made on first use),
    /// sealing its state there; answers the creation options.
    fn start_registration(
        &self,
        conn: &mut DbConn,
        verifier: &Verifier,
        ch: &Challenge,
        user: &User,
    ) -> StoreResult<Result<Value>> {
        let existing = repo::for_user(conn, user.id)?;
        if let Err(e) = self.credential_room(&existing) {
            return Ok(Err(e));
        }
        let handle = match repo::handle_of(conn, user.id)? {
            Some(handle) => handle,
            None => {
                let mut bytes = [0u8; 16];
                rand::fill(&mut bytes);
                repo::ensure_handle(conn, user.tenant_id, user.id, &URL_SAFE_NO_PAD.encode(bytes))?
            }
        };
        let Ok(handle) = URL_SAFE_NO_PAD.decode(&handle) else {
            return Err(latchkey_store::StoreError::Corrupt("webauthn handle"));
        };
        let exclude: Vec<Vec<u8>> =
            existing.iter().filter_map(|c| URL_SAFE_NO_PAD.decode(&c.credential_id).ok()).collect();
        let display = if user.name.trim().is_empty() { user.email.as_str() } else { user.name.as_str() };
        let built = verifier.new_challenge_register_builder(&handle, &user.email, display).and_then(|b| {
            let b = b
                .attestation(AttestationConveyancePreference::None)
                .user_verification_policy(UserVerificationPolicy::Preferred)
                .exclude_credentials(Some(exclude))
                .credential_algorithms(vec![COSEAlgorithm::ES256, COSEAlgorithm::RS256])
                .extensions(Some(RequestRegistrationExtensions { cred_props: Some(true), ..Default::default() }));
            verifier.generate_challenge_register(b)
        });
        let (mut options, state) = match built {
            Ok(built) => built,
            Err(e) => return Ok(Err(internal(e))),
        };
        // Resident key preferred (webauthn-rs says required or discouraged): a security key
        // without room for one still registers; a passkey is discoverable for passwordless sign-in.
        if let Some(sel) = options.public_key.authenticator_selection.as_mut() {
            sel.resident_key = Some(ResidentKeyRequirement::Preferred);
            sel.require_resident_key = false;
        }
        let sealed = Ceremony::Register(state).seal(self, &ceremony_aad(ch.id))?;
        if !challenges::set_ceremony(conn, ch.id, &sealed)? {
            return Ok(Err(Error::InvalidChallenge));
        }
        Ok(to_json(&options))
    }

    /// Opens an authentication ceremony on `ch` allowing `user`'s credentials, sealing its state
    /// there; answers the request options.
    pub(super) fn start_authentication(
        &self,
        conn: &mut DbConn,
        verifier: &Verifier,
        ch: &Challenge,
        user: &User,
    ) -> StoreResult<Result<Value>> {
        let stored = repo::for_user(conn, user.id)?;
        if stored.is_empty() {
            return Ok(Err(Error::MethodNotAllowed));
        }
        let creds = stored.iter().map(super::factor::record_of).collect::<StoreResult<Vec<_>>>()?;
        let built = verifier
            .new_challenge_authenticate_builder(creds, Some(UserVerificationPolicy::Preferred))
            .and_then(|b| verifier.generate_challenge_authenticate(b));
        let (options, state) = match built {
            Ok(built) => built,
            Err(e) => return Ok(Err(internal(e))),
        };
        let sealed = Ceremony::Authenticate(state).seal(self, &ceremony_aad(ch.id))?;
        if !challenges::set_ceremony(conn, ch.id, &sealed)? {
            return Ok(Err(Error::InvalidChallenge));
        }
        Ok(to_json(&options))
    }

    /// Finishes the registration ceremony of `ch`: webauthn-rs verifies the credential (origin,
    /// RP id hash, challenge, flags, attestation `none` or a verifiable one, algorithm), it is
    /// stored with its name, and the user is enrolled in webauthn (audited `enrolled`, his
    /// other challenges and codes void, a notice). The ceremony is used up by any attempt.
    #[allow(clippy::too_many_arguments)]
    fn finish_registration(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        verifier: &Verifier,
        ch: &Challenge,
        user: &User,
        reg: &RegisterPublicKeyCredential,
        name: Option<String>,
    ) -> StoreResult<Result<WebauthnCredential>> {
        let refused = |why: &str| Ok(Err(Error::InvalidCredential(why.to_owned())));
        let Some(sealed) = challenges::take_ceremony(conn, ch.id)? else {
            return refused("no registration is in progress; call register/start first");
        };
        let Ceremony::Register(state) = open_ceremony(self, &sealed, &ceremony_aad(ch.id))? else {
            return refused("no registration is in progress; call register/start first");
        };
        let cred = match verifier.register_credential(reg, &state, None) {
            Ok(cred) => cred,
            Err(e) => return refused(&e.to_string()),
        };
        let existing = repo::for_user(conn, user.id)?;
        if let Err(e) = self.credential_room(&existing) {
            return Ok(Err(e));
        }
        let transports = cred
            .transports
            .iter()
            .flatten()
            .filter_map(|t| serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)))
            .filter(|t| t != "unknown")
            .collect();
        let record = WebauthnCredential {
            tenant_id: user.tenant_id,
            credential_id: credential_id(&cred.cred_id),
            user_id: user.id,
            name: name.unwrap_or_else(|| default_name(&existing)),
            credential: serde_json::to_string(&cred).map_err(|_| latchkey_store::StoreError::Corrupt("credential"))?,
            sign_count: i64::from(cred.counter),
            transports,
            backup_eligible: cred.backup_eligible,
            created_at: ctx.now,
            last_used_at: None,
        };
        if !repo::insert(conn, &record)? {
            return refused("this credential is already registered");
        }
        let before = enrollments::for_user(conn, user.id)?.into_iter().find(|e| e.method == Method::Webauthn);
        let enrollment = Enrollment {
            user_id: user.id,
            method: Method::Webauthn,
            secret_sealed: None,
            last_step: None,
            created_at: before.as_ref().map_or(ctx.now, |e| e.created_at),
            last_used_at: before.and_then(|e| e.last_used_at),
        };
        self.enroll_accepted(conn, ctx, user, None, Some(enrollment))?;
        Ok(Ok(record))
    }

    /// `POST /api/v1/auth/2fa/webauthn/register/start`: creation options for an `enroll`
    /// challenge offering webauthn; calling again replaces the ceremony.
    ///
    /// Errors: `InvalidChallenge`, `AlreadyEnrolled` (not an enrollment, or webauthn not
    /// offered), `MethodNotAllowed`, `InvalidRequest` (the most credentials).
    pub async fn webauthn_register_start(&self, ctx: &RequestCtx, challenge_token: &str) -> Result<Value> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        self.require_enrollment_of(&loc, Method::Webauthn)?;
        let verifier = self.registry.enter_with_verifier(loc.tenant.id).await?.verifier;
        let svc = self.clone();
        self.store
            .write(move |c| {
                users::lock(c, loc.user.id)?;
                svc.start_registration(c, &verifier, &loc.challenge, &loc.user)
            })
            .await?
    }

    /// `POST /api/v1/auth/2fa/webauthn/register/finish`: a credential that verifies enrolls
    /// webauthn and uses the challenge up; the user signs in again (`next: "login"`).
    ///
    /// Errors: `InvalidChallenge`, `AlreadyEnrolled`, `MethodNotAllowed`, `InvalidCredential`
    /// (does not verify, or no ceremony), `InvalidRequest` (the most credentials, a bad name).
    pub async fn webauthn_register_finish(
        &self,
        ctx: &RequestCtx,
        challenge_token: &str,
        credential: RegisterPublicKeyCredential,
        name: Option<&str>,
    ) -> Result<()> {
        let name = name.map(clean_name).transpose()?;
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        self.require_enrollment_of(&loc, Method::Webauthn)?;
        let verifier = self.registry.enter_with_verifier(loc.tenant.id).await?.verifier;
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some((user, ch)) = Service::reread(c, &loc, ctx.now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                Ok(svc.finish_registration(c, &ctx, &verifier, &ch, &user, &credential, name)?.map(|_| ()))
            })
            .await?
    }

    /// `POST /api/v1/auth/2fa/webauthn/authenticate/start`: request options allowing the
    /// user's credentials, for a `verify` challenge offering webauthn; calling again replaces
    /// the ceremony. Then `verify {method: "webauthn", credential}` ([`Service::verify_webauthn`]).
    ///
    /// Errors: `InvalidChallenge`, `MethodNotAllowed`.
    pub async fn webauthn_authenticate_start(&self, ctx: &RequestCtx, challenge_token: &str) -> Result<Value> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        let allowed = loc.challenge.methods.intersect(loc.tenant.policy.methods_for(loc.user.role));
        if !allowed.contains(Method::Webauthn) || loc.challenge.next != NextAction::Verify {
            return Err(Error::MethodNotAllowed);
        }
        let verifier = self.registry.enter_with_verifier(loc.tenant.id).await?.verifier;
        let svc = self.clone();
        self.store
            .write(move |c| {
                users::lock(c, loc.user.id)?;
                svc.start_authentication(c, &verifier, &loc.challenge, &loc.user)
            })
            .await?
    }

    /// `POST /api/v1/me/two-factor/webauthn/register/start`: a setup bound to the session and
    /// creation options excluding the user's credentials (step-up while he has a method).
    ///
    /// Errors: `MethodNotAllowed`, `StepUpRequired`, `InvalidRequest` (the most credentials).
    pub async fn add_passkey_start(&self, ctx: &RequestCtx, auth: &Auth) -> Result<MethodSetup<Value>> {
        self.may_change(ctx, auth, Method::Webauthn).await?;
        let verifier = self.registry.enter_with_verifier(auth.tenant.id).await?.verifier;
        let (setup_token, challenge) = self.open_setup(auth, Method::Webauthn, None, ctx.now).await?;
        let svc = self.clone();
        let user = auth.user.clone();
        let options = self
            .store
            .write(move |c| {
                users::lock(c, user.id)?;
                svc.start_registration(c, &verifier, &challenge, &user)
            })
            .await??;
        Ok(MethodSetup { setup_token, setup: options })
    }

    /// `POST /api/v1/me/two-factor/webauthn/register/finish`: a credential that verifies is
    /// added (audited `enrolled`, the user's open challenges and codes void, a notice); the
    /// setup token is used up.
    ///
    /// Errors: `InvalidSetupToken`, `InvalidCredential`, `InvalidRequest`.
    pub async fn add_passkey_finish(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        setup_token: &str,
        credential: RegisterPublicKeyCredential,
        name: Option<&str>,
    ) -> Result<WebauthnCredential> {
        let name = name.map(clean_name).transpose()?;
        let loc = self.locate(setup_token, ChallengePurpose::Setup, ctx.now, || Error::InvalidSetupToken).await?;
        if loc.challenge.session_id != Some(auth.session.id)
            || loc.user.id != auth.user.id
            || !loc.challenge.methods.contains(Method::Webauthn)
        {
            return Err(Error::InvalidSetupToken);
        }
        let verifier = self.registry.enter_with_verifier(loc.tenant.id).await?.verifier;
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some((user, ch)) = Service::reread(c, &loc, ctx.now)? else {
                    return Ok(Err(Error::InvalidSetupToken));
                };
                svc.finish_registration(c, &ctx, &verifier, &ch, &user, &credential, name)
            })
            .await?
    }

    /// `PATCH /api/v1/me/two-factor/webauthn/{id}`: renames one of the user's credentials
    /// (step-up).
    ///
    /// Errors: `StepUpRequired`, `InvalidRequest` (a bad name), `NotFound`.
    pub async fn rename_passkey(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        id: &str,
        name: &str,
    ) -> Result<WebauthnCredential> {
        self.require_fresh_factor(auth, ctx.now)?;
        let name = clean_name(name)?;
        let (user, tenant, id) = (auth.user.id, auth.tenant.id, id.to_owned());
        self.store
            .write(move |c| {
                users::lock(c, user)?;
                if !repo::rename(c, user, &id, &name)? {
                    return Ok(Err(Error::NotFound));
                }
                Ok(repo::by_id(c, tenant, &id)?.ok_or(Error::NotFound))
            })
            .await?
    }

    /// `DELETE /api/v1/me/two-factor/webauthn/{id}`: removes one of the user's credentials
    /// (step-up), unless it would leave the user of a 2FA tenant without a method his role
    /// allows; the last one ends his webauthn enrollment. Audited `factor_removed`; his open
    /// challenges and codes void, his trusted devices revoked, a notice.
    ///
    /// Errors: `StepUpRequired`, `NotFound`, `LastMethod`.
    pub async fn remove_passkey(&self, ctx: &RequestCtx, auth: &Auth, id: &str) -> Result<()> {
        self.require_fresh_factor(auth, ctx.now)?;
        let svc = self.clone();
        let ctx = ctx.clone();
        let (tenant_id, user_id, id) = (auth.tenant.id, auth.user.id, id.to_owned());
        self.store
            .write(move |c| {
                let Some((tenant, user)) = locks::tenant_then_user(c, tenant_id, TenantLock::Share, user_id)? else {
                    return Ok(Err(Error::Unauthenticated));
                };
                let creds = repo::for_user(c, user.id)?;
                if !creds.iter().any(|cred| cred.credential_id == id) {
                    return Ok(Err(Error::NotFound));
                }
                let last = creds.len() == 1;
                if last {
                    let left: latchkey_core::MethodSet = enrollments::methods_of(c, user.id)?
                        .to_vec()
                        .into_iter()
                        .filter(|m| *m != Method::Webauthn)
                        .collect();
                    if tenant.policy.enabled && left.intersect(tenant.policy.methods_for(user.role)).is_empty() {
                        return Ok(Err(Error::LastMethod));
                    }
                }
                repo::delete(c, user.id, &id)?;
                if last {
                    enrollments::delete(c, user.id, Method::Webauthn)?;
                    if user.preferred == Some(Method::Webauthn) {
                        users::set_preferred(c, user.id, None)?;
                    }
                }
                svc.after_factor_removed(c, &ctx, &user, json!({"method": Method::Webauthn, "credential_id": id}))?;
                Ok(Ok(()))
            })
            .await?
    }

    /// `POST /api/v1/auth/passkey/start`: request options for a discoverable credential with
    /// user verification required, and the `passkey_token` to finish with. An unknown tenant,
    /// or one without `passkey_sign_in`, answers the same way (nothing is stored, so its
    /// finish is refused like any other).
    ///
    /// Errors: `RateLimited` (the tenant's budget), `Internal`.
    pub async fn passkey_start(&self, ctx: &RequestCtx, tenant: &str) -> Result<PasskeyStart> {
        let entered = match self.registry.enter_slug(tenant).await? {
            Some(t) => Some(self.registry.enter_with_verifier(t.id).await?),
            None => None,
        };
        let verifier = match &entered {
            Some(e) => e.verifier.clone(),
            None => std::sync::Arc::new(crate::build_verifier(
                self.registry.default_relying_party(),
                "Latchkey",
                self.registry.settings().ceremony_timeout,
            )?),
        };
        let (options, state) = verifier
            .new_challenge_authenticate_builder(Vec::new(), Some(UserVerificationPolicy::Required))
            .and_then(|b| verifier.generate_challenge_authenticate(b))
            .map_err(internal)?;
        let options = to_json(&options)?;
        let passkey_token = SecretToken::generate();
        let Some(entered) = entered.filter(|e| e.tenant.settings.passkey_sign_in) else {
            return Ok(PasskeyStart { passkey_token, options });
        };
        let id = uuid::Uuid::now_v7().to_string();
        let ceremony = PasskeyCeremony {
            id: id.clone(),
            tenant_id: entered.tenant.id,
            state: Ceremony::Authenticate(state).seal(self, &passkey_aad(&id))?,
            created_at: ctx.now,
            expires_at: ctx.now + self.limits.challenge_ttl,
        };
        let hash = self.keys.token_hash(TokenPurpose::Passkey, passkey_token.expose());
        self.store.write(move |c| repo::insert_ceremony(c, &ceremony, &hash)).await?;
        Ok(PasskeyStart { passkey_token, options })
    }

    /// `POST /api/v1/auth/passkey/finish`: an assertion with the UV flag, by a discoverable
    /// credential of a user of the ceremony's tenant whose role allows webauthn and who is not
    /// blocked, on the ceremony's challenge (taken once), signs in with both factors: a session
    /// whose second factor is verified now, audited `signed_in` with `{"passkey": true}`.
    ///
    /// Errors: `InvalidCredentials` for every refusal.
    pub async fn passkey_finish(
        &self,
        ctx: &RequestCtx,
        passkey_token: &str,
        credential: PublicKeyCredential,
    ) -> Result<IssuedSession> {
        let hash = self.keys.token_hash(TokenPurpose::Passkey, passkey_token);
        let now = ctx.now;
        let ceremony =
            self.store.write(move |c| repo::take_ceremony(c, &hash, now)).await?.ok_or(Error::InvalidCredentials)?;
        let entered = self.registry.enter_with_verifier(ceremony.tenant_id).await.map_err(|e| match e {
            Error::NotFound => Error::InvalidCredentials,
            other => other,
        })?;
        let Ceremony::Authenticate(state) = open_ceremony(self, &ceremony.state, &passkey_aad(&ceremony.id))? else {
            return Err(Error::InvalidCredentials);
        };
        let handle =
            credential.get_user_unique_id().map(|h| URL_SAFE_NO_PAD.encode(h)).ok_or(Error::InvalidCredentials)?;
        let id = credential_id(credential.get_credential_id());
        let svc = self.clone();
        let ctx = ctx.clone();
        let verifier = entered.verifier;
        let tenant_id = ceremony.tenant_id;
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some(user_id) = repo::user_of_handle(c, tenant_id, &handle)? else {
                    return Ok(Err(Error::InvalidCredentials));
                };
                let Some((tenant, user)) = locks::tenant_then_user(c, tenant_id, TenantLock::Share, user_id)? else {
                    return Ok(Err(Error::InvalidCredentials));
                };
                if !tenant.settings.passkey_sign_in || !tenant.policy.methods_for(user.role).contains(Method::Webauthn)
                {
                    return Ok(Err(Error::InvalidCredentials));
                }
                if svc.blocked(&user, Method::Webauthn.as_str(), now).is_some() {
                    return Ok(Err(Error::InvalidCredentials));
                }
                let Some(stored) = repo::by_id(c, tenant_id, &id)?.filter(|s| s.user_id == user.id) else {
                    return Ok(Err(Error::InvalidCredentials));
                };
                match check_assertion(c, &verifier, &credential, &state, &stored, now)? {
                    Checked::Accepted { .. } => {}
                    refused => {
                        svc.passkey_refused(c, &ctx, &user, &refused)?;
                        return Ok(Err(Error::InvalidCredentials));
                    }
                }
                enrollments::mark_used(c, user.id, Method::Webauthn, now)?;
                users::set_verified(c, user.id, Method::Webauthn)?;
                let (token, session) = svc.issue_session(c, &user, true, now)?;
                let who = Some(user.id.to_string());
                let detail =
                    json!({"passkey": true, "second_factor": true, "method": Method::Webauthn, "credential_id": id});
                Service::audit(c, &ctx, tenant_id, who, Some(user.id), AuditKind::SignedIn, detail)?;
                svc.metrics.otp_verifications.with_label_values(&[Method::Webauthn.as_str(), "success"]).inc();
                let mut user = user;
                if !user.preferred_chosen {
                    user.preferred = Some(Method::Webauthn);
                }
                let view: UserView = svc.user_view(c, &user)?;
                Ok(Ok(IssuedSession::new(token, session.expires_at, view)))
            })
            .await?
    }

    /// A refused passwordless assertion of a known user: audited (`verify_failed`, and
    /// `webauthn_counter_regressed` for a counter that did not grow) and counted in the
    /// metrics, but not toward the user's block (every refusal answers `invalid_credentials`).
    fn passkey_refused(&self, conn: &mut DbConn, ctx: &RequestCtx, user: &User, refused: &Checked) -> StoreResult<()> {
        let who = Some(user.id.to_string());
        if let Checked::CounterRegressed { credential_id, counter, stored } = refused {
            let detail =
                json!({"credential_id": credential_id, "counter": counter, "stored_counter": stored, "passkey": true});
            Service::audit(
                conn,
                ctx,
                user.tenant_id,
                who.clone(),
                Some(user.id),
                AuditKind::WebauthnCounterRegressed,
                detail,
            )?;
        }
        self.metrics.otp_verifications.with_label_values(&[Method::Webauthn.as_str(), "invalid"]).inc();
        let detail = json!({"method": Method::Webauthn, "reason": "invalid", "passkey": true});
        Service::audit(conn, ctx, user.tenant_id, who, Some(user.id), AuditKind::VerifyFailed, detail)
    }
}
