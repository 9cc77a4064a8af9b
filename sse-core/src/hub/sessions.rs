//! Sessions as the hub sees them: resolving a request's token to a session, and what a
//! connection needs to know of it.

use std::time::SystemTime;

use super::Hub;
use crate::session::SessionRecord;
use crate::token::{TokenClaims, TokenError, TokenKeys};
use crate::{Error, Result, SessionId};

/// The session side of a connection request (see [`ResolvedSession::context`]).
#[derive(Clone, Debug)]
pub struct SessionContext {
    /// The session id; its private stream is added to the connection.
    pub id: SessionId,
    /// The cursor its previous connection reached, used when no `Last-Event-ID` is given.
    pub cursor: Option<String>,
    /// How the session was resolved.
    pub status: SessionStatus,
}

/// The outcome of [`Hub::resolve_session`] and [`Hub::find_session`].
#[derive(Clone, Debug)]
pub struct ResolvedSession {
    /// The session.
    pub record: SessionRecord,
    /// A freshly signed token for it, to return to the client.
    pub token: String,
    /// How it was found.
    pub status: SessionStatus,
}

impl ResolvedSession {
    /// Whether the session is in the session store already: a resumed one is; a new one
    /// (also after an expired token) only once [`Hub::store_session`] wrote it.
    pub fn is_new(&self) -> bool {
        self.status != SessionStatus::Resumed
    }

    /// What [`ConnectRequest::session`](crate::ConnectRequest::session) needs.
    pub fn context(&self) -> SessionContext {
        SessionContext {
            id: self.record.id,
            cursor: self.record.cursor.clone(),
            status: self.status,
        }
    }
}

/// How a request's session was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionStatus {
    /// No token, or one that is not genuine: a new session.
    New,
    /// A genuine token of a live session.
    Resumed,
    /// A genuine token whose session (or the token itself) has expired: a new session, and any
    /// cursor of the old one is answered with a `reset` (reason `session_expired`).
    Expired,
}

impl Hub {
    /// Resolves the session of a request from the token it brought (cookie or header) and the
    /// principal the application authenticated, creating a session when there is none:
    /// [`find_session`](Self::find_session) then [`store_session`](Self::store_session).
    ///
    /// Forged, tampered, malformed and expired tokens never resolve to an existing session:
    /// they yield a new one.
    ///
    /// # Errors
    ///
    /// As [`find_session`](Self::find_session) and [`store_session`](Self::store_session).
    pub async fn resolve_session(
        &self,
        token: Option<&str>,
        principal: Option<&str>,
    ) -> Result<ResolvedSession> {
        let resolved = self.find_session(token, principal).await?;
        self.store_session(&resolved).await?;
        Ok(resolved)
    }

    /// Finds the session of a request like [`resolve_session`](Self::resolve_session), but
    /// writes nothing: when the request has no live session of its own, the answer is a new
    /// session that exists only here until [`store_session`](Self::store_session) writes it.
    /// A server decides first whether the request is served at all, so that refused requests
    /// leave nothing behind in the store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> resumable_sse_core::Result<()> {
    /// # let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::default());
    /// # let hub = resumable_sse_core::Hub::builder(store.clone(), store).build();
    /// let found = hub.find_session(None, None).await?;
    /// assert!(found.is_new());
    /// assert!(hub.sessions().load(&found.record.id).await?.is_none(), "not written yet");
    /// hub.store_session(&found).await?;
    /// assert!(hub.sessions().load(&found.record.id).await?.is_some());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`] for an empty principal or one longer than
    /// [`TokenKeys::MAX_PRINCIPAL_LEN`] bytes (no token can be bound to it), [`Error::Forbidden`] when a genuine token is
    /// bound to a principal other than
    /// `principal` (an anonymous token presented with a principal, as after a login, gets a
    /// new session instead), and the session store's errors.
    pub async fn find_session(
        &self,
        token: Option<&str>,
        principal: Option<&str>,
    ) -> Result<ResolvedSession> {
        let inner = &self.inner;
        // A token cannot carry these: its session would never be found again, and every
        // connection would silently start a new one (found by tests/prop_token.rs).
        if principal.is_some_and(str::is_empty) {
            return Err(Error::InvalidField {
                field: "principal",
                reason: "it is empty",
            });
        }
        if principal.is_some_and(|p| p.len() > TokenKeys::MAX_PRINCIPAL_LEN) {
            return Err(Error::InvalidField {
                field: "principal",
                reason: "it is longer than 512 bytes",
            });
        }
        let now = SystemTime::now();
        let status = match token.map(|t| inner.keys.verify(t, now)) {
            // An anonymous session presented by a request that has since authenticated (a
            // login) is not reused: the user gets a session of their own.
            Some(Ok(claims)) if claims.principal.is_none() && principal.is_some() => {
                SessionStatus::New
            }
            Some(Ok(claims)) => {
                if claims.principal.as_deref() != principal {
                    return Err(Error::Forbidden(
                        "the session belongs to another principal".into(),
                    ));
                }
                match self.guarded(inner.sessions.load(&claims.session)).await? {
                    Some(record) if record.principal.as_deref() == principal => {
                        let token = self.sign(&record);
                        return Ok(ResolvedSession {
                            record,
                            token,
                            status: SessionStatus::Resumed,
                        });
                    }
                    Some(_) => {
                        return Err(Error::Forbidden(
                            "the session belongs to another principal".into(),
                        ));
                    }
                    None => SessionStatus::Expired,
                }
            }
            Some(Err(TokenError::Expired)) => SessionStatus::Expired,
            Some(Err(_)) => {
                tracing::debug!("refused a session token that is not genuine");
                SessionStatus::New
            }
            None => SessionStatus::New,
        };
        let record = SessionRecord::new(principal.map(str::to_owned), inner.config.session_ttl);
        let token = self.sign(&record);
        Ok(ResolvedSession {
            record,
            token,
            status,
        })
    }

    /// Writes a session [`find_session`](Self::find_session) made up to the session store;
    /// nothing for a session that was already there.
    ///
    /// # Errors
    ///
    /// The session store's errors.
    pub async fn store_session(&self, session: &ResolvedSession) -> Result<()> {
        if session.is_new() {
            self.guarded(self.inner.sessions.create(&session.record))
                .await?;
            tracing::debug!(session = %session.record.id, status = ?session.status, "created a session");
        }
        Ok(())
    }

    fn sign(&self, record: &SessionRecord) -> String {
        self.inner.keys.sign(&TokenClaims {
            session: record.id,
            expires_at: SystemTime::now() + self.inner.config.token_ttl,
            principal: record.principal.clone(),
        })
    }
}
