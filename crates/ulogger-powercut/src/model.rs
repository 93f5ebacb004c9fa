//! The filesystem as two states, without FUSE: what programs see now
//! (the page cache and the directory entries as they were last changed)
//! and what a disk would hold after a power cut (what was synced).
//!
//! - A file's bytes become durable when that file is fsynced (`fsync` or
//!   `fdatasync`: size is part of the bytes, other metadata is not modelled).
//! - A directory's entries (files and directories created in it, renamed
//!   into or out of it, removed from it) become durable when that
//!   directory is fsynced ([`Durability::Strict`], the POSIX minimum), or
//!   all of them, in every directory, at the next fsync of anything
//!   ([`Durability::Ordered`], like ext4's journal, which commits every
//!   earlier metadata change with any fsync).
//!
//! [`Model::power_cut`] makes the visible state the durable one: a file
//! that no durable entry leads to is gone, whatever was synced into it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// The inode number of the root directory (FUSE's).
pub const ROOT: u64 = 1;

/// When directory entries become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// An entry is durable only once the directory holding it is fsynced.
    #[default]
    Strict,
    /// Entries are durable in the order they were made, all at once with
    /// the next fsync of any file or directory (a metadata journal).
    Ordered,
}

/// An error as the errno FUSE answers with.
pub type Errno = i32;

/// What an inode is, with its visible and its durable contents.
#[derive(Debug, Clone)]
enum Contents {
    File {
        /// The bytes programs read: the page cache.
        data: Vec<u8>,
        /// The bytes on the disk.
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug, Clone)]
struct Inode {
    contents: Contents,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

/// What [`Model::attr`] tells about an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The inode number.
    pub ino: u64,
    /// Whether it is a directory (else a regular file).
    pub is_dir: bool,
    /// Visible size in bytes (entries for a directory).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last change of the contents.
    pub mtime: SystemTime,
    /// Last change of the inode.
    pub ctime: SystemTime,
}

/// The two states of the filesystem. Inode numbers are never reused, so a
/// number the kernel still holds from before a cut cannot name a new file.
#[derive(Debug)]
pub struct Model {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    durability: Durability,
}

impl Model {
    /// An empty filesystem: a root directory, durable.
    pub fn new(durability: Durability) -> Model {
        let now = SystemTime::now();
        let root = Inode {
            contents: Contents::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: now,
            ctime: now,
        };
        Model {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            durability,
        }
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.inode(dir)?.contents {
            Contents::Dir { entries, .. } => Ok(entries),
            Contents::File { .. } => Err(libc::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        let inode = self.inode_mut(dir)?;
        let now = SystemTime::now();
        inode.mtime = now;
        inode.ctime = now;
        match &mut inode.contents {
            Contents::Dir { entries, .. } => Ok(entries),
            Contents::File { .. } => Err(libc::ENOTDIR),
        }
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(
            self.inodes.get(&ino).map(|i| &i.contents),
            Some(Contents::Dir { .. })
        )
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        let inode = self.inode(ino)?;
        let (is_dir, size) = match &inode.contents {
            Contents::File { data, .. } => (false, data.len() as u64),
            Contents::Dir { entries, .. } => (true, entries.len() as u64),
        };
        Ok(Attr {
            ino,
            is_dir,
            size,
            mode: inode.mode,
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            ctime: inode.ctime,
        })
    }

    /// The inode `name` in `dir` leads to.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// The visible entries of `dir`, by name.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64, bool)>, Errno> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, &ino)| (name.clone(), ino, self.is_dir(ino)))
            .collect())
    }

    /// Creates a file (or a directory) `name` in `dir`: visible now,
    /// durable once `dir` is synced.
    pub fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        is_dir: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let contents = if is_dir {
            Contents::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            }
        } else {
            Contents::File {
                data: Vec::new(),
                durable: Vec::new(),
            }
        };
        let now = SystemTime::now();
        self.inodes.insert(
            ino,
            Inode {
                contents,
                mode: mode & 0o7777,
                uid,
                gid,
                mtime: now,
                ctime: now,
            },
        );
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes `name` from `dir` (a directory only if `is_dir`, and empty).
    /// The inode stays while a durable entry may still lead to it.
    pub fn remove(&mut self, dir: u64, name: &OsStr, is_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        match (is_dir, self.is_dir(ino)) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) if !self.entries(ino)?.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir`, replacing a
    /// file (or an empty directory) there unless `no_replace`.
    pub fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        new_dir: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        self.entries(new_dir)?;
        if let Some(&there) = self.entries(new_dir)?.get(new_name) {
            if there == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (self.is_dir(ino), self.is_dir(there)) {
                (false, true) => return Err(libc::EISDIR),
                (true, false) => return Err(libc::ENOTDIR),
                (true, true) if !self.entries(there)?.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if self.is_dir(ino) && self.is_below(new_dir, ino) {
            return Err(libc::EINVAL);
        }
        self.entries_mut(dir)?.remove(name);
        self.entries_mut(new_dir)?.insert(new_name.to_owned(), ino);
        Ok(())
    }

    /// Whether `dir` is `ancestor` or (visibly) inside it.
    fn is_below(&self, dir: u64, ancestor: u64) -> bool {
        if dir == ancestor {
            return true;
        }
        let Ok(entries) = self.entries(ancestor) else {
            return false;
        };
        entries
            .values()
            .any(|&child| self.is_dir(child) && self.is_below(dir, child))
    }

    /// Reads up to `size` visible bytes of `ino` from `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<&[u8], Errno> {
        match &self.inode(ino)?.contents {
            Contents::File { data, .. } => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size).min(data.len());
                Ok(&data[start..end])
            }
            Contents::Dir { .. } => Err(libc::EISDIR),
        }
    }

    /// Writes `bytes` at `offset` of `ino`'s page cache.
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        match &mut inode.contents {
            Contents::File { data, .. } => {
                let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
                let end = start.checked_add(bytes.len()).ok_or(libc::EFBIG)?;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
                Ok(())
            }
            Contents::Dir { .. } => Err(libc::EISDIR),
        }
    }

    /// Sets the visible size of `ino` (truncate or extend with zeros).
    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        match &mut inode.contents {
            Contents::File { data, .. } => {
                data.resize(usize::try_from(len).map_err(|_| libc::EFBIG)?, 0);
                Ok(())
            }
            Contents::Dir { .. } => Err(libc::EISDIR),
        }
    }

    /// Changes permission bits, owner or group (not modelled as volatile:
    /// kept across a cut).
    pub fn set_meta(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        if let Some(mode) = mode {
            inode.mode = mode & 0o7777;
        }
        if let Some(uid) = uid {
            inode.uid = uid;
        }
        if let Some(gid) = gid {
            inode.gid = gid;
        }
        inode.ctime = SystemTime::now();
        Ok(())
    }

    /// `fsync` of `ino`: a file's bytes, or a directory's entries, are
    /// durable from now on (under [`Durability::Ordered`], every
    /// directory's entries too).
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match &mut self.inode_mut(ino)?.contents {
            Contents::File { data, durable } => durable.clone_from(data),
            Contents::Dir { entries, durable } => durable.clone_from(entries),
        }
        if self.durability == Durability::Ordered {
            for inode in self.inodes.values_mut() {
                if let Contents::Dir { entries, durable } = &mut inode.contents {
                    durable.clone_from(entries);
                }
            }
        }
        Ok(())
    }

    /// The power cut: every file and directory is what the disk holds.
    /// Inodes no durable entry leads to are gone. A directory that two
    /// durable entries lead to (renamed, and both its old and its new
    /// parent synced, in that order or not) keeps its first entry by name
    /// order, as fsck would keep one.
    pub fn power_cut(&mut self) {
        let mut reached = HashSet::from([ROOT]);
        let mut pending = vec![ROOT];
        while let Some(dir) = pending.pop() {
            let Some(Contents::Dir { durable, .. }) = self.inodes.get(&dir).map(|i| &i.contents)
            else {
                continue;
            };
            let mut kept = BTreeMap::new();
            for (name, &ino) in durable {
                let Some(inode) = self.inodes.get(&ino) else {
                    continue;
                };
                let is_dir = matches!(inode.contents, Contents::Dir { .. });
                if is_dir && !reached.insert(ino) {
                    continue;
                }
                reached.insert(ino);
                if is_dir {
                    pending.push(ino);
                }
                kept.insert(name.clone(), ino);
            }
            if let Some(Contents::Dir { entries, durable }) =
                self.inodes.get_mut(&dir).map(|i| &mut i.contents)
            {
                *durable = kept;
                entries.clone_from(durable);
            }
        }
        self.inodes.retain(|ino, _| reached.contains(ino));
        for inode in self.inodes.values_mut() {
            if let Contents::File { data, durable } = &mut inode.contents {
                data.clone_from(durable);
            }
        }
    }

    /// Every visible file by path (`a/b/file`) with its bytes, and every
    /// directory (`a/b/`) with none: for tests and inspection.
    pub fn tree(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        self.walk(ROOT, String::new(), &mut out);
        out
    }

    fn walk(&self, dir: u64, prefix: String, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = self.entries(dir) else {
            return;
        };
        for (name, &ino) in entries {
            let path = format!("{prefix}{}", name.to_string_lossy());
            match self.inodes.get(&ino).map(|i| &i.contents) {
                Some(Contents::File { data, .. }) => {
                    out.insert(path, data.clone());
                }
                Some(Contents::Dir { .. }) => {
                    out.insert(format!("{path}/"), Vec::new());
                    self.walk(ino, format!("{path}/"), out);
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn os(name: &str) -> &OsStr {
        OsStr::new(name)
    }

    /// Creates `name` in `dir` and writes `bytes` into it.
    fn file(m: &mut Model, dir: u64, name: &str, bytes: &[u8]) -> u64 {
        let ino = m.create(dir, os(name), false, 0o644, 0, 0).unwrap();
        m.write(ino, 0, bytes).unwrap();
        ino
    }

    fn tree(m: &Model) -> Vec<(String, String)> {
        m.tree()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nothing_unsynced_survives_a_cut() {
        let mut m = Model::new(Durability::Strict);
        file(&mut m, ROOT, "a", b"hello");
        assert_eq!(tree(&m), pairs(&[("a", "hello")]));
        m.power_cut();
        assert!(tree(&m).is_empty());
    }

    #[test]
    fn a_synced_file_without_a_synced_entry_is_lost() {
        let mut m = Model::new(Durability::Strict);
        let a = file(&mut m, ROOT, "a", b"hello");
        m.sync(a).unwrap();
        m.power_cut();
        assert!(tree(&m).is_empty());
        // Its inode is gone too: the number now names nothing.
        assert_eq!(m.attr(a).unwrap_err(), libc::ENOENT);
    }

    #[test]
    fn a_synced_entry_keeps_only_the_synced_bytes() {
        let mut m = Model::new(Durability::Strict);
        let a = file(&mut m, ROOT, "a", b"hello");
        m.sync(ROOT).unwrap();
        m.power_cut();
        // The name is durable, the bytes were never synced.
        assert_eq!(tree(&m), pairs(&[("a", "")]));
        m.write(a, 0, b"one").unwrap();
        m.sync(a).unwrap();
        m.write(a, 3, b" two").unwrap();
        assert_eq!(tree(&m), pairs(&[("a", "one two")]));
        m.power_cut();
        assert_eq!(tree(&m), pairs(&[("a", "one")]));
        // fsync covers a truncation too.
        m.set_len(a, 1).unwrap();
        m.sync(a).unwrap();
        m.power_cut();
        assert_eq!(tree(&m), pairs(&[("a", "o")]));
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced_all_the_way_up() {
        let mut m = Model::new(Durability::Strict);
        let d = m.create(ROOT, os("d"), true, 0o700, 0, 0).unwrap();
        let e = m.create(d, os("e"), true, 0o700, 0, 0).unwrap();
        let f = file(&mut m, e, "f", b"x");
        m.sync(f).unwrap();
        m.sync(e).unwrap();
        m.sync(d).unwrap();
        // The root was not synced: `d` and all below it are gone.
        let mut cut = Model {
            inodes: m.inodes.clone(),
            next_ino: m.next_ino,
            durability: m.durability,
        };
        cut.power_cut();
        assert!(tree(&cut).is_empty());
        m.sync(ROOT).unwrap();
        m.power_cut();
        assert_eq!(tree(&m), pairs(&[("d/", ""), ("d/e/", ""), ("d/e/f", "x")]));
    }

    #[test]
    fn a_rename_is_durable_once_its_directory_is_synced() {
        let mut m = Model::new(Durability::Strict);
        let old = file(&mut m, ROOT, "state", b"old");
        m.sync(old).unwrap();
        m.sync(ROOT).unwrap();
        // Temporary file, synced, renamed over: without the directory sync
        // the old file is what a cut leaves.
        let tmp = file(&mut m, ROOT, ".state.tmp", b"new");
        m.sync(tmp).unwrap();
        m.rename(ROOT, os(".state.tmp"), ROOT, os("state"), false)
            .unwrap();
        assert_eq!(tree(&m), pairs(&[("state", "new")]));
        let mut cut = Model {
            inodes: m.inodes.clone(),
            next_ino: m.next_ino,
            durability: m.durability,
        };
        cut.power_cut();
        assert_eq!(tree(&cut), pairs(&[("state", "old")]));
        m.sync(ROOT).unwrap();
        m.power_cut();
        assert_eq!(tree(&m), pairs(&[("state", "new")]));
    }

    #[test]
    fn a_removal_is_undone_by_a_cut_until_its_directory_is_synced() {
        let mut m = Model::new(Durability::Strict);
        let a = file(&mut m, ROOT, "a", b"kept");
        m.sync(a).unwrap();
        m.sync(ROOT).unwrap();
        m.remove(ROOT, os("a"), false).unwrap();
        assert!(tree(&m).is_empty());
        m.power_cut();
        assert_eq!(tree(&m), pairs(&[("a", "kept")]));
        m.remove(ROOT, os("a"), false).unwrap();
        m.sync(ROOT).unwrap();
        m.power_cut();
        assert!(tree(&m).is_empty());
    }

    #[test]
    fn a_move_between_directories_needs_both_synced_or_it_is_in_one_or_both() {
        let mut m = Model::new(Durability::Strict);
        let inbox = m.create(ROOT, os("inbox"), true, 0o755, 0, 0).unwrap();
        let out = m.create(ROOT, os("out"), true, 0o755, 0, 0).unwrap();
        let f = file(&mut m, inbox, "f", b"x");
        m.sync(f).unwrap();
        for dir in [inbox, out, ROOT] {
            m.sync(dir).unwrap();
        }
        m.rename(inbox, os("f"), out, os("f"), false).unwrap();
        m.sync(out).unwrap();
        m.power_cut();
        // The source directory was not synced: the file is in both.
        assert_eq!(
            tree(&m),
            pairs(&[
                ("inbox/", ""),
                ("inbox/f", "x"),
                ("out/", ""),
                ("out/f", "x")
            ])
        );
    }

    #[test]
    fn a_directory_reached_twice_after_a_cut_keeps_one_entry() {
        let mut m = Model::new(Durability::Strict);
        let d = m.create(ROOT, os("b"), true, 0o755, 0, 0).unwrap();
        m.sync(d).unwrap();
        m.sync(ROOT).unwrap();
        m.rename(ROOT, os("b"), ROOT, os("a"), false).unwrap();
        // Only the entries' new state is in memory; make the root's
        // durable entries hold both names, as two half-synced parents would.
        if let Some(Contents::Dir { durable, .. }) =
            m.inodes.get_mut(&ROOT).map(|i| &mut i.contents)
        {
            durable.insert(OsString::from("a"), d);
        }
        m.power_cut();
        assert_eq!(tree(&m), pairs(&[("a/", "")]));
    }

    #[test]
    fn ordered_mode_commits_every_entry_with_any_fsync_but_not_unsynced_bytes() {
        let mut m = Model::new(Durability::Ordered);
        let d = m.create(ROOT, os("d"), true, 0o700, 0, 0).unwrap();
        let a = file(&mut m, d, "a", b"synced");
        let b = file(&mut m, d, "b", b"unsynced");
        m.sync(a).unwrap();
        m.power_cut();
        assert_eq!(
            tree(&m),
            pairs(&[("d/", ""), ("d/a", "synced"), ("d/b", "")])
        );
        // Without any fsync, a cut takes the entries too.
        file(&mut m, d, "c", b"");
        m.power_cut();
        assert_eq!(m.lookup(d, os("c")).unwrap_err(), libc::ENOENT);
        let _ = b;
    }

    #[test]
    fn posix_errors_for_names() {
        let mut m = Model::new(Durability::Strict);
        let d = m.create(ROOT, os("d"), true, 0o755, 0, 0).unwrap();
        file(&mut m, d, "f", b"");
        file(&mut m, ROOT, "g", b"");
        assert_eq!(
            m.create(ROOT, os("d"), false, 0, 0, 0).unwrap_err(),
            libc::EEXIST
        );
        assert_eq!(m.remove(ROOT, os("d"), true).unwrap_err(), libc::ENOTEMPTY);
        assert_eq!(m.remove(ROOT, os("d"), false).unwrap_err(), libc::EISDIR);
        assert_eq!(m.remove(ROOT, os("g"), true).unwrap_err(), libc::ENOTDIR);
        assert_eq!(
            m.rename(ROOT, os("g"), d, os("f"), true).unwrap_err(),
            libc::EEXIST
        );
        assert_eq!(
            m.rename(ROOT, os("d"), d, os("x"), false).unwrap_err(),
            libc::EINVAL
        );
        m.rename(ROOT, os("g"), d, os("f"), false).unwrap();
        assert_eq!(m.list(d).unwrap().len(), 1);
        assert_eq!(m.read(d, 0, 1).unwrap_err(), libc::EISDIR);
    }
}
