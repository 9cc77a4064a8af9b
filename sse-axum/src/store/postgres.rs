//! `postgres://` URLs.

use sse_core::Retention;

use super::{OpenStoreError, Stores};

pub(super) async fn open(url: &str, retention: Retention) -> Result<Stores, OpenStoreError> {
    let _ = (url, retention);
    Err(OpenStoreError::NotCompiled {
        backend: "postgres",
    })
}
