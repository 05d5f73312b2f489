//! Keypair generation in Backend.AI's formats (21.03 #411).

use data_encoding::{BASE32_NOPAD, BASE64URL};
use rand::RngCore;

/// `AKIA` + base32 of 10 random bytes: 20 characters, `[A-Z2-7]` after the prefix.
pub fn generate_access_key() -> String {
    let mut buf = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    format!("AKIA{}", BASE32_NOPAD.encode(&buf))
}

/// URL-safe base64 of 30 random bytes: 40 characters, no padding needed.
pub fn generate_secret_key() -> String {
    let mut buf = [0u8; 30];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    BASE64URL.encode(&buf)
}

pub fn generate_keypair() -> (String, String) {
    (generate_access_key(), generate_secret_key())
}

pub fn is_valid_access_key(s: &str) -> bool {
    s.len() == 20
        && s.starts_with("AKIA")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

pub fn is_valid_secret_key(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Hashes a password as the original stores it: bcrypt with 12 rounds, `$2b$` prefix.
pub fn hash_password(plain: &str) -> Result<String, bcrypt::BcryptError> {
    bcrypt::hash_with_result(plain, 12).map(|h| h.format_for_version(bcrypt::Version::TwoB))
}

/// Verifies a password against a stored bcrypt hash (`$2a$`/`$2b$`/`$2y$`).
pub fn verify_password(plain: &str, hash: &str) -> bool {
    bcrypt::verify(plain, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        for _ in 0..100 {
            let (ak, sk) = generate_keypair();
            assert!(is_valid_access_key(&ak), "{ak}");
            assert!(is_valid_secret_key(&sk), "{sk}");
        }
        assert!(is_valid_access_key("AKIAIOSFODNN7EXAMPLE"));
        assert!(!is_valid_secret_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ));
    }

    #[test]
    fn bcrypt_prefix() {
        let h = bcrypt::hash_with_result("x", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        assert!(h.starts_with("$2b$04$"));
        assert!(verify_password("x", &h));
    }
}
