//! The file tree in guest memory, and the open files.
//!
//! Nodes are files (their bytes in a `Vec`) and directories (their entries
//! in a `BTreeMap`, so listings come out sorted and the same every run),
//! numbered by inode. A descriptor (`fd`) names an *open file
//! description*, shared by `dup`: the offset and the access mode, as on
//! Unix. A node that is unlinked while open lives on until its last
//! description closes.
//!
//! Descriptors 0, 1 and 2 are the console: reading 0 is always the end of
//! the file (a guest has no console input), and what 1 and 2 are written
//! is the caller's to print ([`Kind::Console`]).
//!
//! A descriptor may also name a network socket ([`Kind::Socket`]): the
//! table only keeps its number ([`SocketId`], the network's own), so that
//! sockets and files share one numbering and `dup` and `close` work alike
//! on both; reading and writing one is the caller's, and the close of its
//! last descriptor says so ([`Closed::Socket`]) for the caller to end it.
//!
//! Everything here is plain data, with errors as positive `errno` values,
//! so it is tested on Linux; `super::syscalls` puts it behind the
//! `sys_*` functions.

use super::Errno;
use super::path::{self, Resolved};
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use hermit_abi::errno::{
    EBADF, EBUSY, EEXIST, EINVAL, EISDIR, EMFILE, ENOENT, ENOSPC, ENOTDIR, ENOTEMPTY, ESPIPE,
};
use hermit_abi::{
    DT_DIR, DT_REG, O_APPEND, O_CREAT, O_DIRECTORY, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY,
    S_IFCHR, S_IFDIR, S_IFREG, S_IFSOCK, SEEK_CUR, SEEK_END, SEEK_SET, stat, timespec,
};

/// An inode number.
pub type Ino = u64;

/// A network socket's number, as the network names it.
pub type SocketId = u64;

/// What closing a descriptor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Nothing but the descriptor, or a file or directory description.
    Descriptor,
    /// The last descriptor of this socket: the caller ends it.
    Socket(SocketId),
}

/// The root directory's inode.
const ROOT: Ino = 1;

/// The access-mode bits of the `open` flags.
const ACCESS_MODE: i32 = 3;

/// Permission bits of the directories the tree starts with.
const DEFAULT_DIRECTORY_PERMISSIONS: u32 = 0o755;

/// Most descriptors open at once.
pub const MAX_OPEN: usize = 1024;

/// The block size `stat` reports.
const BLOCK_BYTES: i64 = 4096;

/// Bytes of a `dirent64` before its name: `d_ino`, `d_off`, `d_reclen`,
/// `d_type`.
const DIRENT_HEADER_BYTES: usize = 19;

enum Content {
    File(Vec<u8>),
    Directory(BTreeMap<String, Ino>),
}

struct Node {
    content: Content,
    /// The permission bits it was created with; never enforced (there is
    /// one user), only reported.
    permissions: u32,
    /// Whether a directory entry still names it.
    linked: bool,
    /// Open file descriptions naming it.
    open: usize,
    /// Last change of its content, in realtime nanoseconds.
    modified_ns: u64,
}

/// What a descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The console's input: always at its end.
    Stdin,
    /// The console's output: the caller prints what is written.
    Console,
    /// A regular file in the tree.
    File,
    /// A directory in the tree (opened to be listed).
    Directory,
    /// A network socket: reading and writing it are the caller's.
    Socket(SocketId),
}

#[derive(Clone, Copy)]
enum Target {
    Stdin,
    Console,
    Node(Ino),
    Socket(SocketId),
}

struct Description {
    target: Target,
    /// The next byte (files) or entry (directories).
    offset: u64,
    readable: bool,
    writable: bool,
    append: bool,
    /// Descriptors naming it.
    references: usize,
}

/// The whole file system: the tree and the descriptor table.
pub struct FileSystem {
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    descriptions: BTreeMap<usize, Description>,
    next_description: usize,
    descriptors: BTreeMap<i32, usize>,
    /// The time stamped on changes, set by the caller before each call.
    now_ns: u64,
}

impl Default for FileSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl FileSystem {
    /// A tree with `/` and `/tmp`, and descriptors 0, 1 and 2 on the
    /// console.
    pub fn new() -> Self {
        let mut fs = FileSystem {
            nodes: BTreeMap::new(),
            next_ino: ROOT + 1,
            descriptions: BTreeMap::new(),
            next_description: 0,
            descriptors: BTreeMap::new(),
            now_ns: 0,
        };
        fs.nodes.insert(
            ROOT,
            Node::new(
                Content::Directory(BTreeMap::new()),
                DEFAULT_DIRECTORY_PERMISSIONS,
                0,
            ),
        );
        fs.make_directory("/tmp", 0o777)
            .expect("a new tree has room for /tmp");
        for target in [Target::Stdin, Target::Console, Target::Console] {
            let readable = matches!(target, Target::Stdin);
            fs.install(target, readable, !readable, false)
                .expect("a new table has room for the console");
        }
        fs
    }

    /// Sets the time that changes from now on are stamped with (realtime
    /// nanoseconds).
    pub fn set_clock(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// `open(path, flags, mode)`: a new descriptor, the lowest free one.
    pub fn open(&mut self, path: &str, flags: i32, mode: i32) -> Result<i32, Errno> {
        let (readable, writable) = match flags & ACCESS_MODE {
            O_RDONLY => (true, false),
            O_WRONLY => (false, true),
            O_RDWR => (true, true),
            _ => return Err(EINVAL),
        };
        let resolved = path::resolve(path)?;
        let ino = match self.walk(&resolved.components) {
            Ok(ino) => {
                if flags & O_CREAT != 0 && flags & O_EXCL != 0 {
                    return Err(EEXIST);
                }
                self.check_opening(ino, &resolved, flags, writable)?;
                ino
            }
            Err(ENOENT) if flags & O_CREAT != 0 && flags & O_DIRECTORY == 0 => {
                if resolved.wants_directory {
                    return Err(EISDIR);
                }
                let permissions = u32::try_from(mode & 0o7777).unwrap_or(0);
                self.create(&resolved, Content::File(Vec::new()), permissions)?
            }
            Err(error) => return Err(error),
        };
        let append = flags & O_APPEND != 0;
        self.install(Target::Node(ino), readable, writable, append)
    }

    /// Whether an existing node may be opened so, truncating a file if the
    /// flags say.
    fn check_opening(
        &mut self,
        ino: Ino,
        resolved: &Resolved<'_>,
        flags: i32,
        writable: bool,
    ) -> Result<(), Errno> {
        let now = self.now_ns;
        let node = self.node_mut(ino)?;
        match &mut node.content {
            Content::Directory(_) if writable => Err(EISDIR),
            Content::Directory(_) => Ok(()),
            Content::File(_) if flags & O_DIRECTORY != 0 || resolved.wants_directory => {
                Err(ENOTDIR)
            }
            Content::File(bytes) => {
                if flags & O_TRUNC != 0 && writable {
                    bytes.clear();
                    node.modified_ns = now;
                }
                Ok(())
            }
        }
    }

    /// Gives a new description the lowest free descriptor.
    fn install(
        &mut self,
        target: Target,
        readable: bool,
        writable: bool,
        append: bool,
    ) -> Result<i32, Errno> {
        let fd = self.lowest_free_descriptor()?;
        if let Target::Node(ino) = target {
            self.node_mut(ino)?.open += 1;
        }
        let id = self.next_description;
        self.next_description += 1;
        self.descriptions.insert(
            id,
            Description {
                target,
                offset: 0,
                readable,
                writable,
                append,
                references: 1,
            },
        );
        self.descriptors.insert(fd, id);
        Ok(fd)
    }

    fn lowest_free_descriptor(&self) -> Result<i32, Errno> {
        (0..MAX_OPEN as i32)
            .find(|fd| !self.descriptors.contains_key(fd))
            .ok_or(EMFILE)
    }

    /// A new descriptor, the lowest free one, for network socket `socket`.
    pub fn open_socket(&mut self, socket: SocketId) -> Result<i32, Errno> {
        self.install(Target::Socket(socket), true, true, false)
    }

    /// `close(fd)`.
    pub fn close(&mut self, fd: i32) -> Result<(), Errno> {
        self.close_descriptor(fd).map(|_| ())
    }

    /// `close(fd)`, saying whether it ended a socket.
    pub fn close_descriptor(&mut self, fd: i32) -> Result<Closed, Errno> {
        let id = self.descriptors.remove(&fd).ok_or(EBADF)?;
        let description = self.descriptions.get_mut(&id).ok_or(EBADF)?;
        description.references -= 1;
        if description.references > 0 {
            return Ok(Closed::Descriptor);
        }
        let target = description.target;
        self.descriptions.remove(&id);
        match target {
            Target::Node(ino) => {
                if let Ok(node) = self.node_mut(ino) {
                    node.open -= 1;
                }
                self.forget_if_unused(ino);
            }
            Target::Socket(socket) => return Ok(Closed::Socket(socket)),
            Target::Stdin | Target::Console => {}
        }
        Ok(Closed::Descriptor)
    }

    /// `dup(fd)`: the lowest free descriptor, sharing `fd`'s description.
    pub fn dup(&mut self, fd: i32) -> Result<i32, Errno> {
        let id = *self.descriptors.get(&fd).ok_or(EBADF)?;
        let new_fd = self.lowest_free_descriptor()?;
        self.descriptions.get_mut(&id).ok_or(EBADF)?.references += 1;
        self.descriptors.insert(new_fd, id);
        Ok(new_fd)
    }

    /// What `fd` is.
    pub fn kind(&self, fd: i32) -> Result<Kind, Errno> {
        Ok(match self.description(fd)?.target {
            Target::Stdin => Kind::Stdin,
            Target::Console => Kind::Console,
            Target::Socket(socket) => Kind::Socket(socket),
            Target::Node(ino) => match self.node(ino)?.content {
                Content::File(_) => Kind::File,
                Content::Directory(_) => Kind::Directory,
            },
        })
    }

    /// `read(fd, buffer)`: bytes read, 0 at the end of the file.
    pub fn read(&mut self, fd: i32, buffer: &mut [u8]) -> Result<usize, Errno> {
        let id = *self.descriptors.get(&fd).ok_or(EBADF)?;
        let description = self.descriptions.get(&id).ok_or(EBADF)?;
        if !description.readable {
            return Err(EBADF);
        }
        let (target, offset) = (description.target, description.offset);
        let ino = match target {
            Target::Stdin => return Ok(0),
            Target::Console | Target::Socket(_) => return Err(EBADF),
            Target::Node(ino) => ino,
        };
        let Content::File(bytes) = &self.node(ino)?.content else {
            return Err(EISDIR);
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let count = buffer.len().min(bytes.len() - start);
        buffer[..count].copy_from_slice(&bytes[start..start + count]);
        self.advance(id, count);
        Ok(count)
    }

    /// `write(fd, bytes)` to a file of the tree (the console is the
    /// caller's: [`Kind::Console`]). A write past the end fills the gap
    /// with zeros; memory running out is `ENOSPC`.
    pub fn write(&mut self, fd: i32, bytes: &[u8]) -> Result<usize, Errno> {
        let id = *self.descriptors.get(&fd).ok_or(EBADF)?;
        let description = self.descriptions.get(&id).ok_or(EBADF)?;
        let Target::Node(ino) = description.target else {
            return Err(EBADF);
        };
        if !description.writable {
            return Err(EBADF);
        }
        let (append, offset) = (description.append, description.offset);
        let now = self.now_ns;
        let node = self.node_mut(ino)?;
        let Content::File(content) = &mut node.content else {
            return Err(EISDIR);
        };
        let start = if append {
            content.len()
        } else {
            usize::try_from(offset).map_err(|_| EINVAL)?
        };
        let end = start.checked_add(bytes.len()).ok_or(EINVAL)?;
        if end > content.len() {
            content
                .try_reserve(end - content.len())
                .map_err(|_| ENOSPC)?;
            content.resize(end, 0);
        }
        content[start..end].copy_from_slice(bytes);
        node.modified_ns = now;
        let description = self.descriptions.get_mut(&id).ok_or(EBADF)?;
        description.offset = end as u64;
        Ok(bytes.len())
    }

    fn advance(&mut self, id: usize, count: usize) {
        if let Some(description) = self.descriptions.get_mut(&id) {
            description.offset += count as u64;
        }
    }

    /// `lseek(fd, offset, whence)`: the new offset.
    pub fn seek(&mut self, fd: i32, offset: i64, whence: i32) -> Result<u64, Errno> {
        let id = *self.descriptors.get(&fd).ok_or(EBADF)?;
        let description = self.descriptions.get(&id).ok_or(EBADF)?;
        let Target::Node(ino) = description.target else {
            return Err(ESPIPE);
        };
        let base = match whence {
            SEEK_SET => 0,
            SEEK_CUR => description.offset,
            SEEK_END => match &self.node(ino)?.content {
                Content::File(bytes) => bytes.len() as u64,
                Content::Directory(_) => return Err(EINVAL),
            },
            _ => return Err(EINVAL),
        };
        let new_offset = base.checked_add_signed(offset).ok_or(EINVAL)?;
        if i64::try_from(new_offset).is_err() {
            return Err(EINVAL);
        }
        self.descriptions.get_mut(&id).ok_or(EBADF)?.offset = new_offset;
        Ok(new_offset)
    }

    /// `stat(path)` (and `lstat`: there are no symbolic links).
    pub fn stat_path(&self, path: &str) -> Result<stat, Errno> {
        let resolved = path::resolve(path)?;
        let ino = self.walk(&resolved.components)?;
        if resolved.wants_directory && !self.is_directory(ino) {
            return Err(ENOTDIR);
        }
        self.stat_node(ino)
    }

    /// `fstat(fd)`.
    pub fn stat_descriptor(&self, fd: i32) -> Result<stat, Errno> {
        match self.description(fd)?.target {
            Target::Stdin | Target::Console => Ok(stat {
                st_mode: S_IFCHR | 0o620,
                st_nlink: 1,
                st_blksize: BLOCK_BYTES,
                ..stat::default()
            }),
            Target::Socket(_) => Ok(stat {
                st_mode: S_IFSOCK | 0o777,
                st_nlink: 1,
                st_blksize: BLOCK_BYTES,
                ..stat::default()
            }),
            Target::Node(ino) => self.stat_node(ino),
        }
    }

    fn stat_node(&self, ino: Ino) -> Result<stat, Errno> {
        let node = self.node(ino)?;
        let (file_type, size, links) = match &node.content {
            Content::File(bytes) => (S_IFREG, bytes.len() as i64, 1),
            Content::Directory(_) => (S_IFDIR, 0, 2),
        };
        let time = timespec_of(node.modified_ns);
        Ok(stat {
            st_dev: 1,
            st_ino: ino,
            st_nlink: if node.linked { links } else { 0 },
            st_mode: file_type | node.permissions,
            st_size: size,
            st_blksize: BLOCK_BYTES,
            st_blocks: (size + 511) / 512,
            st_atim: time,
            st_mtim: time,
            st_ctim: time,
            ..stat::default()
        })
    }

    /// `getdents64(fd, buffer)`: as many `dirent64` records of the
    /// directory as fit, from where the last call stopped, in name order,
    /// and the bytes used; 0 at the end; `EINVAL` if not even the next one
    /// fits.
    ///
    /// There are no `.` and `..` records, although Linux gives them: std's
    /// Hermit `read_dir` passes every record on to the program (on Linux
    /// std drops those two), and a program walking a tree would loop on
    /// them. The price is std's: it reads an empty directory's 0 as an
    /// error ("os error 0"), so `read_dir` of an empty directory fails.
    pub fn read_directory(&mut self, fd: i32, buffer: &mut [u8]) -> Result<usize, Errno> {
        let id = *self.descriptors.get(&fd).ok_or(EBADF)?;
        let description = self.descriptions.get(&id).ok_or(EBADF)?;
        let Target::Node(ino) = description.target else {
            return Err(ENOTDIR);
        };
        let node = self.node(ino)?;
        let Content::Directory(entries) = &node.content else {
            return Err(ENOTDIR);
        };
        let listing = entries.iter().map(|(name, &ino)| (name.as_str(), ino));
        let first = usize::try_from(description.offset).unwrap_or(usize::MAX);
        let mut used = 0;
        let mut count = 0;
        for (index, (name, entry_ino)) in listing.enumerate().skip(first) {
            let kind = if self.is_directory(entry_ino) {
                DT_DIR
            } else {
                DT_REG
            };
            let record = DirentRecord {
                ino: entry_ino,
                next: index as i64 + 1,
                kind,
                name,
            };
            match record.write_into(&mut buffer[used..]) {
                Some(bytes) => used += bytes,
                None if count == 0 => return Err(EINVAL),
                None => break,
            }
            count += 1;
        }
        self.descriptions.get_mut(&id).ok_or(EBADF)?.offset += count;
        Ok(used)
    }

    /// `mkdir(path, mode)`.
    pub fn make_directory(&mut self, path: &str, mode: u32) -> Result<(), Errno> {
        let resolved = path::resolve(path)?;
        if self.walk(&resolved.components).is_ok() {
            return Err(EEXIST);
        }
        let content = Content::Directory(BTreeMap::new());
        self.create(&resolved, content, mode & 0o7777).map(drop)
    }

    /// `rmdir(path)`: only an empty directory, never `/`.
    pub fn remove_directory(&mut self, path: &str) -> Result<(), Errno> {
        let resolved = path::resolve(path)?;
        let ino = self.walk(&resolved.components)?;
        if ino == ROOT {
            return Err(EBUSY);
        }
        let Content::Directory(entries) = &self.node(ino)?.content else {
            return Err(ENOTDIR);
        };
        if !entries.is_empty() {
            return Err(ENOTEMPTY);
        }
        self.remove_entry(&resolved, ino)
    }

    /// `unlink(path)`: only a file (a directory is `EISDIR`, as on Linux).
    pub fn unlink(&mut self, path: &str) -> Result<(), Errno> {
        let resolved = path::resolve(path)?;
        let ino = self.walk(&resolved.components)?;
        if self.is_directory(ino) {
            return Err(EISDIR);
        }
        if resolved.wants_directory {
            return Err(ENOTDIR);
        }
        self.remove_entry(&resolved, ino)
    }

    /// Takes the entry for `ino` out of its directory; the node goes when
    /// nothing has it open.
    fn remove_entry(&mut self, resolved: &Resolved<'_>, ino: Ino) -> Result<(), Errno> {
        let (name, parent_path) = resolved.split_last().ok_or(EBUSY)?;
        let parent = self.walk(parent_path)?;
        let now = self.now_ns;
        let parent_node = self.node_mut(parent)?;
        if let Content::Directory(entries) = &mut parent_node.content {
            entries.remove(name);
        }
        parent_node.modified_ns = now;
        self.node_mut(ino)?.linked = false;
        self.forget_if_unused(ino);
        Ok(())
    }

    /// Makes a node at `resolved` (which must not exist) in an existing
    /// directory.
    fn create(
        &mut self,
        resolved: &Resolved<'_>,
        content: Content,
        permissions: u32,
    ) -> Result<Ino, Errno> {
        let (name, parent_path) = resolved.split_last().ok_or(EEXIST)?;
        let parent = self.walk(parent_path)?;
        let ino = self.next_ino;
        let now = self.now_ns;
        let parent_node = self.node_mut(parent)?;
        let Content::Directory(entries) = &mut parent_node.content else {
            return Err(ENOTDIR);
        };
        if !parent_node.linked {
            return Err(ENOENT);
        }
        entries.insert(name.to_string(), ino);
        parent_node.modified_ns = now;
        self.nodes.insert(ino, Node::new(content, permissions, now));
        self.next_ino += 1;
        Ok(ino)
    }

    /// The node the components name, from the root.
    fn walk(&self, components: &[&str]) -> Result<Ino, Errno> {
        components.iter().try_fold(ROOT, |directory, name| {
            match &self.node(directory)?.content {
                Content::Directory(entries) => entries.get(*name).copied().ok_or(ENOENT),
                Content::File(_) => Err(ENOTDIR),
            }
        })
    }

    fn forget_if_unused(&mut self, ino: Ino) {
        if self
            .nodes
            .get(&ino)
            .is_some_and(|node| !node.linked && node.open == 0)
        {
            self.nodes.remove(&ino);
        }
    }

    fn is_directory(&self, ino: Ino) -> bool {
        self.node(ino)
            .is_ok_and(|node| matches!(node.content, Content::Directory(_)))
    }

    fn description(&self, fd: i32) -> Result<&Description, Errno> {
        let id = self.descriptors.get(&fd).ok_or(EBADF)?;
        self.descriptions.get(id).ok_or(EBADF)
    }

    fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(ENOENT)
    }
}

impl Node {
    fn new(content: Content, permissions: u32, now_ns: u64) -> Self {
        Node {
            content,
            permissions,
            linked: true,
            open: 0,
            modified_ns: now_ns,
        }
    }
}

/// `ns` nanoseconds as a `timespec`.
fn timespec_of(ns: u64) -> timespec {
    timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i32,
    }
}

/// One `dirent64` record, laid out as `hermit_abi::dirent64` (the name
/// right after `d_type`, NUL-terminated, the record padded to 8 bytes so
/// the next one is aligned).
struct DirentRecord<'a> {
    ino: Ino,
    next: i64,
    kind: u8,
    name: &'a str,
}

impl DirentRecord<'_> {
    /// Bytes the record takes.
    fn length(&self) -> usize {
        (DIRENT_HEADER_BYTES + self.name.len() + 1).next_multiple_of(8)
    }

    /// Writes the record at the start of `buffer`; its length, or `None`
    /// if it does not fit.
    fn write_into(&self, buffer: &mut [u8]) -> Option<usize> {
        let length = self.length();
        let record = buffer.get_mut(..length)?;
        record.fill(0);
        record[0..8].copy_from_slice(&self.ino.to_le_bytes());
        record[8..16].copy_from_slice(&self.next.to_le_bytes());
        record[16..18].copy_from_slice(&(length as u16).to_le_bytes());
        record[18] = self.kind;
        let name_start = DIRENT_HEADER_BYTES;
        record[name_start..name_start + self.name.len()].copy_from_slice(self.name.as_bytes());
        Some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use hermit_abi::dirent64;
    use std::format;

    const RW_CREATE: i32 = O_RDWR | O_CREAT;

    fn names(fs: &mut FileSystem, path: &str) -> Vec<String> {
        let fd = fs.open(path, O_RDONLY | O_DIRECTORY, 0).unwrap();
        let mut buffer = [0u8; 4096];
        let used = fs.read_directory(fd, &mut buffer).unwrap();
        let mut names = Vec::new();
        let mut at = 0;
        while at < used {
            let length = u16::from_le_bytes([buffer[at + 16], buffer[at + 17]]) as usize;
            let name = &buffer[at + DIRENT_HEADER_BYTES..at + length];
            let end = name.iter().position(|&b| b == 0).unwrap();
            names.push(String::from_utf8(name[..end].to_vec()).unwrap());
            at += length;
        }
        assert_eq!(fs.read_directory(fd, &mut buffer), Ok(0), "then the end");
        fs.close(fd).unwrap();
        names
    }

    #[test]
    fn the_record_layout_is_hermit_abis_dirent64() {
        assert_eq!(offset_of!(dirent64, d_off), 8);
        assert_eq!(offset_of!(dirent64, d_reclen), 16);
        assert_eq!(offset_of!(dirent64, d_type), 18);
        assert_eq!(offset_of!(dirent64, d_name), DIRENT_HEADER_BYTES);
    }

    #[test]
    fn a_new_tree_has_root_tmp_and_the_console() {
        let mut fs = FileSystem::new();
        assert_eq!(names(&mut fs, "/"), ["tmp"]);
        assert_eq!(fs.kind(0), Ok(Kind::Stdin));
        assert_eq!(fs.kind(1), Ok(Kind::Console));
        assert_eq!(fs.kind(2), Ok(Kind::Console));
        assert_eq!(fs.read(0, &mut [0; 4]), Ok(0));
        assert_eq!(fs.stat_path("/tmp").unwrap().st_mode & S_IFDIR, S_IFDIR);
    }

    #[test]
    fn files_are_written_read_back_and_sought() {
        let mut fs = FileSystem::new();
        let fd = fs.open("/tmp/a", RW_CREATE, 0o644).unwrap();
        assert_eq!(fd, 3, "the lowest free descriptor");
        assert_eq!(fs.write(fd, b"hello world"), Ok(11));
        assert_eq!(fs.seek(fd, 6, SEEK_SET), Ok(6));
        let mut buffer = [0; 16];
        assert_eq!(fs.read(fd, &mut buffer), Ok(5));
        assert_eq!(&buffer[..5], b"world");
        assert_eq!(fs.read(fd, &mut buffer), Ok(0));
        assert_eq!(fs.seek(fd, -5, SEEK_END), Ok(6));
        assert_eq!(fs.seek(fd, -7, SEEK_CUR), Err(EINVAL));
        assert_eq!(fs.seek(fd, 2, SEEK_END), Ok(13));
        assert_eq!(fs.write(fd, b"!"), Ok(1));
        let stat = fs.stat_descriptor(fd).unwrap();
        assert_eq!(stat.st_size, 14);
        assert_eq!(stat.st_mode, S_IFREG | 0o644);
        fs.seek(fd, 11, SEEK_SET).unwrap();
        assert_eq!(fs.read(fd, &mut buffer), Ok(3));
        assert_eq!(&buffer[..3], b"\0\0!", "the gap reads as zeros");
    }

    #[test]
    fn open_flags_behave_as_on_unix() {
        let mut fs = FileSystem::new();
        assert_eq!(fs.open("/tmp/x", O_RDONLY, 0), Err(ENOENT));
        let fd = fs
            .open("/tmp/x", O_WRONLY | O_CREAT | O_EXCL, 0o600)
            .unwrap();
        fs.write(fd, b"abc").unwrap();
        assert_eq!(fs.read(fd, &mut [0; 4]), Err(EBADF), "write-only");
        assert_eq!(fs.open("/tmp/x", RW_CREATE | O_EXCL, 0), Err(EEXIST));
        let appender = fs.open("/tmp/x", O_WRONLY | O_APPEND, 0).unwrap();
        fs.write(appender, b"de").unwrap();
        assert_eq!(fs.stat_path("/tmp/x").unwrap().st_size, 5);
        let truncating = fs.open("/tmp/x", O_WRONLY | O_TRUNC, 0).unwrap();
        assert_eq!(fs.stat_descriptor(truncating).unwrap().st_size, 0);
        let reader = fs.open("/tmp/x", O_RDONLY, 0).unwrap();
        assert_eq!(fs.write(reader, b"z"), Err(EBADF));
        assert_eq!(fs.open("/tmp/x", O_RDONLY | O_DIRECTORY, 0), Err(ENOTDIR));
        assert_eq!(fs.open("/tmp/x/", O_RDONLY, 0), Err(ENOTDIR));
        assert_eq!(fs.open("/tmp", O_WRONLY, 0), Err(EISDIR));
        assert_eq!(fs.open("/tmp/x/y", RW_CREATE, 0), Err(ENOTDIR));
        assert_eq!(fs.open("/nowhere/y", RW_CREATE, 0), Err(ENOENT));
        assert_eq!(fs.open("/tmp/x", 3, 0), Err(EINVAL));
    }

    #[test]
    fn directories_are_made_listed_and_removed() {
        let mut fs = FileSystem::new();
        fs.make_directory("/tmp/d", 0o700).unwrap();
        assert_eq!(fs.make_directory("/tmp/d", 0o700), Err(EEXIST));
        assert_eq!(fs.make_directory("/", 0o700), Err(EEXIST));
        assert_eq!(fs.make_directory("/no/d", 0o700), Err(ENOENT));
        for name in ["b", "a", "c"] {
            let fd = fs.open(&format!("/tmp/d/{name}"), RW_CREATE, 0).unwrap();
            fs.close(fd).unwrap();
        }
        assert_eq!(names(&mut fs, "/tmp/d"), ["a", "b", "c"]);
        assert_eq!(fs.remove_directory("/tmp/d"), Err(ENOTEMPTY));
        assert_eq!(fs.unlink("/tmp/d"), Err(EISDIR));
        assert_eq!(fs.remove_directory("/tmp/d/a"), Err(ENOTDIR));
        for name in ["a", "b", "c"] {
            fs.unlink(&format!("tmp/d/../d/{name}")).unwrap();
        }
        assert!(names(&mut fs, "/tmp/d").is_empty());
        fs.remove_directory("/tmp/d").unwrap();
        assert_eq!(fs.stat_path("/tmp/d").unwrap_err(), ENOENT);
        assert_eq!(fs.remove_directory("/"), Err(EBUSY));
    }

    #[test]
    fn a_small_buffer_gets_what_fits_and_a_tiny_one_einval() {
        let mut fs = FileSystem::new();
        fs.make_directory("/a", 0o755).unwrap();
        let fd = fs.open("/", O_RDONLY | O_DIRECTORY, 0).unwrap();
        assert_eq!(fs.read_directory(fd, &mut [0; 8]), Err(EINVAL));
        assert_eq!(fs.read_directory(fd, &mut [0; 30]), Ok(24), "only `a`");
        assert_eq!(fs.read_directory(fd, &mut [0; 100]), Ok(24), "then `tmp`");
        assert_eq!(fs.read_directory(fd, &mut [0; 100]), Ok(0));
    }

    #[test]
    fn unlinked_files_live_while_open_and_dup_shares_the_offset() {
        let mut fs = FileSystem::new();
        let fd = fs.open("/tmp/f", RW_CREATE, 0).unwrap();
        fs.write(fd, b"data").unwrap();
        let copy = fs.dup(fd).unwrap();
        fs.unlink("/tmp/f").unwrap();
        assert_eq!(fs.stat_path("/tmp/f").unwrap_err(), ENOENT);
        assert_eq!(fs.seek(copy, 0, SEEK_CUR), Ok(4), "one shared offset");
        fs.seek(fd, 0, SEEK_SET).unwrap();
        fs.close(fd).unwrap();
        let mut buffer = [0; 8];
        assert_eq!(fs.read(copy, &mut buffer), Ok(4));
        assert_eq!(fs.stat_descriptor(copy).unwrap().st_nlink, 0);
        fs.close(copy).unwrap();
        assert_eq!(fs.close(copy), Err(EBADF));
    }

    #[test]
    fn a_socket_shares_the_numbering_and_ends_with_its_last_descriptor() {
        let mut fs = FileSystem::new();
        let fd = fs.open_socket(7).unwrap();
        assert_eq!(fd, 3, "the lowest free descriptor");
        assert_eq!(fs.kind(fd), Ok(Kind::Socket(7)));
        assert_eq!(
            fs.read(fd, &mut [0; 4]),
            Err(EBADF),
            "the caller reads sockets"
        );
        assert_eq!(fs.stat_descriptor(fd).unwrap().st_mode & S_IFSOCK, S_IFSOCK);
        let copy = fs.dup(fd).unwrap();
        assert_eq!(fs.kind(copy), Ok(Kind::Socket(7)));
        assert_eq!(fs.close_descriptor(fd), Ok(Closed::Descriptor));
        assert_eq!(fs.close_descriptor(copy), Ok(Closed::Socket(7)));
        assert_eq!(fs.close_descriptor(copy), Err(EBADF));
        assert_eq!(fs.nodes.len(), 2, "the root and /tmp only");
    }

    #[test]
    fn the_console_cannot_be_sought_and_descriptors_run_out() {
        let mut fs = FileSystem::new();
        assert_eq!(fs.seek(1, 0, SEEK_SET), Err(ESPIPE));
        assert_eq!(fs.stat_descriptor(1).unwrap().st_mode & S_IFCHR, S_IFCHR);
        let mut opened = 3;
        while fs.open("/", O_RDONLY, 0).is_ok() {
            opened += 1;
        }
        assert_eq!(opened, MAX_OPEN);
        assert_eq!(fs.dup(1), Err(EMFILE));
    }
}
