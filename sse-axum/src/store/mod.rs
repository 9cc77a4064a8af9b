//! Backend selection by URL, with backends compiled in by Cargo feature.

use std::sync::Arc;

use resumable_sse_core::{EventBuffer, Retention, SessionStore};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

/// The two halves of a backend.
#[derive(Clone, Debug)]
pub struct Stores {
    /// The event log.
    pub buffer: Arc<dyn EventBuffer>,
    /// The session store.
    pub sessions: Arc<dyn SessionStore>,
}

/// The URL names a backend this build does not have, or is not a store URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The backend exists but its Cargo feature is off.
    #[error("this build has no {backend} backend: enable the `{backend}` feature of sse-axum")]
    NotCompiled {
        /// The backend's name.
        backend: &'static str,
    },
    /// Not `memory`, `redis://…` or `postgres://…`. Holds the URL's scheme only: the rest may
    /// hold a password.
    #[error("unknown store {0:?}: use memory, redis://… or postgres://…")]
    Unknown(String),
    /// The backend could not be opened.
    #[error("could not open the store")]
    Open(#[source] resumable_sse_core::Error),
}

/// Opens the backend a URL names: `memory`, `redis://…` or `postgres://…`.
///
/// # Errors
///
/// [`OpenStoreError`] when the URL is unknown, its backend is not compiled in, or it cannot be
/// opened.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use resumable_sse_core::Retention;
///
/// let stores = resumable_sse_axum::open_store("memory", Retention::default()).await.unwrap();
/// let err = resumable_sse_axum::open_store("pigeon://user:secret@loft", Retention::default())
///     .await
///     .unwrap_err();
/// assert!(!format!("{err} {err:?}").contains("secret"), "never the password");
/// # }
/// ```
pub async fn open_store(url: &str, retention: Retention) -> Result<Stores, OpenStoreError> {
    // Unused when no backend feature is on.
    let _ = &retention;
    if url == "memory" {
        #[cfg(feature = "memory")]
        {
            let store = resumable_sse_store_memory::MemoryStore::new(
                resumable_sse_store_memory::MemoryConfig::default().with_retention(retention),
            );
            let store = Arc::new(store);
            return Ok(Stores {
                buffer: store.clone(),
                sessions: store,
            });
        }
        #[cfg(not(feature = "memory"))]
        return Err(OpenStoreError::NotCompiled { backend: "memory" });
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        #[cfg(feature = "redis")]
        return redis::open(url, retention).await;
        #[cfg(not(feature = "redis"))]
        return Err(OpenStoreError::NotCompiled { backend: "redis" });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return postgres::open(url, retention).await;
        #[cfg(not(feature = "postgres"))]
        return Err(OpenStoreError::NotCompiled {
            backend: "postgres",
        });
    }
    Err(OpenStoreError::Unknown(scheme_only(url)))
}

/// `scheme://…` of a URL, or the whole of a string without a scheme but only if it cannot
/// hold credentials: what an error may repeat of a store URL.
fn scheme_only(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://…"),
        None if url.contains(['@', ':']) => "…".to_owned(),
        None => url.to_owned(),
    }
}

/// A hub over a fresh in-memory store: the quickest start, one process only.
///
/// # Panics
///
/// Outside a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = resumable_sse_axum::memory_hub(resumable_sse_core::Config::default());
/// # }
/// ```
#[cfg(feature = "memory")]
pub fn memory_hub(config: resumable_sse_core::Config) -> resumable_sse_core::Hub {
    let store = Arc::new(resumable_sse_store_memory::MemoryStore::default());
    resumable_sse_core::Hub::builder(store.clone(), store)
        .config(config)
        .build()
}
