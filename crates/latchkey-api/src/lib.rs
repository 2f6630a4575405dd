//! Latchkey's HTTP API (DESIGN.md section 3): actix-web handlers, DTOs, extractors,
//! `application/problem+json` errors, the OpenAPI 3.1 document and the metrics middleware.

pub mod dto;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod metrics;
pub mod middleware;
pub mod routes;
pub mod state;

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{DefaultHeaders, ErrorHandlers, from_fn};
use actix_web::{App, HttpResponse, HttpServer, guard, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

pub use metrics::HttpMetrics;
pub use state::{AppState, ExtraRoutes, OutboxProbe};

use crate::error::ApiError;
use crate::handlers::{
    agents, audit, auth, me, operator, ops, recovery, reset_page, settings, two_factor, webauthn, webhooks,
};
use crate::routes::RouteTable;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The `authentication_token` of a session"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`LATCHKEY_OPERATOR_TOKEN`"))
                    .build(),
            ),
        );
    }
}

/// The document's info, tags and security schemes; paths come from the registered handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Latchkey",
        description = "Multi-tenant two-factor authentication for customer-service dashboards. Errors are RFC 9457 \
                       `application/problem+json` with a stable `code`.",
    ),
    components(schemas(error::Problem)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "sign-in", description = "Password sign-in and sign-out"),
        (name = "second factor", description = "Challenges: enrollment, codes, recovery"),
        (name = "self", description = "The signed-in user"),
        (name = "settings", description = "Tenant 2FA policy (admins)"),
        (name = "agents", description = "User management (admins)"),
        (name = "recovery", description = "Recovery requests (admins)"),
        (name = "audit", description = "Audit log (admins)"),
        (name = "webhooks", description = "Webhook endpoints and their deliveries (admins)"),
        (name = "operator", description = "Operator endpoints"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// Registers every handler (and so its OpenAPI path).
fn register<T>(app: utoipa_actix_web::UtoipaApp<T>) -> utoipa_actix_web::UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(operator::create_tenant)
        .service(operator::reset_2fa)
        .service(auth::sign_in)
        .service(auth::logout)
        .service(auth::authenticator_setup)
        .service(auth::authenticator_confirm)
        .service(auth::email_send)
        .service(auth::verify)
        .service(auth::skip)
        .service(auth::recovery)
        .service(auth::reset)
        .service(auth::exchange)
        .service(webauthn::register_start)
        .service(webauthn::register_finish)
        .service(webauthn::authenticate_start)
        .service(webauthn::passkey_start)
        .service(webauthn::passkey_finish)
        .service(me::get_me)
        .service(me::patch_me)
        .service(me::change_password)
        .service(two_factor::overview)
        .service(two_factor::step_up_email)
        .service(two_factor::step_up)
        .service(two_factor::add_authenticator)
        .service(two_factor::confirm_authenticator)
        .service(two_factor::add_email)
        .service(two_factor::confirm_email)
        .service(two_factor::preferred)
        .service(two_factor::remove_authenticator)
        .service(two_factor::remove_email)
        .service(two_factor::generate_recovery_codes)
        .service(two_factor::delete_recovery_codes)
        .service(two_factor::devices)
        .service(two_factor::revoke_devices)
        .service(two_factor::revoke_device)
        .service(webauthn::step_up_start)
        .service(webauthn::add_start)
        .service(webauthn::add_finish)
        .service(webauthn::rename)
        .service(webauthn::remove)
        .service(settings::get_settings)
        .service(settings::enable)
        .service(settings::enable_confirm)
        .service(settings::disable)
        .service(settings::put_methods)
        .service(settings::patch_settings)
        .service(settings::put_webauthn)
        .service(agents::list)
        .service(agents::create)
        .service(agents::update)
        .service(agents::remove)
        .service(agents::reset_2fa)
        .service(agents::revoke_devices)
        .service(recovery::list)
        .service(recovery::approve)
        .service(recovery::dismiss)
        .service(audit::list)
        .service(webhooks::create)
        .service(webhooks::list)
        .service(webhooks::get_one)
        .service(webhooks::update)
        .service(webhooks::remove)
        .service(webhooks::rotate_secret)
        .service(webhooks::deliveries)
        .service(webhooks::retry)
        .service(reset_page::show)
        .service(reset_page::submit)
        .service(ops::healthz)
        .service(ops::readyz)
        .service(ops::metrics)
}

fn base_doc() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The OpenAPI 3.1 document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    register(App::new().into_utoipa_app().openapi(base_doc())).split_for_parts().1
}

/// The HTTP request metrics (`latchkey_http_requests_total{method,route,status}`,
/// `latchkey_http_request_duration_seconds{method,route}`), registered in `registry`; every
/// label takes only server-chosen values (see [`metrics`]).
///
/// Errors: 503 `unavailable` when the registry already holds them.
pub fn http_metrics(registry: &prometheus::Registry) -> Result<HttpMetrics, ApiError> {
    HttpMetrics::register(registry).map_err(|e| ApiError::Unavailable(format!("metrics: {e}")))
}

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// The route pattern of the interactive page (`/docs/`) and its assets.
pub const DOCS_PATTERN: &str = "/docs/{_:.*}";

/// The headers of every response that does not set its own: no MIME sniffing, never framed
/// (the reset page and `/docs/` share one origin; a framed page could be clickjacked).
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Content-Security-Policy", "frame-ancestors 'none'"))
}

/// The complete app: routes, the OpenAPI document at `/api/v1/openapi.json`, the interactive
/// page at `/docs/` unless `state.docs` is off (assets vendored, nothing loaded from the
/// internet), a problem+json 404 for unknown paths and 405 with `Allow` for unknown methods,
/// `HEAD` wherever `GET` is, and the middleware.
pub fn app(
    state: web::Data<AppState>,
    metrics: HttpMetrics,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let docs = state.docs;
    let extra = state.extra_routes.clone();
    let (app, doc) = register(
        App::new()
            .into_utoipa_app()
            .openapi(base_doc())
            .app_data(state)
            .app_data(extract::json_config())
            .app_data(web::QueryConfig::default().error_handler(extract::query_error))
            .app_data(web::PathConfig::default().error_handler(extract::path_error))
            .app_data(web::FormConfig::default().limit(extract::MAX_BODY_BYTES)),
    )
    .split_for_parts();
    let mut routes = RouteTable::from_openapi(&doc);
    routes.add(OPENAPI_PATH, Method::GET, false);
    if docs {
        routes.add(DOCS_PATTERN, Method::GET, false);
    }
    let doc = web::Data::new(doc);
    app.app_data(web::Data::new(routes))
        .app_data(web::Data::new(metrics))
        .service(web::resource(OPENAPI_PATH).guard(guard::Get()).app_data(doc).to(openapi_json))
        .configure(|cfg| {
            if docs {
                cfg.service(SwaggerUi::new(DOCS_PATTERN).config(utoipa_swagger_ui::Config::from(OPENAPI_PATH)));
            }
        })
        .configure(|cfg| {
            if let Some(extra) = &extra {
                extra(cfg);
            }
        })
        .default_service(web::to(unrouted))
        .wrap(from_fn(middleware::deliver_notices))
        .wrap(from_fn(middleware::request_timeout))
        .wrap(from_fn(middleware::ip_limit))
        .wrap(ErrorHandlers::new().default_handler(middleware::problem_for_any_error))
        .wrap(security_headers())
        .wrap(from_fn(middleware::head_as_get))
        .wrap(from_fn(metrics::observe))
        .wrap(from_fn(middleware::log_requests))
        .wrap(from_fn(middleware::drain))
}

/// `GET /api/v1/openapi.json`: the OpenAPI 3.1 document.
async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.as_ref())
}

/// No route took the request: 405 with `Allow` when the path exists for other HTTP methods,
/// else 404.
async fn unrouted(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    let allow = req
        .match_pattern()
        .and_then(|pattern| req.app_data::<web::Data<RouteTable>>().and_then(|routes| routes.allow(&pattern)));
    if allow.is_some() || req.resource_map().has_resource(req.path()) {
        Err(ApiError::HttpMethodNotAllowed { allow })
    } else {
        Err(ApiError::NotFound)
    }
}

/// Starts the HTTP server on `listener` with `workers` threads (0: one per core). It stops
/// accepting on `Server::stop(true)` and gives in-flight requests `shutdown_timeout_secs`.
/// Signals are left to the caller.
pub fn serve(
    state: AppState,
    listener: TcpListener,
    workers: usize,
    shutdown_timeout_secs: u64,
) -> std::io::Result<Server> {
    let metrics = http_metrics(&state.metrics.registry).map_err(std::io::Error::other)?;
    let data = web::Data::new(state);
    let mut server = HttpServer::new(move || app(data.clone(), metrics.clone()))
        .listen(listener)?
        .shutdown_timeout(shutdown_timeout_secs)
        .disable_signals();
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.run())
}
