//! The span a connection's log lines go under, made when a line is logged rather than kept
//! open for the connection's life (ADR 0030).

use std::fmt;
use std::sync::Arc;

use crate::SessionId;

/// Makes the span of a connection's log lines.
#[derive(Clone)]
pub(super) struct MakeSpan(pub(super) Arc<dyn Fn() -> tracing::Span + Send + Sync>);

impl fmt::Debug for MakeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeSpan(..)")
    }
}

/// Where a connection's log lines go: under a span made for each line, or under the span
/// that was current when it opened, kept.
#[derive(Clone, Debug)]
enum Parent {
    Made(MakeSpan),
    Kept(tracing::Span),
}

/// What a connection logs under.
#[derive(Clone, Debug)]
pub(super) struct ConnectionLog {
    parent: Parent,
    session: Option<SessionId>,
    streams: usize,
}

impl ConnectionLog {
    /// Under `made` when given, else under the current span, kept.
    pub(super) fn new(made: Option<MakeSpan>, session: Option<SessionId>, streams: usize) -> Self {
        let parent = match made {
            Some(make) => Parent::Made(make),
            None => Parent::Kept(tracing::Span::current()),
        };
        ConnectionLog {
            parent,
            session,
            streams,
        }
    }

    /// The span for a line: a debug-level `sse.connection` span (session, streams) in the
    /// parent when debug spans are on, else the parent itself. Only called for lines that
    /// are logged (a `parent:` expression is evaluated only for an enabled event).
    pub(super) fn span(&self) -> tracing::Span {
        let parent = match &self.parent {
            Parent::Made(make) => (make.0)(),
            Parent::Kept(span) => span.clone(),
        };
        let session = self.session.map(|s| s.to_string()).unwrap_or_default();
        let span = tracing::debug_span!(
            parent: &parent,
            "sse.connection",
            session = %session,
            streams = self.streams
        );
        if span.is_disabled() { parent } else { span }
    }

    /// The session's id as the lines carry it (empty without a session).
    pub(super) fn session(&self) -> String {
        self.session.map(|s| s.to_string()).unwrap_or_default()
    }
}
