//! Display names of tenants and users (DESIGN.md "Email addresses", last rule): printable
//! text that cannot disguise itself. Control characters, bidirectional overrides and
//! isolates, and invisible (zero-width and other format) characters are refused, since they
//! let a name render as something else in an admin's list or a mail.

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Whether `c` is an invisible or direction-changing character: bidi embeddings, overrides,
/// isolates and marks (U+061C, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069), zero-width and
/// joiner characters (U+200B–U+200D, U+2060–U+2064, U+FEFF), the soft hyphen, the Hangul and
/// Khmer fillers, variation selectors, interlinear annotation and tag characters.
pub fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The stored form of a display name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, none of
/// them a control, bidi or invisible character.
///
/// Errors: a message naming the rule.
pub fn clean(name: &str) -> Result<String, &'static str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err("name must be 1 to 200 characters");
    }
    if name.chars().any(|c| c.is_control() || is_invisible_or_bidi(c)) {
        return Err("name must not contain control, bidirectional-override or invisible characters");
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(clean("  Ada Lovelace "), Ok("Ada Lovelace".to_owned()));
        assert_eq!(clean("Zoë Ñandú 山田"), Ok("Zoë Ñandú 山田".to_owned()));
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\u{7}",
            "evil\u{202E}gnp.exe",
            "a\u{2066}b",
            "zero\u{200B}width",
            "join\u{200D}er",
            "bom\u{FEFF}",
            "soft\u{00AD}hyphen",
            "tag\u{E0041}",
        ] {
            assert!(clean(bad).is_err(), "{bad:?}");
        }
        assert!(clean(&"x".repeat(201)).is_err());
        assert!(clean(&"x".repeat(200)).is_ok());
    }
}
