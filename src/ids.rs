//! Random, prefixed, URL-safe identifiers (`usr_…`, `team_…`, `host_…`, `sbx_…`, `key_…`, `tpl_…`).

use rand::RngExt;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new id: `prefix_` followed by 16 random lower-case alphanumerics (~82 bits).
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let tail: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{tail}")
}

/// True when `s` looks like an id with this prefix (safe to use as a path component).
pub fn is_valid(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|t| {
            !t.is_empty()
                && t.len() <= 60
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_are_unique() {
        let a = new_id("sbx");
        let b = new_id("sbx");
        assert!(a.starts_with("sbx_") && a.len() == 20);
        assert_ne!(a, b);
        assert!(is_valid("sbx", &a));
        assert!(!is_valid("sbx", "sbx_../etc"));
        assert!(!is_valid("sbx", "host_abc"));
        assert!(!is_valid("sbx", "sbx_"));
    }
}
