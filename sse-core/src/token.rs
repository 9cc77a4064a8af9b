//! Signed session tokens.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(payload))` where the payload holds a
//! version byte, the 128-bit session id, the token's expiry (Unix milliseconds) and the bound
//! principal, if any. [`TokenKeys`] holds a list of keys: the first signs, every one verifies,
//! so a key can be rotated in without logging anyone out. Forged, tampered, expired and
//! malformed tokens are all refused; comparison of MACs is constant-time.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use resumable_sse_core::{SessionId, TokenClaims, TokenKeys};
//!
//! let old = TokenKeys::new([b"an old key of at least 32 bytes!!".to_vec()])?;
//! let claims = TokenClaims {
//!     session: SessionId::random(),
//!     expires_at: SystemTime::now() + Duration::from_secs(60),
//!     principal: Some("alice".into()),
//! };
//! let token = old.sign(&claims);
//!
//! // Rotation: a new key signs, the old one still verifies.
//! let rotated = TokenKeys::new([
//!     b"the new key, also 32 bytes or more".to_vec(),
//!     b"an old key of at least 32 bytes!!".to_vec(),
//! ])?;
//! assert_eq!(rotated.verify(&token, SystemTime::now())?.session, claims.session);
//!
//! // One flipped character and it is refused.
//! let mut tampered = token.clone().into_bytes();
//! tampered[3] ^= 1;
//! assert!(rotated.verify(std::str::from_utf8(&tampered)?, SystemTime::now()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::session::SessionId;
use crate::types::{from_unix_ms, unix_ms};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const MAX_TOKEN_LEN: usize = 1024;

/// What a token asserts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The session it names.
    pub session: SessionId,
    /// After this instant the token is refused.
    pub expires_at: SystemTime,
    /// The authenticated principal the session is bound to, if any.
    pub principal: Option<String>,
}

/// Why a token was refused. Deliberately coarse: the caller only needs to know it cannot be
/// trusted, and an attacker learns nothing from the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this format, or a bad signature.
    #[error("the session token is invalid")]
    Invalid,
    /// A valid token past its expiry.
    #[error("the session token has expired")]
    Expired,
}

/// The key given to [`TokenKeys::new`] was too short or the list was empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token keys: {0}")]
pub struct KeyError(&'static str);

/// The signing keys: the first signs, all verify.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<HmacSha256>,
}

impl TokenKeys {
    /// Shortest accepted key, in bytes.
    ///
    /// ```
    /// use resumable_sse_core::TokenKeys;
    ///
    /// assert!(TokenKeys::new([[7u8; TokenKeys::MIN_KEY_LEN - 1]]).is_err());
    /// assert!(TokenKeys::new([[7u8; TokenKeys::MIN_KEY_LEN]]).is_ok());
    /// ```
    pub const MIN_KEY_LEN: usize = 32;

    /// Longest principal, in bytes, a token can be bound to: a token signed for a longer one
    /// never verifies, so [`Hub::find_session`](crate::Hub::find_session) refuses such
    /// principals with an error rather than starting a new session on every connection.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use resumable_sse_core::{SessionId, TokenClaims, TokenKeys};
    ///
    /// let keys = TokenKeys::random();
    /// let claims = |len| TokenClaims {
    ///     session: SessionId::random(),
    ///     expires_at: SystemTime::now() + Duration::from_secs(60),
    ///     principal: Some("p".repeat(len)),
    /// };
    /// let fits = keys.sign(&claims(TokenKeys::MAX_PRINCIPAL_LEN));
    /// assert!(keys.verify(&fits, SystemTime::now()).is_ok());
    /// let too_long = keys.sign(&claims(TokenKeys::MAX_PRINCIPAL_LEN + 1));
    /// assert!(keys.verify(&too_long, SystemTime::now()).is_err());
    /// ```
    pub const MAX_PRINCIPAL_LEN: usize = 512;
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TokenKeys {
    /// Keys in order of preference: the first signs, all verify.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the list is empty or a key is shorter than 32 bytes.
    pub fn new<I, K>(keys: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let mut macs = Vec::new();
        for key in keys {
            let key = key.as_ref();
            if key.len() < Self::MIN_KEY_LEN {
                return Err(KeyError("every key must be at least 32 bytes"));
            }
            macs.push(HmacSha256::new_from_slice(key).map_err(|_| KeyError("unusable key"))?);
        }
        if macs.is_empty() {
            return Err(KeyError("at least one key is needed"));
        }
        Ok(TokenKeys { keys: macs })
    }

    /// One random key: tokens stay valid only as long as this value lives (one process).
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        TokenKeys {
            keys: vec![HmacSha256::new_from_slice(&key).expect("HMAC accepts any key length")],
        }
    }

    /// Signs `claims` with the first key. A principal longer than
    /// [`TokenKeys::MAX_PRINCIPAL_LEN`] bytes gives a token that never verifies, and an empty
    /// one verifies as no principal.
    pub fn sign(&self, claims: &TokenClaims) -> String {
        let mut payload = Vec::with_capacity(25 + claims.principal.as_ref().map_or(0, String::len));
        payload.push(VERSION);
        payload.extend_from_slice(claims.session.as_bytes());
        payload.extend_from_slice(&unix_ms(claims.expires_at).to_be_bytes());
        if let Some(p) = &claims.principal {
            payload.extend_from_slice(p.as_bytes());
        }
        let mut mac = self.keys[0].clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut token = URL_SAFE_NO_PAD.encode(&payload);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Verifies `token` against every key and checks its expiry against `now`.
    ///
    /// # Errors
    ///
    /// [`TokenError::Invalid`] for anything not signed by one of the keys,
    /// [`TokenError::Expired`] for a genuine token past its expiry.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let genuine = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(&payload);
            mac.verify_slice(&tag).is_ok()
        });
        if !genuine {
            return Err(TokenError::Invalid);
        }
        if payload.len() < 25
            || payload[0] != VERSION
            || payload.len() > 25 + Self::MAX_PRINCIPAL_LEN
        {
            return Err(TokenError::Invalid);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&payload[1..17]);
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&payload[17..25]);
        let expires_at = from_unix_ms(u64::from_be_bytes(expiry));
        let principal = match &payload[25..] {
            [] => None,
            bytes => Some(String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Invalid)?),
        };
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(TokenClaims {
            session: SessionId::from_bytes(id),
            expires_at,
            principal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn claims(principal: Option<&str>) -> TokenClaims {
        TokenClaims {
            session: SessionId::random(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            principal: principal.map(str::to_owned),
        }
    }

    #[test]
    fn roundtrip_and_principal() {
        let keys = TokenKeys::random();
        let c = claims(Some("bob"));
        let back = keys.verify(&keys.sign(&c), SystemTime::now()).unwrap();
        assert_eq!((back.session, back.principal), (c.session, c.principal));
        // Expiry travels with millisecond precision.
        let drift = c.expires_at.duration_since(back.expires_at).unwrap();
        assert!(drift < Duration::from_millis(1));
    }

    #[test]
    fn other_key_expired_and_garbage_are_refused() {
        let keys = TokenKeys::random();
        let token = keys.sign(&claims(None));
        assert_eq!(
            TokenKeys::random().verify(&token, SystemTime::now()),
            Err(TokenError::Invalid)
        );
        let later = SystemTime::now() + Duration::from_secs(61);
        assert_eq!(keys.verify(&token, later), Err(TokenError::Expired));
        for bad in ["", ".", "a.b", &"x".repeat(5000), "AQ.AQ"] {
            assert_eq!(
                keys.verify(bad, SystemTime::now()),
                Err(TokenError::Invalid)
            );
        }
        // Swapping payloads between two genuine tokens breaks the signature.
        let other = keys.sign(&claims(Some("mallory")));
        let forged = format!(
            "{}.{}",
            other.split_once('.').unwrap().0,
            token.split_once('.').unwrap().1
        );
        assert_eq!(
            keys.verify(&forged, SystemTime::now()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(TokenKeys::new([b"short".to_vec()]).is_err());
        assert!(TokenKeys::new(Vec::<Vec<u8>>::new()).is_err());
    }
}
