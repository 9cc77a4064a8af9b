//! The error type shared by every crate of the workspace.

use std::error::Error as StdError;

/// A boxed error from a storage backend, kept whole so its source chain survives.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in `sse-core` and in the stores built on it.
///
/// Backends convert their own error enums into [`Error::Store`] or [`Error::Unavailable`] with
/// `From` impls, so the original error stays reachable through [`std::error::Error::source`].
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum Error {
    /// A stream name was empty, longer than 128 bytes or held a byte outside `[A-Za-z0-9_.:/@-]`.
    #[error("invalid stream name: {0}")]
    InvalidStreamName(String),
    /// An event name or publisher id held CR, LF or NUL, was empty, or was too long.
    /// Such a value would inject fields into the SSE wire format, so it is refused at publish time.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Which field: `event` or `id`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The event data is larger than the configured maximum.
    #[error("event data is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size of the rejected data in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request may not read this stream (an authorizer said no, or it is another session's
    /// private stream), or the session belongs to another principal.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The thing named does not exist (an unknown or expired session).
    #[error("not found: {0}")]
    NotFound(String),
    /// The store is full: the append would take it over a budget it was given (the memory
    /// store's total bytes or number of streams). Nothing was appended. Unlike
    /// [`Error::Unavailable`], the store is up and answering; retrying helps only once
    /// retention has freed room (HTTP: `507 Insufficient Storage`).
    #[error("store full: {0}")]
    Full(String),
    /// The store could not be reached; the operation may succeed later.
    #[error("store unavailable")]
    Unavailable(#[source] BoxError),
    /// The store answered with an error.
    #[error("store error")]
    Store(#[source] BoxError),
}

impl Error {
    /// Wraps a backend error that means "the store is down, try again later".
    pub fn unavailable(err: impl Into<BoxError>) -> Self {
        Error::Unavailable(err.into())
    }

    /// Wraps any other backend error.
    pub fn store(err: impl Into<BoxError>) -> Self {
        Error::Store(err.into())
    }

    /// `true` when the store could not be reached ([`Error::Unavailable`]), whether it was
    /// asked or the [circuit breaker](crate::BreakerConfig) refused at once.
    ///
    /// ```
    /// use resumable_sse_core::Error;
    /// assert!(Error::unavailable(std::io::Error::other("refused")).is_unavailable());
    /// assert!(!Error::store(std::io::Error::other("bad reply")).is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// `true` when the store was not asked because the [circuit breaker](crate::BreakerConfig)
    /// is open: an [`Error::Unavailable`] whose source is [`CircuitOpen`](crate::CircuitOpen).
    ///
    /// ```
    /// use resumable_sse_core::{CircuitOpen, Error};
    /// assert!(Error::unavailable(CircuitOpen).is_circuit_open());
    /// assert!(!Error::unavailable(std::io::Error::other("refused")).is_circuit_open());
    /// ```
    pub fn is_circuit_open(&self) -> bool {
        match self {
            Error::Unavailable(source) => source.is::<crate::CircuitOpen>(),
            _ => false,
        }
    }

    /// `true` when the caller sent something invalid (a 4xx in HTTP terms).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidStreamName(_)
                | Error::InvalidField { .. }
                | Error::TooLarge { .. }
                | Error::Forbidden(_)
                | Error::NotFound(_)
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
