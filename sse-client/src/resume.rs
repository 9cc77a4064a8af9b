//! The state a client needs to carry on after its process restarts.

use serde::{Deserialize, Serialize};

/// Where a client is: its last event id and its session token. Save it (it is
/// `Serialize`), and give it to [`ClientBuilder::resume`](crate::ClientBuilder::resume) after
/// a restart: the new client continues exactly after the last event the old one yielded.
///
/// The token is a credential: `Debug` does not print it. Store it as you would a cookie.
///
/// ```
/// use resumable_sse_client::Resume;
///
/// let saved = Resume {
///     last_event_id: Some("AWOQYlkCTPJU86RNgocBAQ".into()),
///     session_token: Some("secret-token".into()),
/// };
/// let json = serde_json::to_string(&saved)?;
/// let back: Resume = serde_json::from_str(&json)?;
/// assert_eq!(back, saved);
/// assert!(!format!("{saved:?}").contains("secret-token"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The id to send as `Last-Event-ID` (`None`: start at the server's head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// The session token to send back (`None`: the server starts a new session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("last_event_id", &self.last_event_id)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
