//! The session-token cache.
