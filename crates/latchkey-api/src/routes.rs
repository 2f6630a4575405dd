//! The table of routes: for each route pattern, the HTTP methods it answers and which of
//! them need a session. Built from the OpenAPI document of the registered handlers (the same
//! registration, so the two cannot drift) plus the few resources the document does not list
//! (the document itself, the interactive page). It answers the `Allow` header of 405s and
//! tells the per-IP limiter which requests are signed-in API calls (DESIGN.md section 3).

use std::collections::BTreeMap;

use actix_web::http::Method;
use serde_json::Value;

/// The security scheme of signed-in endpoints in the OpenAPI document.
const SESSION_SCHEME: &str = "bearer";

/// The methods of one route pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    /// The methods it answers, in the order of [`METHODS`].
    methods: Vec<Method>,
    /// Those of them that need a session (`Authorization: Bearer <authentication_token>`).
    with_session: Vec<Method>,
}

/// The methods an OpenAPI path item can hold, by their key in the document.
const METHODS: [(&str, Method); 7] = [
    ("get", Method::GET),
    ("post", Method::POST),
    ("put", Method::PUT),
    ("patch", Method::PATCH),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("trace", Method::TRACE),
];

/// Route patterns (as actix-web writes them, e.g. `/api/v1/agents/{id}`) and their methods.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: BTreeMap<String, Entry>,
}

impl RouteTable {
    /// The routes of an OpenAPI document: every operation of every path; those whose
    /// `security` names the `bearer` scheme need a session.
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut table = Self::default();
        let Ok(Value::Object(paths)) = serde_json::to_value(&doc.paths) else { return table };
        for (pattern, item) in &paths {
            for (key, method) in &METHODS {
                let Some(operation) = item.get(*key) else { continue };
                let with_session = operation
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|reqs| reqs.iter().any(|r| r.get(SESSION_SCHEME).is_some()));
                table.add(pattern, method.clone(), with_session);
            }
        }
        table
    }

    /// Adds `method` on `pattern` (a resource the document does not list).
    pub fn add(&mut self, pattern: &str, method: Method, with_session: bool) {
        let entry = self.routes.entry(pattern.to_owned()).or_default();
        if !entry.methods.contains(&method) {
            entry.methods.push(method.clone());
            entry.methods.sort_by_key(rank);
        }
        if with_session && !entry.with_session.contains(&method) {
            entry.with_session.push(method);
        }
    }

    /// The methods `pattern` answers, for an `Allow` header (RFC 9110 section 10.2.1):
    /// `HEAD` wherever `GET` is; `None` for a pattern the table does not know.
    pub fn allow(&self, pattern: &str) -> Option<String> {
        let entry = self.routes.get(pattern)?;
        let mut names: Vec<&str> = Vec::with_capacity(entry.methods.len() + 1);
        for m in &entry.methods {
            names.push(m.as_str());
            if *m == Method::GET {
                names.push(Method::HEAD.as_str());
            }
        }
        Some(names.join(", "))
    }

    /// Whether `method` on `pattern` is an endpoint that needs a session (a `HEAD` is its
    /// `GET`).
    pub fn needs_session(&self, pattern: &str, method: &Method) -> bool {
        let method = if *method == Method::HEAD { &Method::GET } else { method };
        self.routes.get(pattern).is_some_and(|e| e.with_session.contains(method))
    }

    /// Every pattern with its methods (for tests and diagnostics).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Method])> {
        self.routes.iter().map(|(p, e)| (p.as_str(), e.methods.as_slice()))
    }
}

fn rank(m: &Method) -> usize {
    METHODS.iter().position(|(_, x)| x == m).unwrap_or(METHODS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_gives_methods_and_sessions() {
        let table = RouteTable::from_openapi(&crate::openapi());
        assert_eq!(table.allow("/api/v1/me").as_deref(), Some("GET, HEAD, PATCH"));
        assert_eq!(table.allow("/api/v1/auth").as_deref(), Some("POST"));
        assert_eq!(table.allow("/api/v1/agents/{id}").as_deref(), Some("PATCH, DELETE"));
        assert_eq!(table.allow("/reset-otp").as_deref(), Some("GET, HEAD, POST"));
        assert_eq!(table.allow("/nope"), None);
        assert!(table.needs_session("/api/v1/me", &Method::GET));
        assert!(table.needs_session("/api/v1/me", &Method::HEAD));
        assert!(table.needs_session("/api/v1/agents/{id}", &Method::DELETE));
        assert!(!table.needs_session("/api/v1/me", &Method::DELETE), "not a route");
        assert!(!table.needs_session("/api/v1/auth", &Method::POST));
        assert!(!table.needs_session("/api/v1/tenants", &Method::POST), "the operator token is no session");
        assert!(!table.needs_session("/healthz", &Method::GET));
        assert!(!table.needs_session("/metrics", &Method::GET));
    }

    #[test]
    fn added_routes_join_the_table() {
        let mut table = RouteTable::default();
        table.add("/docs/{_:.*}", Method::GET, false);
        table.add("/docs/{_:.*}", Method::GET, false);
        assert_eq!(table.allow("/docs/{_:.*}").as_deref(), Some("GET, HEAD"));
        assert!(!table.needs_session("/docs/{_:.*}", &Method::GET));
    }
}
