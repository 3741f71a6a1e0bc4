//! The file `sys_*` functions: the tree behind a guard, pointers from std
//! turned into slices and strings, errors negated.
//!
//! Every call runs with virtual interrupts off (one CPU, so nothing else
//! touches the tree meanwhile) and never blocks. A descriptor may name a
//! network socket: `read`, `write` and the last `close` of one go to the
//! network (`crate::net`), outside the tree's guard, since they may
//! block; [`install_socket`] and [`socket_of`] are how the network
//! numbers its sockets among the files.

use super::Errno;
use super::tree::{Closed, FileSystem, Kind, SocketId};
use crate::console;
use crate::sync::IrqLock;
use core::ffi::{CStr, c_char};
use hermit_abi::errno::{EFAULT, EINVAL, ENOTSOCK};
use hermit_abi::{dirent64, iovec, stat};

/// The one file system, made on first use.
static FILE_SYSTEM: IrqLock<Option<FileSystem>> = IrqLock::new(None);

/// Runs `operation` on the file system, stamping changes with the time.
fn with_file_system<T>(operation: impl FnOnce(&mut FileSystem) -> T) -> T {
    let now = crate::time::realtime_ns();
    FILE_SYSTEM.with(|slot| {
        let fs = slot.get_or_insert_with(FileSystem::new);
        fs.set_clock(now);
        operation(fs)
    })
}

/// A new descriptor for network socket `socket`.
pub(crate) fn install_socket(socket: SocketId) -> Result<i32, Errno> {
    with_file_system(|fs| fs.open_socket(socket))
}

/// The network socket `fd` names: `EBADF` for no descriptor, `ENOTSOCK`
/// for a file.
pub(crate) fn socket_of(fd: i32) -> Result<SocketId, Errno> {
    match with_file_system(|fs| fs.kind(fd))? {
        Kind::Socket(socket) => Ok(socket),
        _ => Err(ENOTSOCK),
    }
}

/// A C string from std as `&str` (std's paths are UTF-8 bytes; others are
/// refused as `EINVAL`).
///
/// # Safety
///
/// `name` must be null or point to a NUL-terminated string that stays put
/// for the call.
unsafe fn path_text<'a>(name: *const c_char) -> Result<&'a str, Errno> {
    if name.is_null() {
        return Err(EFAULT);
    }
    // SAFETY: the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    core::str::from_utf8(bytes).map_err(|_| EINVAL)
}

/// An `i32` result: the value, or the negated error (std's convention for
/// every `sys_*` call, the sockets' too).
pub(crate) fn status(result: Result<i32, Errno>) -> i32 {
    result.unwrap_or_else(|errno| -errno)
}

/// An `isize` result: the count, or the negated error.
pub(crate) fn size(result: Result<usize, Errno>) -> isize {
    match result {
        Ok(count) => isize::try_from(count).unwrap_or(isize::MAX),
        Err(errno) => -(errno as isize),
    }
}

/// Writes `found` where std asked for a `stat`.
///
/// # Safety
///
/// `out` must be null or valid for writing a `stat`.
unsafe fn store_stat(out: *mut stat, found: Result<stat, Errno>) -> i32 {
    if out.is_null() {
        return -EFAULT;
    }
    match found {
        Ok(value) => {
            // SAFETY: the caller promises `out` is writable.
            unsafe { out.write(value) };
            0
        }
        Err(errno) => -errno,
    }
}

/// `open(name, flags, mode)`.
///
/// # Safety
///
/// `name` is a NUL-terminated string or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_open(name: *const c_char, flags: i32, mode: i32) -> i32 {
    // SAFETY: passed on from our caller.
    let path = unsafe { path_text(name) };
    status(path.and_then(|path| with_file_system(|fs| fs.open(path, flags, mode))))
}

/// `close(fd)`; the last descriptor of a socket closes the socket.
#[unsafe(no_mangle)]
pub extern "C" fn sys_close(fd: i32) -> i32 {
    let closed = with_file_system(|fs| fs.close_descriptor(fd));
    if let Ok(Closed::Socket(socket)) = closed {
        crate::net::close(socket);
    }
    status(closed.map(|_| 0))
}

/// `dup(fd)`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_dup(fd: i32) -> i32 {
    status(with_file_system(|fs| fs.dup(fd)))
}

/// `read(fd, buf, len)`.
///
/// # Safety
///
/// `buf` is valid for writing `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_read(fd: i32, buf: *mut u8, len: usize) -> isize {
    if buf.is_null() && len > 0 {
        return -(EFAULT as isize);
    }
    // SAFETY: the caller promises `len` writable bytes at `buf`; an empty
    // read uses a dangling but aligned pointer, which a zero-length slice
    // allows.
    let buffer = unsafe { slice_mut(buf, len) };
    if let Ok(socket) = socket_of(fd) {
        return size(crate::net::receive(socket, buffer, 0));
    }
    size(with_file_system(|fs| fs.read(fd, buffer)))
}

/// `readv(fd, iov, iovcnt)`: each buffer in turn, stopping at a short read.
///
/// # Safety
///
/// `iov` points to `iovcnt` `iovec`s, each valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_readv(fd: i32, iov: *const iovec, iovcnt: usize) -> isize {
    let mut total = 0usize;
    // SAFETY: the caller promises `iovcnt` iovecs at `iov`.
    for vector in unsafe { slice(iov, iovcnt) } {
        // SAFETY: each iovec names writable memory, as the caller promises.
        let read = unsafe { sys_read(fd, vector.iov_base.cast(), vector.iov_len) };
        if read < 0 {
            return if total > 0 { total as isize } else { read };
        }
        total += read as usize;
        if (read as usize) < vector.iov_len {
            break;
        }
    }
    total as isize
}

/// `write(fd, buf, len)`: the console for descriptors on it, else the tree.
///
/// # Safety
///
/// `buf` is valid for reading `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_write(fd: i32, buf: *const u8, len: usize) -> isize {
    if buf.is_null() && len > 0 {
        return -(EFAULT as isize);
    }
    // SAFETY: the caller promises `len` readable bytes at `buf`.
    let bytes = unsafe { slice(buf, len) };
    if let Ok(socket) = socket_of(fd) {
        return size(crate::net::send(socket, bytes));
    }
    let written = with_file_system(|fs| match fs.kind(fd)? {
        Kind::Console => Ok(None),
        _ => fs.write(fd, bytes).map(Some),
    });
    match written {
        Ok(Some(count)) => size(Ok(count)),
        Ok(None) => {
            console::write(bytes);
            size(Ok(bytes.len()))
        }
        Err(errno) => size(Err(errno)),
    }
}

/// `writev(fd, iov, iovcnt)`. On the console the pieces are gathered
/// first, so that a line made of several pieces is one console write.
///
/// # Safety
///
/// `iov` points to `iovcnt` `iovec`s, each valid for reading.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_writev(fd: i32, iov: *const iovec, iovcnt: usize) -> isize {
    // SAFETY: the caller promises `iovcnt` iovecs at `iov`.
    let vectors = unsafe { slice(iov, iovcnt) };
    if with_file_system(|fs| fs.kind(fd)) == Ok(Kind::Console) {
        return console::write_gathered(vectors.iter().map(|vector| {
            // SAFETY: each iovec names readable memory, as the caller
            // promises.
            unsafe { slice(vector.iov_base.cast::<u8>(), vector.iov_len) }
        })) as isize;
    }
    let mut total = 0isize;
    for vector in vectors {
        // SAFETY: as above.
        let written = unsafe { sys_write(fd, vector.iov_base.cast(), vector.iov_len) };
        if written < 0 {
            return if total > 0 { total } else { written };
        }
        total += written;
    }
    total
}

/// `lseek(fd, offset, whence)`: the new offset.
#[unsafe(no_mangle)]
pub extern "C" fn sys_lseek(fd: i32, offset: isize, whence: i32) -> isize {
    let sought = with_file_system(|fs| fs.seek(fd, offset as i64, whence));
    size(sought.map(|offset| offset as usize))
}

/// `stat(name, stat)`.
///
/// # Safety
///
/// `name` is a NUL-terminated string or null; `out` is writable or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_stat(name: *const c_char, out: *mut stat) -> i32 {
    // SAFETY: passed on from our caller.
    let path = unsafe { path_text(name) };
    let found = path.and_then(|path| with_file_system(|fs| fs.stat_path(path)));
    // SAFETY: passed on from our caller.
    unsafe { store_stat(out, found) }
}

/// `lstat(name, stat)`: as `stat`, there being no symbolic links.
///
/// # Safety
///
/// As for [`sys_stat`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_lstat(name: *const c_char, out: *mut stat) -> i32 {
    // SAFETY: the same contract.
    unsafe { sys_stat(name, out) }
}

/// `fstat(fd, stat)`.
///
/// # Safety
///
/// `out` is writable or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_fstat(fd: i32, out: *mut stat) -> i32 {
    let found = with_file_system(|fs| fs.stat_descriptor(fd));
    // SAFETY: passed on from our caller.
    unsafe { store_stat(out, found) }
}

/// `getdents64(fd, dirp, count)`: bytes of records written, 0 at the end.
///
/// # Safety
///
/// `dirp` is valid for writing `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getdents64(fd: i32, dirp: *mut dirent64, count: usize) -> i64 {
    if dirp.is_null() {
        return -i64::from(EFAULT);
    }
    // SAFETY: the caller promises `count` writable bytes at `dirp`.
    let buffer = unsafe { slice_mut(dirp.cast::<u8>(), count) };
    match with_file_system(|fs| fs.read_directory(fd, buffer)) {
        Ok(used) => used as i64,
        Err(errno) => -i64::from(errno),
    }
}

/// `mkdir(name, mode)`.
///
/// # Safety
///
/// `name` is a NUL-terminated string or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_mkdir(name: *const i8, mode: u32) -> i32 {
    // SAFETY: passed on from our caller.
    let path = unsafe { path_text(name.cast()) };
    status(path.and_then(|path| with_file_system(|fs| fs.make_directory(path, mode)).map(|()| 0)))
}

/// `rmdir(name)`.
///
/// # Safety
///
/// `name` is a NUL-terminated string or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_rmdir(name: *const c_char) -> i32 {
    // SAFETY: passed on from our caller.
    let path = unsafe { path_text(name) };
    status(path.and_then(|path| with_file_system(|fs| fs.remove_directory(path)).map(|()| 0)))
}

/// `unlink(name)`.
///
/// # Safety
///
/// `name` is a NUL-terminated string or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_unlink(name: *const c_char) -> i32 {
    // SAFETY: passed on from our caller.
    let path = unsafe { path_text(name) };
    status(path.and_then(|path| with_file_system(|fs| fs.unlink(path)).map(|()| 0)))
}

/// `len` elements at `data` as a slice; empty when `len` is 0, whatever
/// the pointer.
///
/// # Safety
///
/// Unless `len` is 0, `data` must be valid for reading `len` elements for
/// the caller's lifetime `'a`.
unsafe fn slice<'a, T>(data: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller promises `len` readable elements.
    unsafe { core::slice::from_raw_parts(data, len) }
}

/// As [`slice`], writable.
///
/// # Safety
///
/// Unless `len` is 0, `data` must be valid for writing `len` elements for
/// the caller's lifetime `'a`, and nothing else may use them meanwhile.
unsafe fn slice_mut<'a, T>(data: *mut T, len: usize) -> &'a mut [T] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller promises `len` writable elements.
    unsafe { core::slice::from_raw_parts_mut(data, len) }
}
