//! Cross-origin access: which pages on other origins may open event streams and publish.

use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};

use crate::SseLayer;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The origins allowed to reach the endpoints from a page on another origin.
///
/// Listed origins get CORS with credentials (the page's `EventSource` with
/// `withCredentials: true`, or `fetch` with `credentials: "include"`, sends and receives the
/// session cookie). [`any_origin`](Self::any_origin) lets every other page in too, but
/// without credentials: such a page's connections are token-less, so they see only what
/// anonymous clients see, and still resume exactly.
///
/// ```
/// use resumable_sse_axum::CorsOrigins;
///
/// let origins: CorsOrigins = ["https://app.example.com", "http://localhost:5173"]
///     .into_iter()
///     .map(str::parse)
///     .collect::<Result<_, _>>()?;
/// assert!(origins.allows_credentials("https://app.example.com"));
/// assert!(!origins.allows_credentials("https://evil.example"));
///
/// // `*`: any page, without credentials.
/// let any: CorsOrigins = "*".parse()?;
/// assert!(!any.allows_credentials("https://evil.example"));
/// # Ok::<(), resumable_sse_axum::InvalidOrigin>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsOrigins {
    listed: Vec<HeaderValue>,
    any: bool,
}

impl CorsOrigins {
    /// No origin allowed: a layer built from this answers no CORS request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `origin` (`scheme://host[:port]`, exactly as browsers send it in `Origin`),
    /// with credentials.
    ///
    /// # Errors
    ///
    /// [`InvalidOrigin`] for anything that is not an origin: a path, a trailing slash, a
    /// scheme other than `http` or `https`, upper-case letters.
    ///
    /// ```
    /// use resumable_sse_axum::CorsOrigins;
    ///
    /// let origins = CorsOrigins::new().allow("https://app.example.com")?;
    /// assert!(CorsOrigins::new().allow("https://app.example.com/").is_err());
    /// # Ok::<(), resumable_sse_axum::InvalidOrigin>(())
    /// ```
    pub fn allow(mut self, origin: &str) -> Result<Self, InvalidOrigin> {
        self.listed.push(parse_origin(origin)?);
        Ok(self)
    }

    /// Also allows every other origin, without credentials.
    ///
    /// ```
    /// let origins = resumable_sse_axum::CorsOrigins::new().any_origin();
    /// assert!(origins.allows("https://anywhere.example"));
    /// ```
    #[must_use]
    pub fn any_origin(mut self) -> Self {
        self.any = true;
        self
    }

    /// Whether a page on `origin` may make CORS requests at all.
    ///
    /// ```
    /// let origins = resumable_sse_axum::CorsOrigins::new().allow("https://a.example")?;
    /// assert!(origins.allows("https://a.example") && !origins.allows("https://b.example"));
    /// # Ok::<(), resumable_sse_axum::InvalidOrigin>(())
    /// ```
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.allows_credentials(origin)
    }

    /// Whether a page on `origin` may make CORS requests with credentials (cookies).
    ///
    /// ```
    /// let origins = resumable_sse_axum::CorsOrigins::new().allow("https://a.example")?.any_origin();
    /// assert!(origins.allows_credentials("https://a.example"));
    /// assert!(!origins.allows_credentials("https://b.example"));
    /// # Ok::<(), resumable_sse_axum::InvalidOrigin>(())
    /// ```
    pub fn allows_credentials(&self, origin: &str) -> bool {
        self.listed
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes())
    }

    /// Whether no origin is allowed.
    ///
    /// ```
    /// assert!(resumable_sse_axum::CorsOrigins::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        !self.any && self.listed.is_empty()
    }
}

impl std::str::FromStr for CorsOrigins {
    type Err = InvalidOrigin;

    /// One origin, or `*` for any origin without credentials.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            Ok(CorsOrigins::new().any_origin())
        } else {
            CorsOrigins::new().allow(s)
        }
    }
}

impl FromIterator<CorsOrigins> for CorsOrigins {
    fn from_iter<I: IntoIterator<Item = CorsOrigins>>(iter: I) -> Self {
        iter.into_iter().fold(CorsOrigins::new(), |mut all, one| {
            all.listed.extend(one.listed);
            all.any |= one.any;
            all
        })
    }
}

/// A value given as an origin that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an origin: give `scheme://host[:port]` in lower case, without a path or a \
     trailing slash (as browsers send it in the `Origin` header), or `*`"
)]
pub struct InvalidOrigin(String);

fn parse_origin(origin: &str) -> Result<HeaderValue, InvalidOrigin> {
    let invalid = || InvalidOrigin(origin.to_owned());
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(invalid)?;
    let host_chars = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':' | '[' | ']')
    };
    if rest.is_empty() || !rest.chars().all(host_chars) {
        return Err(invalid());
    }
    if let Some((host, port)) = rest.rsplit_once(':')
        && !host.ends_with(']')
        && (host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(invalid());
    }
    HeaderValue::from_str(origin).map_err(|_| invalid())
}

impl SseLayer {
    /// A [`CorsLayer`] for the endpoints of this layer: pages on `origins` may open event
    /// streams (with `Last-Event-ID` and this layer's session header), read the session
    /// header of the answer, and publish JSON (after a preflight). Credentials only for
    /// listed origins. Needs the `cors` feature.
    ///
    /// Put it outside the session layer (added after it), so that a preflight is answered
    /// before any session is looked at:
    ///
    /// ```
    /// use resumable_sse_axum::{CorsOrigins, SameSite, SseLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = resumable_sse_axum::memory_hub(Default::default());
    /// // The page is on another site: the cookie must be `SameSite=None` to come back.
    /// let layer = SseLayer::new(hub).with_same_site(SameSite::None);
    /// let cors = layer.cors("https://app.example.com".parse::<CorsOrigins>()?);
    /// let app: axum::Router = resumable_sse_axum::router(layer).layer(cors);
    /// # Ok(()) }
    /// ```
    pub fn cors(&self, origins: CorsOrigins) -> CorsLayer {
        let for_origin = origins.clone();
        let for_credentials = origins;
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(
                move |origin: &HeaderValue, _: &Parts| {
                    origin.to_str().is_ok_and(|o| for_origin.allows(o))
                },
            ))
            .allow_credentials(AllowCredentials::predicate(
                move |origin: &HeaderValue, _: &Parts| {
                    origin
                        .to_str()
                        .is_ok_and(|o| for_credentials.allows_credentials(o))
                },
            ))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                HeaderName::from_static("last-event-id"),
                self.shared.header.clone(),
                CONTENT_TYPE,
                AUTHORIZATION,
            ])
            .expose_headers([self.shared.header.clone()])
            .max_age(PREFLIGHT_MAX_AGE)
    }
}
