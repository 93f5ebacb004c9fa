//! A local uLogger cloud.
