//! The session-token cache (PROTOCOL §9).
//!
//! Modules: `lru` (the in-memory ordered map), `format` (the file's JSON,
//! Python-compatible), `file` (durable writes and cross-process locking),
//! `error`; `bench` opens `lru` and `format` to `benches/store.rs`.

pub mod bench;
mod error;
mod file;
mod format;
mod lru;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use error::{StoreError, StoreOp};
use file::{LockGuard, Paths, Stamp};
use lru::LruMap;

/// The file name of the store inside its directory.
const FILE_NAME: &str = "session_tokens.json";

/// Cached session tokens, keyed by device serial.
///
/// A device's token stays valid while its firmware git hash stays the same
/// (PROTOCOL §3): [`get`](Self::get) with a different git hash is a miss.
/// Entries are kept in least- to most-recently-used order; with a
/// [capacity](Self::with_capacity) the least recently used entry is evicted
/// to make room.
///
/// # In memory or in a file
///
/// [`SessionStore::in_memory`] (also [`Default`]) keeps tokens for the life
/// of the value. [`SessionStore::open`] backs the store with a JSON file in
/// the format of the platform's Python SDK, so both can share
/// `~/.ulogger/session_tokens.json` ([`SessionStore::open_default`]).
///
/// With a file:
/// - every mutation ([`set`](Self::set), [`remove`](Self::remove),
///   [`clear`](Self::clear), [`flush`](Self::flush)) is durable when it
///   returns: the file is replaced atomically (temporary file, sync, rename,
///   directory sync), so it is never torn. It is created with mode `0600`,
///   its directory with `0700` when the store creates it.
/// - several processes (and several `SessionStore` values) may share the
///   file: each mutation holds an exclusive lock on `<file>.lock`, reloads
///   the file if someone else replaced it, applies the change and writes.
///   No process loses another's entries. Readers take no lock; every call
///   sees what other processes wrote before it (one `fstat` of the file it
///   last read when nothing changed), except that a lookup hit may rely on
///   a check made less than [`DEFAULT_MAX_STALENESS`] (1 ms) before it
///   ([`with_max_staleness`](Self::with_max_staleness) changes the bound;
///   zero checks at every call). The Python SDK does not take the
///   lock, so a Python writer racing with a Rust writer can still lose an
///   entry, as two Python writers can.
/// - mutations from several threads at once are written together (group
///   commit): the first caller that finds no write in progress writes, in
///   one rewrite and sync, every change queued by the time it holds the
///   file lock, and the callers whose changes it included return when it
///   is durable. No background thread is involved; registering many new
///   devices at once costs a few durable writes, not one each.
/// - a file that is not a cache file makes [`open`](Self::open) (and any
///   later call that reloads it) fail with [`StoreError::Corrupt`]; the
///   file is never overwritten. [`open_or_reset`](Self::open_or_reset)
///   moves it aside instead.
///
/// # Recency of reads
///
/// A [`get`](Self::get) of a cached serial makes it the most recently used
/// (whether or not the git hash matches, as in the Python SDK). With a
/// file, that refresh is **not** written by the `get` itself (a durable
/// write on every lookup would make lookups cost milliseconds): it is
/// persisted with the next mutation from this value, replayed on top of
/// whatever other processes wrote meanwhile, or by [`flush`](Self::flush).
/// Refreshes not yet persisted when the value is dropped are lost; only the
/// eviction order suffers, never an entry. To replay them, the store
/// remembers at most the 4,096 most recent refreshed serials (or its
/// capacity, if smaller) between writes, so memory stays bounded however
/// many devices are looked up.
///
/// # Sharing
///
/// `SessionStore` is `Send + Sync` and every method takes `&self` (a mutex
/// inside); share one between tasks or threads in an `Arc`. Methods of a
/// file-backed store block on file I/O (a mutation waits for the disk, a
/// few milliseconds): from async code, call them in `spawn_blocking`.
///
/// Tokens never appear in the `Debug` output of the store or its entries.
///
/// # Example
///
/// ```
/// use ulogger_cloud::SessionStore;
///
/// let dir = tempfile::tempdir()?;
/// let store = SessionStore::open(dir.path().join("session_tokens.json"))?;
/// store.set("SN-0001", 0x1234_5678, "abc1234")?;
/// assert_eq!(store.get("SN-0001", "abc1234")?, Some(0x1234_5678));
/// // New firmware: a miss, so the device registers again.
/// assert_eq!(store.get("SN-0001", "def5678")?, None);
///
/// // Another process (here, another value) sees the entry.
/// let again = SessionStore::open(dir.path().join("session_tokens.json"))?;
/// assert_eq!(again.entries()?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SessionStore {
    state: Mutex<State>,
    /// The file of a file-backed store; fixed at construction, so a
    /// mutation can choose its path without waiting for `state`.
    file: Option<PathBuf>,
    /// Mutations of a file-backed store on their way into a group write.
    queue: Mutex<Queue>,
    /// Signalled whenever a group write finishes.
    written: Condvar,
}

/// A mutation of a file-backed store, waiting for the write that makes it
/// durable.
enum Change {
    Set {
        serial: String,
        token: u32,
        git_hash: String,
    },
    Remove(String),
    Clear,
    /// No change of content: only the pending recency refreshes.
    Flush,
}

/// Group commit without a background thread: every mutation joins the
/// queue; the first caller that finds nobody writing becomes the writer
/// for everything queued when it holds the file lock (its own change
/// included), and the others wait for the outcome of the write that
/// included theirs.
#[derive(Default)]
struct Queue {
    waiting: Vec<(u64, Change)>,
    next_ticket: u64,
    /// A caller is writing a group.
    writing: bool,
    /// The tickets of the group being written.
    in_flight: Vec<u64>,
    /// Outcomes of finished writes, by ticket, until their callers take
    /// them: whether the change changed anything (for `remove`), or the
    /// write's error.
    done: HashMap<u64, Result<bool, StoreError>>,
}

/// One cached token, as listed by [`SessionStore::entries`].
#[derive(Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TokenEntry {
    /// The device serial.
    pub serial: String,
    /// The session token the cloud issued to the device.
    pub token: u32,
    /// The firmware git hash the token was issued for.
    pub git_hash: String,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("serial", &self.serial)
            .field("token", &"<redacted>")
            .field("git_hash", &self.git_hash)
            .finish()
    }
}

/// The value stored per serial.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    token: u32,
    git_hash: String,
}

struct State {
    map: LruMap<Record>,
    capacity: Option<NonZeroUsize>,
    backing: Option<Backing>,
}

/// What a file-backed store knows about its file.
struct Backing {
    paths: Paths,
    /// Opened at the first mutation and kept; reopened if the lock file
    /// was deleted or replaced.
    lock: Option<std::fs::File>,
    synced: Synced,
    /// Serials looked up since the last write, least recent first: replayed
    /// onto a reloaded file so that lazily persisted recency is not lost.
    /// At most [`touched_limit`] of them, the most recent.
    touched: LruMap<()>,
    /// The map differs from the file (touches or a capacity trim).
    dirty: bool,
    /// The file's bytes are built here; kept (it is smaller than the map)
    /// to avoid reallocating, and so that a new entry can be appended to
    /// it rather than everything re-serialised.
    buffer: Vec<u8>,
    /// The `map.version()` that `buffer` holds, if it still holds one.
    buffer_version: Option<u64>,
    /// Durable writes made (group writes count once).
    writes: u64,
    /// How long a lookup hit may rely on the last check of the file
    /// ([`SessionStore::with_max_staleness`]); zero: every call checks.
    max_staleness: Duration,
    /// When the map was last known to match the file.
    checked_at: Option<Instant>,
    /// Makes the next write panic, to test that callers are not stranded.
    #[cfg(test)]
    panic_on_write: bool,
}

/// The most recency refreshes a file-backed store remembers between
/// writes (fewer with a smaller capacity).
///
/// They only matter when another process replaces the file before our next
/// write: they are then replayed on top of its file. Remembering the most
/// recent few thousand keeps the eviction order right for the devices in
/// use; older refreshes are forgotten, which can only make an entry be
/// evicted earlier, never lose one that is in use. Without a bound, a
/// gateway that looks up many devices and rarely registers one would keep
/// a second copy of every looked-up serial.
pub(crate) const TOUCHED_MAX: usize = 4096;

/// How long, by default, a lookup hit in a file-backed store may rely on
/// the last check of the file ([`SessionStore::with_max_staleness`]).
///
/// Checking is one `fstat`, most of a lookup's cost (0.5 µs against
/// 0.2 µs). A gateway looking up tokens as fast as it uploads checks once
/// per millisecond instead of once per upload, and one that looks up now
/// and then checks every time; either way another process's write is seen
/// within a millisecond, where the Python SDK never re-reads the file.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(1);

fn touched_limit(capacity: Option<NonZeroUsize>) -> usize {
    capacity.map_or(TOUCHED_MAX, |c| c.get().min(TOUCHED_MAX))
}

/// Which version of the file `State::map` reflects.
enum Synced {
    /// Unknown (initially, or after a failed write): reload before use.
    Unknown,
    /// There was no file.
    Missing,
    /// This version; the handle pins its inode (see [`Stamp`]) and tells,
    /// with one `fstat`, whether the file is still this version.
    File { handle: std::fs::File, stamp: Stamp },
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock_state();
        f.debug_struct("SessionStore")
            .field(
                "path",
                &state.backing.as_ref().map(|b| b.paths.file.as_path()),
            )
            .field("len", &state.map.len())
            .field("capacity", &state.capacity)
            .finish()
    }
}

impl SessionStore {
    /// A store that lives in memory only.
    pub fn in_memory() -> Self {
        Self::with_state(State {
            map: LruMap::default(),
            capacity: None,
            backing: None,
        })
    }

    /// Opens the store backed by the file at `path`, loading it if it
    /// exists. The file and its directory are created at the first write.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the file exists but is not a cache file
    /// (it is left as it is), [`StoreError::Io`] when it cannot be read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let store = Self::with_state(State {
            map: LruMap::default(),
            capacity: None,
            backing: Some(Backing {
                paths: Paths::new(path.as_ref())?,
                lock: None,
                synced: Synced::Unknown,
                touched: LruMap::default(),
                dirty: false,
                buffer: Vec::new(),
                buffer_version: None,
                writes: 0,
                max_staleness: DEFAULT_MAX_STALENESS,
                checked_at: None,
                #[cfg(test)]
                panic_on_write: false,
            }),
        });
        store.lock_state().refresh()?;
        Ok(store)
    }

    /// Like [`open`](Self::open), but a corrupt file is renamed to
    /// `<file>.corrupt-<unix seconds>` and the store starts empty.
    ///
    /// Returns the store and, when a file was moved aside, its new path
    /// (also logged as a warning), so the caller can tell the user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the file cannot be read or moved.
    pub fn open_or_reset(path: impl AsRef<Path>) -> Result<(Self, Option<PathBuf>), StoreError> {
        match Self::open(path.as_ref()) {
            Err(StoreError::Corrupt { .. }) => {}
            other => return other.map(|store| (store, None)),
        }
        let paths = Paths::new(path.as_ref())?;
        let lock = file::open_lock(&paths)?;
        let guard = LockGuard::acquire(&lock, &paths.lock)?;
        // Under the lock, so that of two processes resetting at once only
        // the first moves the file, and a file another process repaired
        // meanwhile is kept.
        let moved = match file::read(&paths.file) {
            Ok(Some(snapshot)) if format::parse(&snapshot.bytes).is_ok() => None,
            Ok(None) => None,
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => {
                let moved = file::move_aside(&paths)?;
                tracing::warn!(
                    path = %paths.file.display(),
                    moved_to = %moved.display(),
                    "session store was corrupt; moved it aside and started empty"
                );
                Some(moved)
            }
            Err(e) => return Err(e),
        };
        drop(guard);
        let store = Self::open(&paths.file)?;
        Ok((store, moved))
    }

    /// Opens the store at [`default_path`](Self::default_path), the file
    /// the Python SDK uses.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), and [`StoreError::NoHomeDir`].
    pub fn open_default() -> Result<Self, StoreError> {
        Self::open(Self::default_path()?)
    }

    /// `$ULOGGER_HOME/session_tokens.json` when `ULOGGER_HOME` is set,
    /// else `$HOME/.ulogger/session_tokens.json`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoHomeDir`] when neither variable is set (or both are
    /// empty).
    pub fn default_path() -> Result<PathBuf, StoreError> {
        default_path_from(std::env::var_os("ULOGGER_HOME"), std::env::var_os("HOME"))
    }

    /// Limits the store to `capacity` entries; the least recently used are
    /// evicted to make room. Entries beyond the capacity already in the
    /// store are dropped now (from the file at the next write). Without
    /// this call the store is unbounded; a capacity of zero cannot be
    /// expressed.
    ///
    /// With a shared file the capacity applies to the whole file at each
    /// write from this value.
    #[must_use]
    pub fn with_capacity(self, capacity: NonZeroUsize) -> Self {
        {
            let mut state = self.lock_state();
            state.capacity = Some(capacity);
            state.enforce_capacity();
        }
        self
    }

    /// Lets a [`get`](Self::get) that finds the token rely on this store's
    /// view of the file for up to `max_staleness` since it last checked
    /// the file, instead of checking at every call (one `fstat`, which is
    /// most of a lookup's cost). Default: [`DEFAULT_MAX_STALENESS`], 1 ms;
    /// `Duration::ZERO` checks at every call.
    ///
    /// What may be stale is only a hit: a token that another process
    /// replaced for the same serial and firmware within the window is
    /// returned until the window ends. Misses (and git-hash mismatches),
    /// every other method and every write check the file as before, and
    /// this store's own writes are always seen. `Duration::MAX` means
    /// hits never check. No effect on an in-memory store.
    #[must_use]
    pub fn with_max_staleness(self, max_staleness: Duration) -> Self {
        if let Some(backing) = self.lock_state().backing.as_mut() {
            backing.max_staleness = max_staleness;
        }
        self
    }

    /// The capacity, `None` when unbounded.
    pub fn capacity(&self) -> Option<NonZeroUsize> {
        self.lock_state().capacity
    }

    /// The backing file, `None` for an in-memory store.
    pub fn path(&self) -> Option<PathBuf> {
        self.lock_state()
            .backing
            .as_ref()
            .map(|b| b.paths.file.clone())
    }

    /// The token cached for `serial`, if it was issued for `git_hash`.
    ///
    /// A cached serial becomes the most recently used whether or not the
    /// git hash matches; a different git hash returns `None` but keeps the
    /// entry (until [`set`](Self::set) replaces it).
    ///
    /// # Errors
    ///
    /// With a file, when another process replaced it and the new file
    /// cannot be read or is corrupt.
    pub fn get(&self, serial: &str, git_hash: &str) -> Result<Option<u32>, StoreError> {
        let mut state = self.lock_state();
        if !state.checked_recently() || !state.is_hit(serial, git_hash) {
            state.refresh()?;
        }
        let was_most_recent = state.map.is_most_recent(serial);
        let token = match state.map.touch(serial) {
            None => return Ok(None),
            Some(record) => (record.git_hash == git_hash).then_some(record.token),
        };
        let limit = touched_limit(state.capacity);
        if let Some(backing) = state.backing.as_mut() {
            if !was_most_recent {
                if backing.touched.touch(serial).is_none() {
                    backing.touched.insert(serial.to_string(), ());
                    backing.touched.trim_to(limit);
                }
                backing.dirty = true;
            }
        }
        Ok(token)
    }

    /// The entry for `serial` whatever its git hash, without making it more
    /// recently used (for tools that list or inspect the cache).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn get_entry(&self, serial: &str) -> Result<Option<TokenEntry>, StoreError> {
        let mut state = self.lock_state();
        state.refresh()?;
        Ok(state.map.peek(serial).map(|record| TokenEntry {
            serial: serial.to_string(),
            token: record.token,
            git_hash: record.git_hash.clone(),
        }))
    }

    /// Caches `token` for `serial` at firmware `git_hash`, replacing any
    /// entry for `serial` whatever its git hash. The entry becomes the most
    /// recently used; with a capacity, the least recently used entries are
    /// evicted to make room.
    ///
    /// # Errors
    ///
    /// With a file: [`StoreError::Io`] when the change cannot be made
    /// durable (the store then reloads the file at the next call),
    /// [`StoreError::Corrupt`] when another process left a corrupt file.
    pub fn set(&self, serial: &str, token: u32, git_hash: &str) -> Result<(), StoreError> {
        self.commit(Change::Set {
            serial: serial.to_string(),
            token,
            git_hash: git_hash.to_string(),
        })
        .map(drop)
    }

    /// Removes the entry for `serial` (forcing a new boot registration).
    /// Returns whether there was one.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn remove(&self, serial: &str) -> Result<bool, StoreError> {
        self.commit(Change::Remove(serial.to_string()))
    }

    /// Removes every entry.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.commit(Change::Clear).map(drop)
    }

    /// Writes recency refreshes from [`get`](Self::get) that are not yet
    /// in the file. Does nothing for an in-memory store or when there are
    /// none.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn flush(&self) -> Result<(), StoreError> {
        let dirty = self.lock_state().backing.as_ref().is_some_and(|b| b.dirty);
        if dirty {
            self.commit(Change::Flush)?;
        }
        Ok(())
    }

    /// The number of cached entries.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn len(&self) -> Result<usize, StoreError> {
        let mut state = self.lock_state();
        state.refresh()?;
        Ok(state.map.len())
    }

    /// True when no entry is cached.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }

    /// Every entry, from the least to the most recently used.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn entries(&self) -> Result<Vec<TokenEntry>, StoreError> {
        let mut state = self.lock_state();
        state.refresh()?;
        Ok(state
            .map
            .iter()
            .map(|(serial, record)| TokenEntry {
                serial: serial.to_string(),
                token: record.token,
                git_hash: record.git_hash.clone(),
            })
            .collect())
    }

    fn with_state(state: State) -> Self {
        SessionStore {
            file: state.backing.as_ref().map(|b| b.paths.file.clone()),
            state: Mutex::new(state),
            queue: Mutex::new(Queue::default()),
            written: Condvar::new(),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // No method leaves the state half-updated across a panic point,
        // and a failed write marks the file for reload anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // Every update of the queue is a single step.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change`; with a file, returns once a write that includes
    /// it is durable (see [`Queue`]). Returns whether the change changed
    /// anything.
    fn commit(&self, change: Change) -> Result<bool, StoreError> {
        let Some(file) = &self.file else {
            let mut state = self.lock_state();
            let capacity = state.capacity;
            return Ok(apply(&mut state.map, capacity, change));
        };
        let mut queue = self.lock_queue();
        let ticket = queue.next_ticket;
        queue.next_ticket = ticket.wrapping_add(1);
        queue.waiting.push((ticket, change));
        loop {
            if let Some(outcome) = queue.done.remove(&ticket) {
                return outcome;
            }
            if queue.writing {
                queue = self
                    .written
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            queue.writing = true;
            drop(queue);
            let writer = Writer { store: self, file };
            let outcomes = self.lock_state().write_group(|| {
                let mut queue = self.lock_queue();
                let batch = std::mem::take(&mut queue.waiting);
                queue.in_flight = batch.iter().map(|&(ticket, _)| ticket).collect();
                batch
            });
            {
                let mut queue = self.lock_queue();
                queue.in_flight.clear();
                queue.done.extend(outcomes);
            }
            drop(writer);
            queue = self.lock_queue();
        }
    }
}

/// Ends a group write, even if the writer panicked (a bug): then the
/// changes it took fail rather than leave their callers, and every later
/// mutation, waiting for a write that will never finish.
struct Writer<'a> {
    store: &'a SessionStore,
    file: &'a Path,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The map may hold changes the file does not: reload it.
            if let Some(backing) = self.store.lock_state().backing.as_mut() {
                backing.synced = Synced::Unknown;
                backing.checked_at = None;
            }
        }
        let mut queue = self.store.lock_queue();
        queue.writing = false;
        for ticket in std::mem::take(&mut queue.in_flight) {
            let failed = std::io::Error::other(
                "the thread writing this change panicked; the change may not be in the file",
            );
            queue.done.insert(
                ticket,
                Err(StoreError::io(self.file, StoreOp::Write, failed)),
            );
        }
        drop(queue);
        self.store.written.notify_all();
    }
}

/// Applies one change to the map; returns whether it changed anything.
fn apply(map: &mut LruMap<Record>, capacity: Option<NonZeroUsize>, change: Change) -> bool {
    match change {
        Change::Set {
            serial,
            token,
            git_hash,
        } => {
            if let Some(capacity) = capacity {
                if !map.contains(&serial) {
                    map.trim_to(capacity.get() - 1);
                }
            }
            map.insert(serial, Record { token, git_hash });
            true
        }
        Change::Remove(serial) => map.remove(&serial).is_some(),
        Change::Clear => {
            map.clear();
            true
        }
        Change::Flush => false,
    }
}

fn default_path_from(
    ulogger_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf, StoreError> {
    if let Some(dir) = ulogger_home.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join(FILE_NAME));
    }
    if let Some(home) = home.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join(".ulogger").join(FILE_NAME));
    }
    Err(StoreError::NoHomeDir)
}

impl State {
    /// True when a hit may skip checking the file: it was checked less
    /// than `max_staleness` ago.
    fn checked_recently(&self) -> bool {
        let Some(backing) = self.backing.as_ref() else {
            return true;
        };
        !backing.max_staleness.is_zero()
            && backing
                .checked_at
                .is_some_and(|at| at.elapsed() < backing.max_staleness)
    }

    fn is_hit(&self, serial: &str, git_hash: &str) -> bool {
        self.map
            .peek(serial)
            .is_some_and(|record| record.git_hash == git_hash)
    }

    /// Reloads the file if it is not the version the map reflects.
    fn refresh(&mut self) -> Result<(), StoreError> {
        let Some(backing) = self.backing.as_mut() else {
            return Ok(());
        };
        // Taken before the check (a write that lands during it counts as
        // after it) and kept only if the check succeeds.
        let checking_at = (!backing.max_staleness.is_zero()).then(Instant::now);
        backing.checked_at = None;
        let unchanged = match &mut backing.synced {
            Synced::Unknown => false,
            Synced::Missing => file::stamp(&backing.paths.file)?.is_none(),
            Synced::File { handle, stamp } => {
                file::is_unchanged(&backing.paths.file, handle, stamp)?
            }
        };
        if unchanged {
            backing.checked_at = checking_at;
            return Ok(());
        }
        backing.synced = Synced::Unknown;
        // The map is about to be replaced, versions and all.
        backing.buffer_version = None;
        match file::read(&backing.paths.file)? {
            None => {
                self.map.clear();
                backing.synced = Synced::Missing;
            }
            Some(snapshot) => {
                self.map = format::parse(&snapshot.bytes)
                    .map_err(|reason| StoreError::corrupt(&backing.paths.file, reason))?;
                backing.synced = Synced::File {
                    handle: snapshot.handle,
                    stamp: snapshot.stamp,
                };
            }
        }
        backing.checked_at = checking_at;
        for (serial, ()) in backing.touched.iter() {
            self.map.touch(serial);
        }
        self.enforce_capacity();
        Ok(())
    }

    fn enforce_capacity(&mut self) {
        let Some(capacity) = self.capacity else {
            return;
        };
        if self.map.len() > capacity.get() {
            self.map.trim_to(capacity.get());
            if let Some(backing) = self.backing.as_mut() {
                backing.dirty = true;
            }
        }
    }

    /// Under the file lock: takes the queued changes (`take`, called once
    /// the lock is held, so that changes queued while we waited for it
    /// join this write), reloads the file if another process replaced it,
    /// applies them in order and writes the result once. Returns each
    /// change's outcome by ticket: all succeed or all fail.
    fn write_group(
        &mut self,
        take: impl FnOnce() -> Vec<(u64, Change)>,
    ) -> Vec<(u64, Result<bool, StoreError>)> {
        let mut take = Some(take);
        let mut tickets = Vec::new();
        let result = self.with_file_lock(|state| {
            let changes: Vec<Change>;
            (tickets, changes) = take
                .take()
                .map(|take| take())
                .unwrap_or_default()
                .into_iter()
                .unzip();
            state.refresh()?;
            let capacity = state.capacity;
            let answers: Vec<bool> = changes
                .into_iter()
                .map(|change| apply(&mut state.map, capacity, change))
                .collect();
            state.write_if(answers.contains(&true))?;
            Ok(answers)
        });
        if let Some(take) = take {
            // The lock could not be taken: the changes fail unapplied.
            tickets = take().into_iter().map(|(ticket, _)| ticket).collect();
        }
        match result {
            Ok(answers) => tickets
                .into_iter()
                .zip(answers.into_iter().map(Ok))
                .collect(),
            Err(e) => {
                let mut outcomes: Vec<_> = tickets
                    .iter()
                    .skip(1)
                    .map(|&ticket| (ticket, Err(e.replicate())))
                    .collect();
                if let Some(&first) = tickets.first() {
                    outcomes.push((first, Err(e)));
                }
                outcomes
            }
        }
    }

    /// Runs `work` holding the exclusive lock on the lock file.
    fn with_file_lock<T>(
        &mut self,
        work: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(backing) = self.backing.as_mut() else {
            return work(self);
        };
        let lock = match backing.lock.take() {
            Some(lock) if file::is_current_lock(&backing.paths, &lock)? => lock,
            _ => file::open_lock(&backing.paths)?,
        };
        let lock_path = backing.paths.lock.clone();
        let result = LockGuard::acquire(&lock, &lock_path).and_then(|_guard| work(self));
        if let Some(backing) = self.backing.as_mut() {
            backing.lock = Some(lock);
        }
        result
    }

    /// Writes the map if `changed` or it holds unpersisted touches. Called
    /// with the file lock held.
    fn write_if(&mut self, changed: bool) -> Result<(), StoreError> {
        let Some(backing) = self.backing.as_mut() else {
            return Ok(());
        };
        if !changed && !backing.dirty {
            return Ok(());
        }
        #[cfg(test)]
        if std::mem::take(&mut backing.panic_on_write) {
            panic!("panic_on_write");
        }
        let map = &self.map;
        let one_append_behind = backing
            .buffer_version
            .is_some_and(|v| v.wrapping_add(1) == map.version())
            && map.last_change_was_append();
        if !(one_append_behind && format::append_last(&mut backing.buffer, map)) {
            backing.buffer.clear();
            format::write(&mut backing.buffer, map);
        }
        backing.buffer_version = Some(map.version());
        let written = file::write_atomically(&backing.paths, &backing.buffer);
        match written {
            Ok((handle, stamp)) => {
                backing.synced = Synced::File { handle, stamp };
                backing.touched.clear();
                backing.dirty = false;
                backing.writes = backing.writes.wrapping_add(1);
                Ok(())
            }
            Err(e) => {
                // The map holds a change the file does not: reload it.
                backing.synced = Synced::Unknown;
                backing.checked_at = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
