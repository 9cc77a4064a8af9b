//! The postgres backend of sse-core (being built).
