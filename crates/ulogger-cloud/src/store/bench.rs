//! Bench-only: the store's file writer and in-memory map, opened to
//! `benches/store.rs` (as `ulogger_cloud::__bench_store`) so that it times
//! the library's own code against the crates that could replace it,
//! rather than compiling the library's files into the bench a second
//! time. Not part of the API: hidden from the docs, and it may change in
//! any release.

pub use super::lru::LruMap;
pub use super::Record;

impl Record {
    /// A record of `token`, issued to a device reporting `git_hash`.
    pub fn new(token: u32, git_hash: &str) -> Record {
        Record {
            token,
            git_hash: git_hash.to_owned(),
        }
    }

    /// The session token.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// The git hash the token was issued for.
    pub fn git_hash(&self) -> &str {
        &self.git_hash
    }
}

/// Writes `map` as the store writes its file (see `format::write`).
pub fn write(out: &mut Vec<u8>, map: &LruMap<Record>) {
    super::format::write(out, map);
}
