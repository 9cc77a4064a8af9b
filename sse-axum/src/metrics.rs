//! What the adapter counts, under the names of [`resumable_sse_core::metrics`].

/// Counts a refusal in [`REFUSALS_TOTAL`](resumable_sse_core::metrics::REFUSALS_TOTAL)
/// by `reason`: a limit's name, or an authorization refusal's code (`invalid_token`,
/// `insufficient_scope`). A no-op until the application installs a `metrics` recorder.
pub(crate) fn count_refusal(reason: &'static str) {
    metrics::counter!(resumable_sse_core::metrics::REFUSALS_TOTAL, "reason" => reason).increment(1);
}

/// Counts a connection the server dropped in
/// [`CONNECTIONS_DROPPED_TOTAL`](resumable_sse_core::metrics::CONNECTIONS_DROPPED_TOTAL) by
/// `reason` (`head_timeout`, `shed`, `body_timeout`).
pub(crate) fn count_dropped(reason: &'static str) {
    metrics::counter!(resumable_sse_core::metrics::CONNECTIONS_DROPPED_TOTAL, "reason" => reason)
        .increment(1);
}
