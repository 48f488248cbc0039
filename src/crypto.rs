//! Random tokens, hashing, constant-time comparison, passwords and the Ed25519 keys that sign
//! server → agent calls. Everything secret-shaped goes through here.

pub mod agent_call;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill(&mut b[..]);
    b
}

/// A random token `prefix` + 43 base64url characters (256 bits).
pub fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sandbox's access token (what its ports and its envd take): `sat_` + base64url of
/// HMAC-SHA256(`key`, sandbox id). Derived, never stored: the same key and id give it again
/// (across pauses and restarts); another server's key gives another token.
pub fn sandbox_access_token(key: &[u8; 32], sandbox_id: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<Sha256>::new_from_slice(key).expect("any key length works");
    m.update(b"sandbox-access:");
    m.update(sandbox_id.as_bytes());
    format!("sat_{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
}

pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The argon2id parameters OWASP recommends (19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    let params = argon2::Params::new(19 * 1024, 2, 1, None).expect("valid argon2 params");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password into a PHC string. Slow on purpose: call it off the async threads.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// A hash of a password nobody has, verified against when the user does not exist so that
/// unknown and known emails take the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_token("")).expect("argon2 works"))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// An Ed25519 key pair as the server keeps it: the 32-byte seed.
pub struct SigningKeyPair {
    seed: [u8; 32],
}

impl SigningKeyPair {
    pub fn generate() -> Self {
        Self {
            seed: random_bytes::<32>(),
        }
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { seed }
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// PKCS#8 v1 DER of the private key, as `jsonwebtoken::EncodingKey::from_ed_der` wants it.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&self.seed);
        der
    }

    /// The public key, base64url without padding (the JWK `x` value).
    pub fn public_b64(&self) -> String {
        let sk = ed25519_dalek::SigningKey::from_bytes(&self.seed);
        URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        assert_ne!(random_token("sk_"), random_token("sk_"));
        assert!(random_token("sk_").starts_with("sk_"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn ed25519_tokens_round_trip() {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
        let kp = SigningKeyPair::generate();
        let enc = EncodingKey::from_ed_der(&kp.pkcs8_der());
        let claims = serde_json::json!({"aud": "host_x", "exp": 4_000_000_000u64});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &enc).unwrap();
        let dec = DecodingKey::from_ed_components(&kp.public_b64()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["host_x"]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&t, &dec, &v).is_ok());
        let other = SigningKeyPair::generate();
        let dec2 = DecodingKey::from_ed_components(&other.public_b64()).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&t, &dec2, &v).is_err());
    }
}
