//! Signing keys and tokens: user JWTs, host JWTs (distinct audiences) and the Ed25519-signed
//! tokens that authenticate the server's calls to agents (built by
//! [`crate::crypto::agent_call`], which the agent shares).

pub mod keys;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::crypto::agent_call::{CallBinding, CallSigner};
use crate::server::db::now;

pub const ISSUER: &str = "sandboxctl";
pub const USER_AUDIENCE: &str = "sandboxctl-user";
pub const HOST_AUDIENCE: &str = "sandboxctl-host";
pub const USER_TOKEN_TTL_SECS: i64 = 24 * 3600;
pub const HOST_TOKEN_TTL_SECS: i64 = 7 * 86400;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserClaims {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub team: Option<String>,
    /// The session the token belongs to; a token works only while it is live. Tokens without
    /// one (made before sessions existed) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostClaims {
    pub sub: String,
    /// The host's token generation when issued; a bump voids the token.
    #[serde(default, rename = "gen")]
    pub generation: i64,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenKeys {
    /// Key for HMACs over short-lived values (the OAuth state cookie), derived from the JWT secret.
    mac_key: [u8; 32],
    hs_enc: EncodingKey,
    hs_dec: DecodingKey,
    calls: CallSigner,
    ed_public: String,
    /// Sandbox access tokens are derived with this (see [`TokenKeys::with_sandbox_access_key`]).
    access_key: [u8; 32],
}

impl TokenKeys {
    pub fn new(hs_secret: &[u8], ed: &crate::crypto::SigningKeyPair) -> anyhow::Result<TokenKeys> {
        let mut mac_key = [0u8; 32];
        mac_key.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(
            [b"sandboxctl-mac:".as_slice(), hs_secret].concat(),
        ));
        Ok(TokenKeys {
            mac_key,
            hs_enc: EncodingKey::from_secret(hs_secret)?,
            hs_dec: DecodingKey::from_secret(hs_secret)?,
            calls: CallSigner::new(ed),
            ed_public: ed.public_b64(),
            access_key: mac_key,
        })
    }

    /// Derives sandbox access tokens from `key` (the data dir's `sandbox-access.key`) instead of
    /// the JWT secret.
    pub fn with_sandbox_access_key(mut self, key: [u8; 32]) -> TokenKeys {
        self.access_key = key;
        self
    }

    /// The access token of sandbox `id` (its ports, its envd).
    pub fn sandbox_access_token(&self, id: &str) -> crate::crypto::Secret {
        crate::crypto::Secret(crate::crypto::sandbox_access_token(&self.access_key, id))
    }

    /// `value.MAC` where MAC is HMAC-SHA256 over `value` (base64url).
    pub fn seal(&self, value: &str) -> String {
        format!("{value}.{}", self.mac(value))
    }

    /// The value of a sealed string whose MAC checks out.
    pub fn unseal<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let (value, mac) = sealed.rsplit_once('.')?;
        crate::crypto::ct_eq(mac.as_bytes(), self.mac(value).as_bytes()).then_some(value)
    }

    fn mac(&self, value: &str) -> String {
        use base64::Engine;
        use hmac::{KeyInit, Mac};
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.mac_key)
            .expect("any key length works");
        m.update(value.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    }

    /// The public key agents pin at registration (base64url).
    pub fn agent_call_public_key(&self) -> &str {
        &self.ed_public
    }

    /// A user token for `session` (which ends at `expires_at`, and so does the token) with
    /// `team` active.
    pub fn user_token(
        &self,
        user_id: &str,
        email: &str,
        name: &str,
        team: Option<&str>,
        session: &str,
        expires_at: i64,
    ) -> anyhow::Result<String> {
        let claims = UserClaims {
            sub: user_id.into(),
            email: email.into(),
            name: name.into(),
            team: team.map(str::to_string),
            sid: Some(session.into()),
            iss: ISSUER.into(),
            aud: USER_AUDIENCE.into(),
            iat: now(),
            exp: expires_at,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.hs_enc,
        )?)
    }

    pub fn host_token(&self, host_id: &str, generation: i64) -> anyhow::Result<(String, i64)> {
        let t = now();
        let exp = t + HOST_TOKEN_TTL_SECS;
        let claims = HostClaims {
            sub: host_id.into(),
            generation,
            iss: ISSUER.into(),
            aud: HOST_AUDIENCE.into(),
            iat: t,
            exp,
        };
        Ok((
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.hs_enc)?,
            exp,
        ))
    }

    /// A token for one call on `host_id`, bound to its method, path, body and a fresh nonce.
    pub fn agent_call_token(&self, host_id: &str, call: &CallBinding) -> anyhow::Result<String> {
        self.calls.sign(host_id, call, now())
    }

    fn validation(aud: &str) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[aud]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.leeway = 5;
        v
    }

    pub fn verify_user(&self, token: &str) -> Option<UserClaims> {
        jsonwebtoken::decode::<UserClaims>(token, &self.hs_dec, &Self::validation(USER_AUDIENCE))
            .ok()
            .map(|d| d.claims)
    }

    pub fn verify_host(&self, token: &str) -> Option<HostClaims> {
        jsonwebtoken::decode::<HostClaims>(token, &self.hs_dec, &Self::validation(HOST_AUDIENCE))
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKeyPair;

    #[test]
    fn audiences_are_distinct() {
        let ed = SigningKeyPair::generate();
        let k = TokenKeys::new(b"0123456789abcdef0123456789abcdef", &ed).unwrap();
        let u = k
            .user_token(
                "usr_1",
                "a@b.c",
                "A",
                Some("team_1"),
                "ses_1",
                now() + USER_TOKEN_TTL_SECS,
            )
            .unwrap();
        let (h, _) = k.host_token("host_1", 0).unwrap();
        assert!(k.verify_user(&u).is_some());
        assert!(k.verify_host(&h).is_some());
        assert!(
            k.verify_user(&h).is_none(),
            "host token accepted as user token"
        );
        assert!(
            k.verify_host(&u).is_none(),
            "user token accepted as host token"
        );
        let other = TokenKeys::new(b"another secret another secret 12", &ed).unwrap();
        assert!(other.verify_user(&u).is_none());
    }

    #[test]
    fn sealed_values_detect_tampering() {
        let k = TokenKeys::new(
            b"0123456789abcdef0123456789abcdef",
            &SigningKeyPair::generate(),
        )
        .unwrap();
        let sealed = k.seal("state-123.1700000000");
        assert_eq!(k.unseal(&sealed), Some("state-123.1700000000"));
        assert_eq!(k.unseal(&sealed.replace("123", "124")), None);
        assert_eq!(k.unseal("nodot"), None);
        let other = TokenKeys::new(
            b"another secret another secret 12",
            &SigningKeyPair::generate(),
        )
        .unwrap();
        assert_eq!(other.unseal(&sealed), None);
    }
}
