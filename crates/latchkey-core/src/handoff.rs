//! The hand-off of a hosted sign-in to a dashboard (DESIGN.md 5.7): which `return_to` URLs
//! are allowed, and the PKCE S256 check (RFC 7636). Pure functions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::crypto::ct_eq;
use crate::settings::check_return_url;

/// Whether `return_to` may receive a hand-off: it is itself a well-formed return URL
/// (absolute `https`, or `http` on a loopback host; no user info, backslash, fragment,
/// whitespace or control character) and starts with one of the tenant's `return_urls`
/// exactly, where a prefix that does not end in `/`, `?` or `=` only matches at a path,
/// query or end boundary (so `https://a.example/cb` does not admit `https://a.example/cb.evil`
/// nor `https://a.example.evil`). A `//` after the authority is refused as well.
pub fn return_to_allowed(return_to: &str, prefixes: &[String]) -> bool {
    let Ok(url) = check_return_url(return_to) else { return false };
    if url != return_to {
        return false;
    }
    let Some((_, rest)) = url.split_once("://") else { return false };
    if rest.contains("//") {
        return false;
    }
    prefixes.iter().any(|p| {
        let Some(tail) = url.strip_prefix(p.as_str()) else { return false };
        tail.is_empty() || p.ends_with(['/', '?', '=', '&']) || tail.starts_with(['/', '?'])
    })
}

/// Whether `s` is a PKCE code verifier or S256 challenge shape: 43 to 128 characters of
/// `A-Z a-z 0-9 - . _ ~` (RFC 7636 section 4.1).
pub fn valid_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The S256 challenge of `verifier`: base64url (no padding) of its SHA-256.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` is well-formed and its S256 challenge is `challenge` (constant time).
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    valid_pkce_string(verifier) && ct_eq(s256(verifier).as_bytes(), challenge.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_example() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(s256(v), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(verifier_matches(v, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!verifier_matches("short", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!verifier_matches(&v.replace('d', "e"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
    }

    #[test]
    fn return_to_is_an_exact_prefix() {
        let list = vec!["https://dash.example/cb".to_owned(), "http://127.0.0.1:4000/".to_owned()];
        assert!(return_to_allowed("https://dash.example/cb", &list));
        assert!(return_to_allowed("https://dash.example/cb?x=1", &list));
        assert!(return_to_allowed("https://dash.example/cb/done", &list));
        assert!(return_to_allowed("http://127.0.0.1:4000/anything", &list));
        for bad in [
            "https://dash.example/cb.evil",
            "https://dash.example/cbx",
            "https://dash.example.evil/cb",
            "https://dash.example/cb//evil.example",
            "https://dash.example/cb\\evil",
            "javascript:alert(1)",
            "//dash.example/cb",
            "https://user@dash.example/cb",
            "https://dash.example/cb#frag",
            "http://dash.example/cb",
            "https://evil.example/",
            "",
        ] {
            assert!(!return_to_allowed(bad, &list), "{bad}");
        }
        assert!(!return_to_allowed("https://dash.example/cb", &[]));
    }
}
