//! Recovery codes (DESIGN.md 5.2): ten codes per set, each 10 characters of lower-case
//! Crockford base32 (`0-9a-z` without `i l o u`, 50 random bits), shown as `xxxxx-xxxxx`, and
//! their normalisation when typed back.

use zeroize::Zeroizing;

/// The lower-case Crockford base32 alphabet (Douglas Crockford, "Base32 Encoding"): digits and
/// letters without `i`, `l`, `o`, `u`.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of a code (without the hyphen).
pub const CODE_LEN: usize = 10;
/// Codes in a set.
pub const SET_SIZE: usize = 10;

/// A fresh set of [`SET_SIZE`] distinct codes from the thread CSPRNG, each shown as
/// `xxxxx-xxxxx`.
pub fn generate_set() -> Vec<Zeroizing<String>> {
    let mut set: Vec<Zeroizing<String>> = Vec::with_capacity(SET_SIZE);
    while set.len() < SET_SIZE {
        let raw: String = (0..CODE_LEN).map(|_| char::from(ALPHABET[rand::random_range(0..32usize)])).collect();
        let shown = Zeroizing::new(format!("{}-{}", &raw[..5], &raw[5..]));
        if !set.iter().any(|c| **c == *shown) {
            set.push(shown);
        }
    }
    set
}

/// The canonical form of a typed code: letters in any case, with or without the hyphen in the
/// middle, and Crockford's look-alikes read as what they look like (`i`/`l` as `1`, `o` as
/// `0`); `None` for any other shape (400, not counted as an attempt).
pub fn normalize(typed: &str) -> Option<Zeroizing<String>> {
    let bytes = typed.as_bytes();
    let raw: Vec<u8> = match bytes.len() {
        CODE_LEN => bytes.to_vec(),
        11 if bytes[5] == b'-' => bytes[..5].iter().chain(&bytes[6..]).copied().collect(),
        _ => return None,
    };
    let mut out = Zeroizing::new(String::with_capacity(CODE_LEN));
    for b in raw {
        let c = match b.to_ascii_lowercase() {
            b'i' | b'l' => b'1',
            b'o' => b'0',
            c if ALPHABET.contains(&c) => c,
            _ => return None,
        };
        out.push(char::from(c));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_ten_distinct_codes_of_the_alphabet() {
        let set = generate_set();
        assert_eq!(set.len(), 10);
        for code in &set {
            assert_eq!(code.len(), 11);
            assert_eq!(&code[5..6], "-");
            assert!(code.bytes().filter(|b| *b != b'-').all(|b| ALPHABET.contains(&b)), "{}", code.as_str());
            assert_eq!(normalize(code).as_deref().map(String::as_str), Some(code.replace('-', "").as_str()));
        }
        let distinct: std::collections::HashSet<&str> = set.iter().map(|c| c.as_str()).collect();
        assert_eq!(distinct.len(), 10);
    }

    #[test]
    fn typed_codes_normalise() {
        let want = Some("abcde12345".to_owned());
        for typed in ["abcde-12345", "ABCDE12345", "AbCdE-12345", "abcde12345"] {
            assert_eq!(normalize(typed).map(|c| c.to_string()), want, "{typed}");
        }
        assert_eq!(normalize("0o1il-00000").map(|c| c.to_string()), Some("00111 00000".replace(' ', "")));
        for bad in [
            "",
            "abcd",
            "abcde-1234",
            "abcde123456",
            "abcde_12345",
            "abcd-e12345",
            "abcde-1234u",
            "ab cde1234",
            "ümlaut1234",
        ] {
            assert!(normalize(bad).is_none(), "{bad}");
        }
    }
}
