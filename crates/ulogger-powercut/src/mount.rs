//! The [`Model`] served over FUSE, and the mounted handle a test holds.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::model::{Attr, Durability, Model};

/// The kernel caches no entry and no attribute: after a cut, every path
/// is looked up again and every size asked again.
const NO_CACHE: Duration = Duration::ZERO;

/// The model, and which open handles belong to the present power cycle.
#[derive(Debug)]
struct State {
    model: Model,
    /// How many power cuts there were.
    cycle: u64,
    /// Open handle → (inode, cycle it was opened in).
    handles: HashMap<u64, (u64, u64)>,
    next_handle: u64,
    /// Requests from other processes (for [`PowerCutMount::operations`]).
    operations: u64,
}

impl State {
    fn open(&mut self, ino: u64) -> FileHandle {
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, (ino, self.cycle));
        FileHandle(fh)
    }

    /// Whether `fh` was opened on `ino` since the last cut. A handle from
    /// before a cut belongs to a process the cut stopped: its late writes
    /// (a kernel flushing a dead process's pages) must not reach the
    /// state after the cut.
    fn current(&self, fh: FileHandle, ino: u64) -> Result<(), i32> {
        match self.handles.get(&fh.0) {
            Some(&(open_ino, cycle)) if open_ino == ino && cycle == self.cycle => Ok(()),
            _ => Err(libc::EIO),
        }
    }
}

/// The filesystem as FUSE sees it: one lock around the model.
struct PowerCutFs {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn file_attr(attr: Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.ctime,
        kind: if attr.is_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (attr.mode & 0o7777) as u16,
        nlink: if attr.is_dir { 2 } else { 1 },
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

impl PowerCutFs {
    /// Counts a request of a program under test: one from a thread of
    /// another process than the test's own (FUSE names the thread).
    fn count(&self, req: &Request) {
        let own = Path::new(&format!("/proc/self/task/{}", req.pid())).exists();
        if !own {
            lock(&self.state).operations += 1;
        }
    }

    fn entry(&self, reply: ReplyEntry, result: Result<u64, i32>) {
        let state = lock(&self.state);
        match result.and_then(|ino| state.model.attr(ino)) {
            Ok(attr) => reply.entry(&NO_CACHE, &file_attr(attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count(req);
        let found = lock(&self.state).model.lookup(parent.0, name);
        self.entry(reply, found);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count(req);
        match lock(&self.state).model.attr(ino.0) {
            Ok(attr) => reply.attr(&NO_CACHE, &file_attr(attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.count(req);
        let mut state = lock(&self.state);
        let changed = (|| {
            if let Some(size) = size {
                state.model.set_len(ino.0, size)?;
            }
            state.model.set_meta(ino.0, mode, uid, gid)?;
            state.model.attr(ino.0)
        })();
        match changed {
            Ok(attr) => reply.attr(&NO_CACHE, &file_attr(attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.count(req);
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Regular files and directories only: nothing under test makes
            // anything else.
            reply.error(Errno::EPERM);
            return;
        }
        let made = lock(&self.state).model.create(
            parent.0,
            name,
            false,
            mode & !umask,
            req.uid(),
            req.gid(),
        );
        self.entry(reply, made);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.count(req);
        let made = lock(&self.state).model.create(
            parent.0,
            name,
            true,
            mode & !umask,
            req.uid(),
            req.gid(),
        );
        self.entry(reply, made);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count(req);
        match lock(&self.state).model.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count(req);
        match lock(&self.state).model.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.count(req);
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match lock(&self.state)
            .model
            .rename(parent.0, name, newparent.0, newname, no_replace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count(req);
        let mut state = lock(&self.state);
        match state.model.attr(ino.0) {
            Ok(attr) if attr.is_dir => reply.error(Errno::EISDIR),
            // Without FOPEN_KEEP_CACHE the kernel drops its cached pages of
            // the file at each open, so a file opened after a cut is read
            // from the state after it.
            Ok(_) => reply.opened(state.open(ino.0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.count(req);
        let mut state = lock(&self.state);
        let made = state
            .model
            .create(parent.0, name, false, mode & !umask, req.uid(), req.gid())
            .and_then(|ino| state.model.attr(ino));
        match made {
            Ok(attr) => {
                let fh = state.open(attr.ino);
                reply.created(
                    &NO_CACHE,
                    &file_attr(attr),
                    Generation(0),
                    fh,
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.count(req);
        let state = lock(&self.state);
        match state.model.read(ino.0, offset, size as usize) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.count(req);
        let mut state = lock(&self.state);
        let written = state
            .current(fh, ino.0)
            .and_then(|()| state.model.write(ino.0, offset, data));
        match written {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.count(req);
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.count(req);
        lock(&self.state).handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.count(req);
        let mut state = lock(&self.state);
        let synced = state
            .current(fh, ino.0)
            .and_then(|()| state.model.sync(ino.0));
        match synced {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count(req);
        let mut state = lock(&self.state);
        match state.model.attr(ino.0) {
            Ok(attr) if attr.is_dir => reply.opened(state.open(ino.0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.count(req);
        let listed = lock(&self.state).model.list(ino.0);
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                reply.error(errno(e));
                return;
            }
        };
        let dots = [(".".into(), ino.0, true), ("..".into(), ino.0, true)];
        let all = dots.into_iter().chain(entries);
        for (i, (name, child, is_dir)) in all.enumerate().skip(offset as usize) {
            let kind = if is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.count(req);
        lock(&self.state).handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.count(req);
        let mut state = lock(&self.state);
        let synced = state
            .current(fh, ino.0)
            .and_then(|()| state.model.sync(ino.0));
        match synced {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count(req);
        // Plenty of room: the programs under test check free space.
        let blocks = 1 << 24;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.count(req);
        reply.ok();
    }
}

/// A power-cut filesystem mounted at a directory, unmounted on drop.
///
/// Everything written through the mount point is visible at once, as on
/// any filesystem, but only what was fsynced survives
/// [`PowerCutMount::power_cut`]: file bytes once the file is fsynced,
/// directory entries once their directory is (see [`Durability`]).
/// Stop every process using the mount before cutting: the cut is the
/// moment the machine loses power, so nothing may go on writing across it
/// (writes through handles opened before the cut fail with `EIO`).
pub struct PowerCutMount {
    session: Option<fuser::BackgroundSession>,
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl std::fmt::Debug for PowerCutMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerCutMount")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PowerCutMount {
    /// Mounts an empty power-cut filesystem on the directory `path`
    /// (needs `/dev/fuse` and the right to mount: root, or `fusermount3`).
    pub fn new(path: impl AsRef<Path>, durability: Durability) -> io::Result<PowerCutMount> {
        let path = path.as_ref().to_path_buf();
        let state = Arc::new(Mutex::new(State {
            model: Model::new(durability),
            cycle: 0,
            handles: HashMap::new(),
            next_handle: 1,
            operations: 0,
        }));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("ulogger-powercut".to_owned()),
            MountOption::DefaultPermissions,
        ];
        let fs = PowerCutFs {
            state: state.clone(),
        };
        let session = fuser::spawn_mount(fs, &path, &config)?;
        Ok(PowerCutMount {
            session: Some(session),
            state,
            path,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The power cut: every file and directory under the mount point is
    /// from now on what was durable at this moment, and handles opened
    /// before it are dead.
    pub fn power_cut(&self) {
        let mut state = lock(&self.state);
        state.model.power_cut();
        state.cycle += 1;
    }

    /// How many requests the filesystem had so far from other processes
    /// than this one: the programs under test, not the test's own reads
    /// and writes (a test can poll it to cut while a program is busy on
    /// the mount).
    pub fn operations(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .operations
    }

    /// Unmounts, and says why not if it could not.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                // Busy (a process still holds a file open): detach it, so
                // no stale mount is left behind; the kernel ends the
                // connection when the last file closes.
                let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
                Err(e)
            }
        }
    }
}

impl Drop for PowerCutMount {
    fn drop(&mut self) {
        let _ = self.unmount_now();
    }
}
