//! Email addresses: normalisation (trimmed, lower-cased: compared case-insensitively, DESIGN.md
//! "Email addresses"), a light validity check, and masking for display.

/// Longest accepted address (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// The stored form of an address: trimmed and lower-cased.
pub fn normalize(address: &str) -> String {
    address.trim().to_lowercase()
}

/// Whether a normalised address looks deliverable: ASCII only (a mail server without
/// SMTPUTF8 cannot take anything else, and the user could then never receive a code), one
/// `@`, a non-empty local part, a domain with a dot or `localhost`, no whitespace or control
/// characters, at most 254 bytes.
pub fn is_valid(address: &str) -> bool {
    if address.is_empty() || address.len() > MAX_EMAIL_LEN || !address.is_ascii() {
        return false;
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';')) {
        return false;
    }
    let mut parts = address.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && (domain.contains('.') || domain == "localhost")
        }
        _ => false,
    }
}

/// The address as shown to someone who has not proven they own it: the first character of
/// the local part, `***`, and the domain (`a***@example.com`).
pub fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("  Ada@Example.COM "), "ada@example.com");
    }

    #[test]
    fn validates() {
        for ok in ["a@b.co", "ada+x@example.com", "root@localhost", "o'brien@xn--exmple-cua.com"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in
            ["", "a", "a@", "@b.co", "a@b", "a@@b.co", "a b@c.co", "a@b.co,", "a@.co", "<a@b.co>", "ünï@exämple.com"]
        {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(!is_valid(&format!("{}@b.co", "a".repeat(260))));
    }

    #[test]
    fn masks() {
        assert_eq!(mask("ada@example.com"), "a***@example.com");
        assert_eq!(mask("é@x.io"), "é***@x.io");
        assert_eq!(mask("nonsense"), "***");
    }
}
