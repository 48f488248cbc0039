//! Signed server → agent calls, shared by both sides (docs/ARCHITECTURE.md#server-and-agent).
//!
//! Every call carries an EdDSA JWT (the server's key, which the agent pinned at registration)
//! whose claims bind it to one request: the method (`htm`), the path and query (`htu`), a SHA-256
//! digest of the body (`bsh`), the host id (`aud`), a fresh random nonce (`jti`) and an issue time
//! inside a short window (`iat`, `exp`). The agent refuses a token whose binding does not match
//! the request it received, whose time is outside the window, or whose nonce it has already seen
//! (`NonceCache`). [`CallBinding`] is the one place the bound values are built and compared, so the
//! server and the agent cannot disagree about the canonical form.
//!
//! A body that is streamed (file uploads, image imports) cannot be digested up front: it is bound
//! to the fixed value [`STREAMED_BODY`], which only routes that take a streamed body accept; the
//! nonce still makes every such call usable once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{SigningKeyPair, random_bytes, sha256_hex};

/// Issuer of every call token.
pub const ISSUER: &str = "sandboxctl";
/// How far a call's issue time may be from the agent's clock, and how long a token lives.
pub const WINDOW_SECS: i64 = 30;
/// The body binding of a call whose body is streamed (not digested).
pub const STREAMED_BODY: &str = "streamed";
/// Most nonces an agent remembers at once (a window's worth of calls); past it, calls are refused
/// until old nonces expire rather than forgetting one that could then be replayed.
pub const NONCE_CACHE_CAP: usize = 100_000;
/// Longest nonce accepted (the server sends 22 characters).
const MAX_NONCE_LEN: usize = 64;

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a call is bound to besides its host: method, path with query, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallBinding {
    /// Upper-case HTTP method.
    pub method: String,
    /// The request target as sent on the wire: path, then `?query` when there is one.
    pub path_and_query: String,
    /// Lower-case hex SHA-256 of the body, or [`STREAMED_BODY`].
    pub body: String,
}

impl CallBinding {
    /// A call whose whole body is `body` (empty for none).
    pub fn new(method: &str, path_and_query: &str, body: &[u8]) -> Self {
        Self::with_digest(method, path_and_query, sha256_hex(body))
    }

    /// A call whose body is streamed.
    pub fn streamed(method: &str, path_and_query: &str) -> Self {
        Self::with_digest(method, path_and_query, STREAMED_BODY.to_string())
    }

    fn with_digest(method: &str, path_and_query: &str, body: String) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path_and_query: path_and_query.to_string(),
            body,
        }
    }

    pub fn is_streamed(&self) -> bool {
        self.body == STREAMED_BODY
    }
}

/// The claims of a call token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallClaims {
    pub iss: String,
    /// The host id.
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// A random nonce: each token is good for one call.
    pub jti: String,
    /// Method.
    pub htm: String,
    /// Path and query.
    pub htu: String,
    /// Body digest (hex SHA-256) or [`STREAMED_BODY`].
    pub bsh: String,
}

impl CallClaims {
    /// Fresh claims for `binding` on `host_id`, issued at `now`, with a new nonce.
    pub fn new(host_id: &str, binding: &CallBinding, now: i64) -> Self {
        CallClaims {
            iss: ISSUER.into(),
            aud: host_id.into(),
            iat: now,
            exp: now + WINDOW_SECS,
            jti: URL_SAFE_NO_PAD.encode(random_bytes::<16>()),
            htm: binding.method.clone(),
            htu: binding.path_and_query.clone(),
            bsh: binding.body.clone(),
        }
    }

    /// The binding these claims carry.
    pub fn binding(&self) -> CallBinding {
        CallBinding {
            method: self.htm.clone(),
            path_and_query: self.htu.clone(),
            body: self.bsh.clone(),
        }
    }

    /// True when the token says it streams its body (then no digest can be checked).
    pub fn streams_body(&self) -> bool {
        self.bsh == STREAMED_BODY
    }
}

/// Why a call was refused. For logs only: the agent answers 401 without saying which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallRefused {
    #[error("not a call token signed by this host's server")]
    BadToken,
    #[error("the token is bound to another method, path or body")]
    WrongBinding,
    #[error("the token's time is outside the window")]
    OutsideWindow,
    #[error("the token's nonce was already used")]
    Replayed,
    #[error("too many calls in the window to remember their nonces")]
    CacheFull,
    #[error("this route does not take a streamed body")]
    StreamNotAllowed,
}

/// The server's side: signs calls with its Ed25519 key.
pub struct CallSigner {
    key: EncodingKey,
}

impl CallSigner {
    pub fn new(key: &SigningKeyPair) -> Self {
        Self {
            key: EncodingKey::from_ed_der(&key.pkcs8_der()),
        }
    }

    /// A token for one call of `binding` on `host_id`, issued at `now` (unix seconds).
    pub fn sign(&self, host_id: &str, binding: &CallBinding, now: i64) -> anyhow::Result<String> {
        self.sign_claims(&CallClaims::new(host_id, binding, now))
    }

    /// Signs claims as given (tests build odd ones).
    pub fn sign_claims(&self, claims: &CallClaims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &self.key,
        )?)
    }
}

/// The agent's side: checks a call against the pinned key, its host id, the request it came with,
/// the window and the nonces already seen.
pub struct CallVerifier {
    key: DecodingKey,
    validation: Validation,
    nonces: Mutex<NonceCache>,
}

impl CallVerifier {
    pub fn new(server_public_key_b64: &str, host_id: &str) -> anyhow::Result<Self> {
        Self::with_cache(server_public_key_b64, host_id, NONCE_CACHE_CAP)
    }

    pub fn with_cache(
        server_public_key_b64: &str,
        host_id: &str,
        cap: usize,
    ) -> anyhow::Result<Self> {
        let key = DecodingKey::from_ed_components(server_public_key_b64)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[host_id]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        // Times are checked by `accept` against an injected clock.
        validation.validate_exp = false;
        Ok(Self {
            key,
            validation,
            nonces: Mutex::new(NonceCache::new(cap)),
        })
    }

    /// The claims of a token signed by the pinned key for this host (nothing else checked yet:
    /// the agent needs `bsh` to know whether to digest the body).
    pub fn claims(&self, token: &str) -> Result<CallClaims, CallRefused> {
        jsonwebtoken::decode::<CallClaims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| CallRefused::BadToken)
    }

    /// Accepts the call once: the binding must match what was received, the time must be inside
    /// the window at `now`, and the nonce new. Only an accepted call uses up its nonce, so an
    /// altered copy sent first cannot burn the real one.
    pub fn accept(
        &self,
        claims: &CallClaims,
        received: &CallBinding,
        now: i64,
    ) -> Result<(), CallRefused> {
        if claims.binding() != *received {
            return Err(CallRefused::WrongBinding);
        }
        if claims.iat > now + WINDOW_SECS
            || now > claims.exp
            || claims.exp - claims.iat > WINDOW_SECS
        {
            return Err(CallRefused::OutsideWindow);
        }
        if claims.jti.is_empty() || claims.jti.len() > MAX_NONCE_LEN {
            return Err(CallRefused::BadToken);
        }
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(&claims.jti, claims.exp, now)
    }

    /// Checks a whole call at once (a token and what came with it).
    pub fn verify(&self, token: &str, received: &CallBinding, now: i64) -> Result<(), CallRefused> {
        let claims = self.claims(token)?;
        self.accept(&claims, received, now)
    }
}

/// Nonces seen, each kept until its token expires; at most `cap` at once.
#[derive(Debug)]
pub struct NonceCache {
    cap: usize,
    seen: HashMap<String, i64>,
    by_expiry: BTreeSet<(i64, String)>,
}

impl NonceCache {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Records `nonce` (good until `expires`) unless it was seen; forgets what expired before `now`.
    pub fn insert(&mut self, nonce: &str, expires: i64, now: i64) -> Result<(), CallRefused> {
        while let Some((t, _)) = self.by_expiry.first()
            && *t < now
        {
            if let Some((_, n)) = self.by_expiry.pop_first() {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(nonce) {
            return Err(CallRefused::Replayed);
        }
        if self.seen.len() >= self.cap {
            return Err(CallRefused::CacheFull);
        }
        self.seen.insert(nonce.to_string(), expires);
        self.by_expiry.insert((expires, nonce.to_string()));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn pair() -> (CallSigner, CallVerifier, SigningKeyPair) {
        let kp = SigningKeyPair::generate();
        let signer = CallSigner::new(&kp);
        let verifier = CallVerifier::new(&kp.public_b64(), "host_a").unwrap();
        (signer, verifier, kp)
    }

    #[test]
    fn the_binding_is_method_path_and_body_digest() {
        let b = CallBinding::new("post", "/v1/vms/sbx_1/exec?x=1", br#"{"cmd":"id"}"#);
        assert_eq!(b.method, "POST");
        assert_eq!(b.path_and_query, "/v1/vms/sbx_1/exec?x=1");
        assert_eq!(b.body, sha256_hex(br#"{"cmd":"id"}"#));
        assert!(!b.is_streamed());
        // No body is the digest of nothing, never the streamed marker.
        assert_eq!(
            CallBinding::new("GET", "/v1/vms", b"").body,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(CallBinding::streamed("PUT", "/v1/vms/x/files?path=%2Fa").is_streamed());
        let c = CallClaims::new("host_a", &b, NOW);
        assert_eq!(c.binding(), b);
        assert_eq!((c.aud.as_str(), c.iat, c.exp), ("host_a", NOW, NOW + 30));
        assert_ne!(
            c.jti,
            CallClaims::new("host_a", &b, NOW).jti,
            "fresh nonces"
        );
    }

    #[test]
    fn a_call_is_accepted_once_and_only_as_signed() {
        let (signer, v, _) = pair();
        let b = CallBinding::new("POST", "/v1/vms/sbx_1/exec", br#"{"cmd":"id"}"#);
        let t = signer.sign("host_a", &b, NOW).unwrap();
        for altered in [
            CallBinding::new("PUT", "/v1/vms/sbx_1/exec", br#"{"cmd":"id"}"#),
            CallBinding::new("POST", "/v1/vms/sbx_2/exec", br#"{"cmd":"id"}"#),
            CallBinding::new("POST", "/v1/vms/sbx_1/exec?x", br#"{"cmd":"id"}"#),
            CallBinding::new("POST", "/v1/vms/sbx_1/exec", br#"{"cmd":"sh"}"#),
            CallBinding::streamed("POST", "/v1/vms/sbx_1/exec"),
        ] {
            assert_eq!(
                v.verify(&t, &altered, NOW),
                Err(CallRefused::WrongBinding),
                "{altered:?}"
            );
        }
        // The altered attempts did not use up the nonce: the real call goes through, once.
        assert_eq!(v.verify(&t, &b, NOW + 1), Ok(()));
        assert_eq!(v.verify(&t, &b, NOW + 2), Err(CallRefused::Replayed));
        // Another host, another key, an HS256 token with the public key as secret: refused.
        let other = CallVerifier::new(&SigningKeyPair::generate().public_b64(), "host_a").unwrap();
        let t2 = signer.sign("host_a", &b, NOW).unwrap();
        assert_eq!(other.verify(&t2, &b, NOW), Err(CallRefused::BadToken));
        let (_, _, kp) = pair();
        let vb = CallVerifier::new(&kp.public_b64(), "host_b").unwrap();
        let t3 = CallSigner::new(&kp).sign("host_a", &b, NOW).unwrap();
        assert_eq!(vb.verify(&t3, &b, NOW), Err(CallRefused::BadToken));
        let hs = EncodingKey::from_secret(kp.public_b64().as_bytes()).unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &CallClaims::new("host_b", &b, NOW),
            &hs,
        )
        .unwrap();
        assert_eq!(vb.verify(&confused, &b, NOW), Err(CallRefused::BadToken));
        assert_eq!(v.verify("garbage", &b, NOW), Err(CallRefused::BadToken));
    }

    #[test]
    fn the_window_is_short_on_both_sides() {
        let (signer, v, _) = pair();
        let b = CallBinding::new("GET", "/v1/vms", b"");
        let at = |iat: i64| signer.sign("host_a", &b, iat).unwrap();
        assert_eq!(v.verify(&at(NOW - 30), &b, NOW), Ok(()), "30 s old");
        assert_eq!(
            v.verify(&at(NOW - 31), &b, NOW),
            Err(CallRefused::OutsideWindow)
        );
        assert_eq!(
            v.verify(&at(NOW + 30), &b, NOW),
            Ok(()),
            "server clock ahead"
        );
        assert_eq!(
            v.verify(&at(NOW + 31), &b, NOW),
            Err(CallRefused::OutsideWindow)
        );
        // A token that claims a longer life than the window is refused.
        let mut long = CallClaims::new("host_a", &b, NOW);
        long.exp = NOW + 3600;
        let t = signer.sign_claims(&long).unwrap();
        assert_eq!(v.verify(&t, &b, NOW), Err(CallRefused::OutsideWindow));
        // An empty or huge nonce is refused.
        for jti in [String::new(), "n".repeat(65)] {
            let mut c = CallClaims::new("host_a", &b, NOW);
            c.jti = jti;
            let t = signer.sign_claims(&c).unwrap();
            assert_eq!(v.verify(&t, &b, NOW), Err(CallRefused::BadToken));
        }
    }

    #[test]
    fn nonces_expire_with_the_window_and_the_cache_is_bounded() {
        let mut c = NonceCache::new(3);
        c.insert("a", NOW + 30, NOW).unwrap();
        assert_eq!(c.insert("a", NOW + 30, NOW + 5), Err(CallRefused::Replayed));
        c.insert("b", NOW + 35, NOW + 5).unwrap();
        c.insert("c", NOW + 40, NOW + 10).unwrap();
        // Full: a new nonce is refused rather than an old one forgotten early.
        assert_eq!(
            c.insert("d", NOW + 40, NOW + 10),
            Err(CallRefused::CacheFull)
        );
        assert_eq!(
            c.insert("a", NOW + 30, NOW + 30),
            Err(CallRefused::Replayed)
        );
        // Once "a" expired it is forgotten (its token is refused by the window anyway).
        c.insert("d", NOW + 61, NOW + 31).unwrap();
        assert_eq!(c.len(), 3);
        c.insert("e", NOW + 100, NOW + 70).unwrap();
        assert_eq!(c.len(), 1, "everything but e expired");
    }
}
