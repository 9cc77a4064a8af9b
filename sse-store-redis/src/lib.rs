//! The redis backend of sse-core (being built).
