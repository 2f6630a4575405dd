//! Email addresses: normalisation (trimmed, lower-cased: compared case-insensitively, DESIGN.md
//! "Email addresses"), the check that the mailer can send to them, and masking for display.

/// Longest accepted address (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// The stored form of an address: trimmed and lower-cased.
pub fn normalize(address: &str) -> String {
    address.trim().to_lowercase()
}

/// Whether a normalised address can be mailed (DESIGN.md "Email addresses"): it parses as a
/// recipient with the mailer's own parser ([`mailbox`]) and comes out unchanged (so nothing
/// in it is a comment, a display name or a quoted part the mailer would read differently),
/// ASCII only (a mail server without SMTPUTF8 cannot take anything else, and the user could
/// then never receive a code), a domain name with a dot or `localhost` (never an address
/// literal such as `[127.0.0.1]`), at most 254 bytes.
pub fn is_valid(address: &str) -> bool {
    if address.is_empty() || address.len() > MAX_EMAIL_LEN || !address.is_ascii() {
        return false;
    }
    let Some((_, domain)) = address.rsplit_once('@') else { return false };
    if !(domain == "localhost" || (domain.contains('.') && crate::settings::is_domain_name(domain))) {
        return false;
    }
    mailbox(address).is_some()
}

/// The recipient of a message to `address`, parsed by lettre (the mailer), or `None` unless
/// the parse gives back exactly `address` with no display name. The worker builds every
/// message's `To` with this, and sign-up and email changes accept only what it accepts, so an
/// address that is accepted is one the mailer can send to.
pub fn mailbox(address: &str) -> Option<lettre::message::Mailbox> {
    let parsed: lettre::message::Mailbox = address.parse().ok()?;
    let same =
        parsed.name.is_none() && parsed.email.to_string() == address && address.parse::<lettre::Address>().is_ok();
    same.then_some(parsed)
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
        for bad in [
            "",
            "a",
            "a@",
            "@b.co",
            "a@b",
            "a@@b.co",
            "a b@c.co",
            "a@b.co,",
            "a@.co",
            "<a@b.co>",
            "ünï@exämple.com",
            // Accepted before, but the mailer cannot send to them (issue 11, finding 10).
            "x(y)@b.co",
            "x@[127.0.0.1]",
            "a:b@c.co",
            "..a@b.co",
            "a\\b@c.co",
            "a@b.co (comment)",
            "\"a b\"@c.co",
            "a@1.2.3.4",
            "a@-b.co",
            "Name <a@b.co>",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert_eq!(mailbox("ada@example.com").map(|m| m.email.to_string()), Some("ada@example.com".to_owned()));
        assert!(!is_valid(&format!("{}@b.co", "a".repeat(260))));
    }

    #[test]
    fn masks() {
        assert_eq!(mask("ada@example.com"), "a***@example.com");
        assert_eq!(mask("é@x.io"), "é***@x.io");
        assert_eq!(mask("nonsense"), "***");
    }
}
