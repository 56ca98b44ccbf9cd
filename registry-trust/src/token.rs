//! Bearer tokens: generating the cluster token and comparing presented ones.

use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// Bytes of randomness in a generated token (256 bits).
pub const TOKEN_BYTES: usize = 32;

/// A fresh random token: 32 bytes from the thread's CSPRNG (seeded by the OS), base64url
/// without padding (43 characters, safe in headers, env and YAML).
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal contents, compared in time that depends only on the lengths: a caller probing a
/// token learns nothing from how long a refusal takes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_url_safe_and_long_enough() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn compare_needs_every_byte_and_the_length() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
