//! Who may subscribe and publish: the server's [`Authorize`] implementations.
//!
//! - [`Tokens`] (any `--jwt-key` or `--jwt-public-key` given): JWTs in `Authorization: Bearer`
//!   or the `sse_token` cookie, verified with the configured keys. `sub` is the principal,
//!   `exp` ends the authorization (and the event streams opened with it), `sse` holds the
//!   grants: `{"subscribe": [patterns], "publish": [patterns]}`. Requests without a token are
//!   anonymous: they may read the `--public-streams` and nothing else, and publish nothing.
//! - [`Development`] (no key): every stream is public, and only loopback clients may publish.
//!
//! Each key has its algorithm from the configuration (HS256 for a secret, RS256 or ES256 from
//! the public key's type), never from the token's header: a token whose `alg` is not the
//! algorithm of a configured key is refused, so a token "signed" with HS256 and a public key
//! as the secret (the classic confusion) is never checked against that public key. Tokens
//! are never read from the URL (a `token` or `access_token` parameter is refused: URLs end up
//! in logs and histories), and never logged.
//!
//! See docs/authentication.md.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use resumable_sse_axum::{Authorize, Identity, Refusal, Target};
use resumable_sse_core::{StreamName, async_trait};
use serde::Deserialize;

use crate::pattern::{Pattern, any_matches};

/// The cookie a browser application sets with the token.
pub(crate) const COOKIE_NAME: &str = "sse_token";
/// The shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash's size).
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// How far in the future a token's `nbf` may be (the issuer's clock may be ahead of ours).
const NBF_SKEW: Duration = Duration::from_secs(60);

/// An HS256 secret from the command line; never printed.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    // Checked later (`Tokens::new`): an error from here would print the value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What the command line says about authentication.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub(crate) secrets: Vec<Secret>,
    pub(crate) public_keys: Vec<PathBuf>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) public_streams: Vec<Pattern>,
}

impl Settings {
    /// Whether any key is configured (otherwise: development mode).
    pub(crate) fn has_keys(&self) -> bool {
        !self.secrets.is_empty() || !self.public_keys.is_empty()
    }
}

/// One configured key, with the only algorithm it verifies.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// JWT authentication: the mode when any key is configured.
pub(crate) struct Tokens {
    keys: Vec<Key>,
    public_streams: Vec<Pattern>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys themselves (HS256 secrets) are never printed.
        f.debug_struct("Tokens")
            .field("algorithms", &self.algorithms())
            .field("public_streams", &self.public_streams)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Loads the keys of `settings` (reading the PEM files).
    ///
    /// # Errors
    ///
    /// A secret shorter than [`MIN_SECRET_BYTES`], a PEM file that cannot be read or is no
    /// RSA or P-256 public key; the message names the flag or the file, never a secret.
    pub(crate) fn new(settings: &Settings) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, secret) in settings.secrets.iter().enumerate() {
            let bytes = secret.0.as_bytes();
            if bytes.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "--jwt-key #{}: an HS256 secret must be at least {MIN_SECRET_BYTES} bytes \
                     (this one has {})",
                    i + 1,
                    bytes.len()
                ));
            }
            let key = DecodingKey::from_secret(bytes)
                .map_err(|err| format!("--jwt-key #{}: {err}", i + 1))?;
            keys.push((Algorithm::HS256, key));
        }
        for path in &settings.public_keys {
            keys.push(public_key(path)?);
        }
        let keys = keys
            .into_iter()
            .map(|(algorithm, key)| Key {
                algorithm,
                key,
                validation: validation(algorithm, settings),
            })
            .collect();
        Ok(Tokens {
            keys,
            public_streams: settings.public_streams.clone(),
        })
    }

    /// The algorithm of each key, in order.
    pub(crate) fn algorithms(&self) -> Vec<Algorithm> {
        self.keys.iter().map(|k| k.algorithm).collect()
    }

    /// The identity `token` proves, or why it proves nothing.
    fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::invalid_token("the token is not a well-formed JWT"))?;
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .peekable();
        if candidates.peek().is_none() {
            return Err(Refusal::invalid_token(format!(
                "the token's algorithm ({:?}) is not the algorithm of any configured key",
                header.alg
            )));
        }
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return identity(data.claims),
                // Rotation: another key of the same algorithm may have signed it.
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => {}
                // The signature is checked before the claims: whatever else is wrong is
                // wrong whichever key verifies it.
                Err(err) => return Err(refusal(err.kind())),
            }
        }
        Err(Refusal::invalid_token(
            "the token's signature is not from any configured key",
        ))
    }
}

/// Reads a PEM public key: RSA (RS256) or EC P-256 (ES256), the algorithm from the key.
fn public_key(path: &Path) -> Result<(Algorithm, DecodingKey), String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|err| format!("--jwt-public-key {shown}: {err}"))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY") {
        return Err(format!(
            "--jwt-public-key {shown}: this is a private key; give the public key \
             (`openssl pkey -in private.pem -pubout -out public.pem`)"
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // The point's size tells the curve: 65 bytes uncompressed (33 compressed) on P-256.
        let p256 = match key.kind() {
            DecodingKeyKind::SecretOrDer(point) => matches!(
                (point.len(), point.first()),
                (65, Some(4)) | (33, Some(2 | 3))
            ),
            _ => false,
        };
        if !p256 {
            return Err(format!(
                "--jwt-public-key {shown}: only P-256 EC keys (ES256) are supported"
            ));
        }
        return Ok((Algorithm::ES256, key));
    }
    Err(format!(
        "--jwt-public-key {shown}: not a PEM public key (RSA for RS256, EC P-256 for ES256)"
    ))
}

/// The checks for tokens verified with a key of `algorithm`.
fn validation(algorithm: Algorithm, settings: &Settings) -> Validation {
    let mut validation = Validation::new(algorithm);
    // Our clock decides when a token ends, and the event streams opened with it end then:
    // no leeway, so a token is never accepted after the moment its streams would end.
    validation.leeway = 0;
    // RFC 7519 §4.1.4: valid *before* `exp`. The crate accepts a token during its `exp`
    // second; refusing tokens that expire within one second makes it `now < exp`, the moment
    // the event streams end.
    validation.reject_tokens_expiring_in_less_than = 1;
    validation.set_required_spec_claims(&["exp", "sub"]);
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        // Checked when given: tokens minted for a whole platform carry an `aud` too.
        None => validation.validate_aud = false,
    }
    validation
}

/// The claims the server reads.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    nbf: Option<u64>,
    /// Missing or `null`: no grants.
    #[serde(default)]
    sse: Option<RawGrants>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawGrants {
    subscribe: Vec<String>,
    publish: Vec<String>,
}

/// What a token allows, kept in its [`Identity`].
#[derive(Clone, Debug, Default)]
struct Grants {
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
}

fn identity(claims: Claims) -> Result<Identity, Refusal> {
    if claims.sub.is_empty() {
        return Err(Refusal::invalid_token("the token's `sub` is empty"));
    }
    if let Some(nbf) = claims.nbf {
        let not_before = UNIX_EPOCH + Duration::from_secs(nbf);
        if not_before > SystemTime::now() + NBF_SKEW {
            return Err(Refusal::invalid_token("the token is not valid yet (`nbf`)"));
        }
    }
    let raw = claims.sse.unwrap_or_default();
    let grants = Grants {
        subscribe: raw.subscribe.iter().map(|p| Pattern::lenient(p)).collect(),
        publish: raw.publish.iter().map(|p| Pattern::lenient(p)).collect(),
    };
    Ok(Identity::principal(claims.sub)
        .with_expiry(UNIX_EPOCH + Duration::from_secs(claims.exp))
        .with(grants))
}

/// The refusal for a token that failed `decode`: says what, never echoes the token.
fn refusal(kind: &ErrorKind) -> Refusal {
    Refusal::invalid_token(match kind {
        ErrorKind::ExpiredSignature => "the token expired".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer (`iss`) is not the expected one".into(),
        ErrorKind::InvalidAudience => "the token's audience (`aud`) is not the expected one".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's `{claim}` is malformed"),
        ErrorKind::Json(err) => format!("the token's claims are malformed: {err}"),
        ErrorKind::InvalidAlgorithm => {
            "the token's algorithm is not the one of the configured key".into()
        }
        ErrorKind::InvalidSignature => "the token's signature is not valid".into(),
        _ => "the token is not valid".into(),
    })
}

#[async_trait]
impl Authorize for Tokens {
    async fn identify(&self, parts: &Parts) -> Result<Identity, Refusal> {
        match credentials(parts)? {
            Some(token) => self.verify(token),
            None => Ok(Identity::anonymous()),
        }
    }

    async fn may_subscribe(&self, identity: &Identity, stream: &StreamName) -> Result<(), Refusal> {
        let name = stream.as_str();
        if any_matches(&self.public_streams, name) {
            return Ok(());
        }
        match identity.get::<Grants>() {
            Some(grants) if any_matches(&grants.subscribe, name) => Ok(()),
            Some(_) => Err(Refusal::insufficient_scope(format!(
                "the token does not grant subscribing to `{name}` (sse.subscribe)"
            ))),
            None => Err(Refusal::invalid_token(format!(
                "`{name}` is not a public stream: send a token (`Authorization: Bearer <token>` or \
                 the `{COOKIE_NAME}` cookie)"
            ))),
        }
    }

    async fn may_publish(&self, identity: &Identity, target: Target<'_>) -> Result<(), Refusal> {
        let Some(grants) = identity.get::<Grants>() else {
            return Err(Refusal::invalid_token(
                "publishing needs a token (`Authorization: Bearer <token>`)",
            ));
        };
        let stream = match target {
            Target::Stream(stream) => stream.clone(),
            Target::Session(session) => session.stream(),
            _ => return Err(Refusal::insufficient_scope("unknown publish target")),
        };
        if any_matches(&grants.publish, stream.as_str()) {
            Ok(())
        } else {
            Err(Refusal::insufficient_scope(format!(
                "the token does not grant publishing to `{stream}` (sse.publish)"
            )))
        }
    }
}

/// Development mode (no key): every stream is public, only loopback clients may publish.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Development;

/// Whether the request came from this machine, as the TCP peer says (never a header).
#[derive(Clone, Copy, Debug)]
struct Loopback(bool);

#[async_trait]
impl Authorize for Development {
    async fn identify(&self, parts: &Parts) -> Result<Identity, Refusal> {
        // Refused here too, so that nobody comes to rely on it before keys are configured.
        credentials(parts)?;
        let loopback = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
        Ok(Identity::anonymous().with(Loopback(loopback)))
    }

    async fn may_subscribe(&self, _: &Identity, _: &StreamName) -> Result<(), Refusal> {
        Ok(())
    }

    async fn may_publish(&self, identity: &Identity, _: Target<'_>) -> Result<(), Refusal> {
        if identity.get::<Loopback>().is_some_and(|l| l.0) {
            Ok(())
        } else {
            Err(Refusal::insufficient_scope(
                "the server is in development mode (no --jwt-key nor --jwt-public-key): only \
                 clients on its own machine (loopback) may publish",
            ))
        }
    }
}

/// The request's token: `Authorization: Bearer <token>`, else the `sse_token` cookie; `None`
/// without either. Refuses a token in the URL, and an `Authorization` that is not one bearer
/// token.
fn credentials(parts: &Parts) -> Result<Option<&str>, Refusal> {
    let in_url = parts.uri.query().is_some_and(|query| {
        query.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            key.eq_ignore_ascii_case("access_token") || key.eq_ignore_ascii_case("token")
        })
    });
    if in_url {
        return Err(Refusal::invalid_token(format!(
            "tokens are not accepted in the URL (it ends up in logs and histories): send \
             `Authorization: Bearer <token>` or the `{COOKIE_NAME}` cookie"
        )));
    }
    let mut authorization = parts.headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Err(Refusal::invalid_token("more than one Authorization header"));
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        return match token {
            Some(token) => Ok(Some(token)),
            None => Err(Refusal::invalid_token(
                "the Authorization header must be `Bearer <token>`",
            )),
        };
    }
    for header in parts.headers.get_all(COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for cookie in header.split(';') {
            if let Some((name, value)) = cookie.trim().split_once('=')
                && name.trim() == COOKIE_NAME
            {
                let value = value.trim().trim_matches('"');
                if !value.is_empty() {
                    return Ok(Some(value));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = axum::http::Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn credentials_come_from_the_header_or_the_cookie_never_the_url() {
        let none = parts("/events?stream=a", &[]);
        assert_eq!(credentials(&none), Ok(None));
        let header = parts("/events", &[("authorization", "bearer abc.def.ghi")]);
        assert_eq!(credentials(&header), Ok(Some("abc.def.ghi")));
        let cookie = parts("/events", &[("cookie", "x=1; sse_token=abc.def; y=2")]);
        assert_eq!(credentials(&cookie), Ok(Some("abc.def")));
        for uri in ["/events?access_token=abc", "/events?stream=a&TOKEN=abc"] {
            let refused = credentials(&parts(uri, &[])).unwrap_err();
            assert_eq!(refused.status(), 401);
        }
        let basic = parts("/events", &[("authorization", "Basic dXNlcjpwYXNz")]);
        assert!(credentials(&basic).is_err());
    }

    #[test]
    fn short_secrets_are_refused_without_being_echoed() {
        let settings = Settings {
            secrets: vec![Secret("too-short-secret".into())],
            ..Settings::default()
        };
        let err = Tokens::new(&settings).unwrap_err();
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains("too-short-secret"));
        assert_eq!(format!("{:?}", settings.secrets), "[Secret(..)]");
    }
}
