//! The socket `sys_*` functions std calls on Hermit, with std's
//! convention of a negated `errno` on failure (`getaddrinfo`: an `EAI_*`
//! code). Pointers from std become slices and addresses here; the work
//! is `super::stack`'s, the waiting `super::block_on`'s.
//!
//! | call | what it does |
//! | --- | --- |
//! | `socket` | `AF_INET` with `SOCK_STREAM` or `SOCK_DGRAM` (`SOCK_NONBLOCK` honoured); `AF_INET6` is `EAFNOSUPPORT` |
//! | `bind`, `listen`, `accept`, `connect` | as on Unix; a nonblocking `connect` answers `EINPROGRESS` and `poll` says when it is done |
//! | `recv`, `recvfrom`, `send`, `sendto` (and `read`, `write` on a socket) | `MSG_PEEK` honoured, other flags ignored |
//! | `shutdown`, `getsockname`, `getpeername` | as on Unix |
//! | `setsockopt`, `getsockopt` | `TCP_NODELAY`, `SO_REUSEADDR`, `SO_KEEPALIVE`, `SO_BROADCAST`, `SO_LINGER`, `SO_RCVTIMEO`, `SO_SNDTIMEO`, `SO_ERROR`; others `ENOPROTOOPT` |
//! | `ioctl` | `FIONBIO` |
//! | `poll` | sockets by readiness; files and the console always ready |
//! | `getaddrinfo` | numeric IPv4 addresses and `localhost` |

use super::address::{read_socket_address, resolve, socket_address, socket_address_bytes};
use super::stack::{Protocol, Shutdown};
use super::{Direction, Errno, SocketId, block_on, wait_until, with_stack};
use crate::fs::syscalls::{install_socket, socket_of};
use crate::fs::syscalls::{size, status};
use crate::time;
use alloc::boxed::Box;
use core::ffi::{CStr, c_char, c_void};
use core::net::SocketAddrV4;
use hermit_abi::errno::{
    EAFNOSUPPORT, EAGAIN, EBADF, EFAULT, EINPROGRESS, EINVAL, ENOPROTOOPT, ENOTSOCK, EPROTOTYPE,
    ETIMEDOUT,
};
use hermit_abi::{
    AF_INET, AF_INET6, AF_UNSPEC, EAI_FAMILY, EAI_NONAME, EAI_SERVICE, FIONBIO, IPPROTO_TCP,
    POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLRDNORM, POLLWRNORM, SHUT_RD, SHUT_RDWR, SHUT_WR,
    SO_BROADCAST, SO_ERROR, SO_KEEPALIVE, SO_LINGER, SO_RCVTIMEO, SO_REUSEADDR, SO_SNDTIMEO,
    SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, TCP_NODELAY, addrinfo,
    linger, nfds_t, pollfd, sockaddr, sockaddr_in, socklen_t, timeval,
};

/// How long a blocking `connect` tries before `ETIMEDOUT`, unless
/// `SO_SNDTIMEO` says otherwise (BSD's 75 seconds).
const CONNECT_LIMIT_NS: u64 = 75_000_000_000;

/// The socket descriptor `fd` names.
fn socket(fd: i32) -> Result<SocketId, Errno> {
    socket_of(fd)
}

/// The IPv4 address std passed.
///
/// # Safety
///
/// `name` is null or valid for reading `len` bytes.
unsafe fn address_in(name: *const sockaddr, len: socklen_t) -> Result<SocketAddrV4, Errno> {
    if name.is_null() {
        return Err(EFAULT);
    }
    // SAFETY: the caller promises `len` readable bytes.
    let raw = unsafe { core::slice::from_raw_parts(name.cast::<u8>(), len as usize) };
    read_socket_address(raw)
}

/// Writes `address` where std asked, cut to the room it gave, and the
/// full length; nothing if `name` is null.
///
/// # Safety
///
/// `name` is null, or `len` is readable and writable and `name` valid for
/// writing `*len` bytes.
unsafe fn store_address(address: SocketAddrV4, name: *mut sockaddr, len: *mut socklen_t) {
    if name.is_null() || len.is_null() {
        return;
    }
    let (bytes, full) = socket_address_bytes(address);
    // SAFETY: the caller promises `len` readable and writable, and room for
    // `*len` bytes at `name`.
    unsafe {
        let room = (len.read() as usize).min(bytes.len());
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), room);
        len.write(full);
    }
}

/// `len` bytes at `data`, or an empty slice.
///
/// # Safety
///
/// Unless `len` is 0, `data` is valid for reading `len` bytes for `'a`.
unsafe fn bytes_in<'a>(data: *const u8, len: usize) -> Result<&'a [u8], Errno> {
    match (data.is_null(), len) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(EFAULT),
        // SAFETY: the caller promises `len` readable bytes.
        (false, _) => Ok(unsafe { core::slice::from_raw_parts(data, len) }),
    }
}

/// As [`bytes_in`], writable.
///
/// # Safety
///
/// Unless `len` is 0, `data` is valid for writing `len` bytes for `'a`,
/// and nothing else uses them meanwhile.
unsafe fn bytes_out<'a>(data: *mut u8, len: usize) -> Result<&'a mut [u8], Errno> {
    match (data.is_null(), len) {
        (_, 0) => Ok(&mut []),
        (true, _) => Err(EFAULT),
        // SAFETY: the caller promises `len` writable bytes.
        (false, _) => Ok(unsafe { core::slice::from_raw_parts_mut(data, len) }),
    }
}

/// `socket(domain, type, protocol)`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_socket(domain: i32, kind: i32, _protocol: i32) -> i32 {
    status(open_socket(domain, kind))
}

fn open_socket(domain: i32, kind: i32) -> Result<i32, Errno> {
    if domain == AF_INET6 {
        return Err(EAFNOSUPPORT);
    }
    if domain != AF_INET {
        return Err(EAFNOSUPPORT);
    }
    let protocol = match kind & !(SOCK_NONBLOCK | SOCK_CLOEXEC) {
        SOCK_STREAM => Protocol::Tcp,
        SOCK_DGRAM => Protocol::Udp,
        _ => return Err(EPROTOTYPE),
    };
    let nonblocking = kind & SOCK_NONBLOCK != 0;
    let id = with_stack(|stack| stack.create(protocol, nonblocking))?;
    install_socket(id).inspect_err(|_| super::close(id))
}

/// `bind(s, name, namelen)`.
///
/// # Safety
///
/// `name` is null or valid for reading `namelen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_bind(s: i32, name: *const sockaddr, namelen: socklen_t) -> i32 {
    // SAFETY: passed on from our caller.
    let address = unsafe { address_in(name, namelen) };
    status(address.and_then(|address| {
        let id = socket(s)?;
        with_stack(|stack| stack.bind(id, address))?.map(|()| 0)
    }))
}

/// `listen(s, backlog)`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_listen(s: i32, backlog: i32) -> i32 {
    status(socket(s).and_then(|id| with_stack(|stack| stack.listen(id, backlog))?.map(|()| 0)))
}

/// `accept(s, addr, addrlen)`: a new descriptor for the next connection.
///
/// # Safety
///
/// `addr` is null, or `addrlen` readable and writable and `addr` valid
/// for writing `*addrlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_accept(s: i32, addr: *mut sockaddr, addrlen: *mut socklen_t) -> i32 {
    let accepted =
        socket(s).and_then(|id| block_on(id, Direction::Receive, |stack| stack.accept(id)));
    status(accepted.and_then(|(stream, peer)| {
        let fd = install_socket(stream).inspect_err(|_| super::close(stream))?;
        // SAFETY: passed on from our caller.
        unsafe { store_address(peer, addr, addrlen) };
        Ok(fd)
    }))
}

/// `connect(s, name, namelen)`.
///
/// # Safety
///
/// `name` is null or valid for reading `namelen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_connect(s: i32, name: *const sockaddr, namelen: socklen_t) -> i32 {
    // SAFETY: passed on from our caller.
    let address = unsafe { address_in(name, namelen) };
    status(address.and_then(|to| connect(socket(s)?, to)).map(|()| 0))
}

fn connect(id: SocketId, to: SocketAddrV4) -> Result<(), Errno> {
    let (protocol, options) = with_stack(|stack| {
        stack.start_connect(id, to)?;
        Ok::<_, Errno>((stack.protocol(id)?, *stack.options(id)?))
    })??;
    if protocol == Protocol::Udp {
        return Ok(());
    }
    let limit = options.send_timeout.unwrap_or(CONNECT_LIMIT_NS);
    let deadline = time::now_ns().saturating_add(limit);
    let connected = wait_until(options.nonblocking, Some(deadline), |stack| {
        stack.connect_progress(id)
    });
    match connected {
        Err(EAGAIN) if options.nonblocking => Err(EINPROGRESS),
        Err(EAGAIN) => Err(ETIMEDOUT),
        other => other,
    }
}

/// `recv(s, buf, len, flags)`.
///
/// # Safety
///
/// `buf` is valid for writing `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_recv(s: i32, buf: *mut u8, len: usize, flags: i32) -> isize {
    // SAFETY: passed on from our caller.
    let buffer = unsafe { bytes_out(buf, len) };
    size(buffer.and_then(|buffer| super::receive(socket(s)?, buffer, flags)))
}

/// `recvfrom(s, buf, len, flags, addr, addrlen)`.
///
/// # Safety
///
/// `buf` is valid for writing `len` bytes; `addr` is null, or `addrlen`
/// readable and writable and `addr` valid for writing `*addrlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_recvfrom(
    s: i32,
    buf: *mut u8,
    len: usize,
    flags: i32,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> isize {
    let peek = flags & hermit_abi::MSG_PEEK != 0;
    // SAFETY: passed on from our caller.
    let buffer = unsafe { bytes_out(buf, len) };
    let received = buffer.and_then(|buffer| {
        let id = socket(s)?;
        block_on(id, Direction::Receive, |stack| {
            stack.receive_from(id, buffer, peek)
        })
    });
    size(received.map(|(count, from)| {
        // SAFETY: passed on from our caller.
        unsafe { store_address(from, addr, addrlen) };
        count
    }))
}

/// `send(s, mem, len, flags)`.
///
/// # Safety
///
/// `mem` is valid for reading `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_send(s: i32, mem: *const c_void, len: usize, _flags: i32) -> isize {
    // SAFETY: passed on from our caller.
    let bytes = unsafe { bytes_in(mem.cast(), len) };
    size(bytes.and_then(|bytes| super::send(socket(s)?, bytes)))
}

/// `sendto(s, mem, len, flags, to, tolen)`: one datagram.
///
/// # Safety
///
/// `mem` is valid for reading `len` bytes; `to` is null or valid for
/// reading `tolen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_sendto(
    s: i32,
    mem: *const c_void,
    len: usize,
    _flags: i32,
    to: *const sockaddr,
    tolen: socklen_t,
) -> isize {
    // SAFETY: passed on from our caller.
    let bytes = unsafe { bytes_in(mem.cast(), len) };
    let destination = if to.is_null() {
        Ok(None)
    } else {
        // SAFETY: passed on from our caller.
        unsafe { address_in(to, tolen) }.map(Some)
    };
    size(bytes.and_then(|bytes| {
        let destination = destination?;
        let id = socket(s)?;
        block_on(id, Direction::Send, |stack| {
            stack.send_to(id, bytes, destination)
        })
    }))
}

/// `shutdown(s, how)`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_shutdown(s: i32, how: i32) -> i32 {
    let how = match how {
        SHUT_RD => Shutdown {
            read: true,
            write: false,
        },
        SHUT_WR => Shutdown {
            read: false,
            write: true,
        },
        SHUT_RDWR => Shutdown {
            read: true,
            write: true,
        },
        _ => return -EINVAL,
    };
    let done = socket(s).and_then(|id| with_stack(|stack| stack.shutdown(id, how))?);
    if done.is_ok() {
        // Send the FIN now rather than at the next call.
        let _ = wait_until(true, None, |_| Some(Ok(())));
    }
    status(done.map(|()| 0))
}

/// `shutdown_socket(s, how)`: the same.
#[unsafe(no_mangle)]
pub extern "C" fn sys_shutdown_socket(s: i32, how: i32) -> i32 {
    sys_shutdown(s, how)
}

/// `getpeername(s, name, namelen)`.
///
/// # Safety
///
/// As for [`store_address`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getpeername(s: i32, name: *mut sockaddr, len: *mut socklen_t) -> i32 {
    let peer = socket(s).and_then(|id| with_stack(|stack| stack.peer_address(id))?);
    status(peer.map(|peer| {
        // SAFETY: passed on from our caller.
        unsafe { store_address(peer, name, len) };
        0
    }))
}

/// `getsockname(s, name, namelen)`: an address bound to "any" reads as
/// such, as on Unix.
///
/// # Safety
///
/// As for [`store_address`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getsockname(s: i32, name: *mut sockaddr, len: *mut socklen_t) -> i32 {
    let local = socket(s).and_then(|id| with_stack(|stack| stack.local_address(id))?);
    status(local.map(|local| {
        // SAFETY: passed on from our caller.
        unsafe { store_address(local, name, len) };
        0
    }))
}

/// A socket option's value as std passes it.
#[derive(Debug, Clone, Copy)]
enum OptionValue {
    Flag(bool),
    Timeout(Option<u64>),
    Linger(Option<i32>),
    Error(Errno),
}

/// Reads a `T` std passed as an option value.
///
/// # Safety
///
/// `value` is null or valid for reading `len` bytes.
unsafe fn option_in<T: Copy>(value: *const c_void, len: socklen_t) -> Result<T, Errno> {
    if value.is_null() || (len as usize) < size_of::<T>() {
        return Err(EINVAL);
    }
    // SAFETY: the caller promises `len` readable bytes, at least a `T`; std
    // passes them unaligned at worst, so read them so.
    Ok(unsafe { value.cast::<T>().read_unaligned() })
}

/// `setsockopt(s, level, optname, optval, optlen)`.
///
/// # Safety
///
/// `optval` is null or valid for reading `optlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_setsockopt(
    s: i32,
    level: i32,
    optname: i32,
    optval: *const c_void,
    optlen: socklen_t,
) -> i32 {
    // SAFETY: passed on from our caller, for each type its option takes.
    let value = unsafe {
        match (level, optname) {
            (SOL_SOCKET, SO_RCVTIMEO | SO_SNDTIMEO) => {
                option_in::<timeval>(optval, optlen).map(|t| OptionValue::Timeout(timeval_ns(t)))
            }
            (SOL_SOCKET, SO_LINGER) => option_in::<linger>(optval, optlen)
                .map(|l| OptionValue::Linger((l.l_onoff != 0).then_some(l.l_linger))),
            _ => option_in::<i32>(optval, optlen).map(|v| OptionValue::Flag(v != 0)),
        }
    };
    status(value.and_then(|value| {
        let id = socket(s)?;
        with_stack(|stack| {
            let options = stack.options(id)?;
            match (level, optname, value) {
                (IPPROTO_TCP, TCP_NODELAY, OptionValue::Flag(on)) => options.nodelay = on,
                (SOL_SOCKET, SO_REUSEADDR, OptionValue::Flag(on)) => options.reuse_address = on,
                (SOL_SOCKET, SO_KEEPALIVE, OptionValue::Flag(on)) => options.keep_alive = on,
                (SOL_SOCKET, SO_BROADCAST, OptionValue::Flag(on)) => options.broadcast = on,
                (SOL_SOCKET, SO_LINGER, OptionValue::Linger(l)) => options.linger = l,
                (SOL_SOCKET, SO_RCVTIMEO, OptionValue::Timeout(t)) => options.receive_timeout = t,
                (SOL_SOCKET, SO_SNDTIMEO, OptionValue::Timeout(t)) => options.send_timeout = t,
                _ => return Err(ENOPROTOOPT),
            }
            stack.options_changed(id);
            Ok(0)
        })?
    }))
}

/// A `timeval` as nanoseconds; zero means none, as `SO_RCVTIMEO` says.
fn timeval_ns(value: timeval) -> Option<u64> {
    let seconds = u64::try_from(value.tv_sec).ok()?;
    let micros = u64::try_from(value.tv_usec).ok()?;
    let ns = seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(micros * 1000);
    (ns > 0).then_some(ns)
}

/// Nanoseconds as a `timeval`; none is zero.
fn ns_timeval(ns: Option<u64>) -> timeval {
    let ns = ns.unwrap_or(0);
    timeval {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_usec: ((ns % 1_000_000_000) / 1000) as i32,
    }
}

/// Writes `value` where std asked, if it has room.
///
/// # Safety
///
/// `out` is null or `len` readable and writable and `out` valid for
/// writing `*len` bytes.
unsafe fn option_out<T: Copy>(
    value: T,
    out: *mut c_void,
    len: *mut socklen_t,
) -> Result<i32, Errno> {
    if out.is_null() || len.is_null() {
        return Err(EFAULT);
    }
    // SAFETY: the caller promises `len` readable and writable, and `*len`
    // writable bytes at `out`, which we check hold a `T`.
    unsafe {
        if (len.read() as usize) < size_of::<T>() {
            return Err(EINVAL);
        }
        out.cast::<T>().write_unaligned(value);
        len.write(size_of::<T>() as socklen_t);
    }
    Ok(0)
}

/// `getsockopt(s, level, optname, optval, optlen)`.
///
/// # Safety
///
/// `optval` is null, or `optlen` readable and writable and `optval` valid
/// for writing `*optlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getsockopt(
    s: i32,
    level: i32,
    optname: i32,
    optval: *mut c_void,
    optlen: *mut socklen_t,
) -> i32 {
    let value = socket(s).and_then(|id| {
        with_stack(|stack| {
            if (level, optname) == (SOL_SOCKET, SO_ERROR) {
                return Ok(OptionValue::Error(stack.take_error(id)?));
            }
            let options = *stack.options(id)?;
            Ok(match (level, optname) {
                (IPPROTO_TCP, TCP_NODELAY) => OptionValue::Flag(options.nodelay),
                (SOL_SOCKET, SO_REUSEADDR) => OptionValue::Flag(options.reuse_address),
                (SOL_SOCKET, SO_KEEPALIVE) => OptionValue::Flag(options.keep_alive),
                (SOL_SOCKET, SO_BROADCAST) => OptionValue::Flag(options.broadcast),
                (SOL_SOCKET, SO_LINGER) => OptionValue::Linger(options.linger),
                (SOL_SOCKET, SO_RCVTIMEO) => OptionValue::Timeout(options.receive_timeout),
                (SOL_SOCKET, SO_SNDTIMEO) => OptionValue::Timeout(options.send_timeout),
                _ => return Err(ENOPROTOOPT),
            })
        })?
    });
    // SAFETY: passed on from our caller, each option in its type.
    status(value.and_then(|value| unsafe {
        match value {
            OptionValue::Flag(on) => option_out(i32::from(on), optval, optlen),
            OptionValue::Error(errno) => option_out(errno, optval, optlen),
            OptionValue::Timeout(ns) => option_out(ns_timeval(ns), optval, optlen),
            OptionValue::Linger(l) => option_out(
                linger {
                    l_onoff: i32::from(l.is_some()),
                    l_linger: l.unwrap_or(0),
                },
                optval,
                optlen,
            ),
        }
    }))
}

/// `ioctl(s, cmd, argp)`: `FIONBIO` only.
///
/// # Safety
///
/// For `FIONBIO`, `argp` is null or points to a readable `i32`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_ioctl(s: i32, cmd: i32, argp: *mut c_void) -> i32 {
    if cmd != FIONBIO {
        return -EINVAL;
    }
    // SAFETY: passed on from our caller.
    let on = unsafe { option_in::<i32>(argp, size_of::<i32>() as socklen_t) };
    status(on.and_then(|on| {
        let id = socket(s)?;
        with_stack(|stack| {
            stack
                .options(id)
                .map(|options| options.nonblocking = on != 0)
        })?
        .map(|()| 0)
    }))
}

/// What one `pollfd` names.
#[derive(Clone, Copy)]
enum Polled {
    Ignored,
    Invalid,
    File,
    Socket(SocketId),
}

fn polled(fd: i32) -> Polled {
    if fd < 0 {
        return Polled::Ignored;
    }
    match socket(fd) {
        Ok(id) => Polled::Socket(id),
        Err(ENOTSOCK) => Polled::File,
        Err(_) => Polled::Invalid,
    }
}

/// The `revents` for `entry`, asked for `events`.
fn revents(stack: &mut super::stack::Stack, entry: Polled, events: i16) -> i16 {
    let readable = POLLIN | POLLRDNORM;
    let writable = POLLOUT | POLLWRNORM;
    match entry {
        Polled::Ignored => 0,
        Polled::Invalid => POLLNVAL,
        Polled::File => events & (readable | writable),
        Polled::Socket(id) => match stack.readiness(id) {
            Err(_) => POLLNVAL,
            Ok(ready) => {
                let mut found = 0;
                if ready.readable {
                    found |= events & readable;
                }
                if ready.writable {
                    found |= events & writable;
                }
                if ready.hung_up {
                    found |= POLLHUP;
                }
                found
            }
        },
    }
}

/// `poll(fds, nfds, timeout)`: how many entries have events, waiting up
/// to `timeout` milliseconds (negative: for ever) for one.
///
/// # Safety
///
/// `fds` is valid for reading and writing `nfds` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_poll(fds: *mut pollfd, nfds: nfds_t, timeout: i32) -> i32 {
    if fds.is_null() && nfds > 0 {
        return -EFAULT;
    }
    // SAFETY: the caller promises `nfds` entries at `fds`.
    let entries = unsafe { bytes_out(fds.cast::<u8>(), nfds * size_of::<pollfd>()) };
    let Ok(entries) = entries else {
        return -EFAULT;
    };
    // SAFETY: the bytes are `nfds` pollfds, as the caller promised.
    let entries =
        unsafe { core::slice::from_raw_parts_mut(entries.as_mut_ptr().cast::<pollfd>(), nfds) };
    let named: alloc::vec::Vec<Polled> = entries.iter().map(|entry| polled(entry.fd)).collect();
    let deadline = u64::try_from(timeout)
        .ok()
        .map(|ms| time::now_ns().saturating_add(ms.saturating_mul(1_000_000)));
    let found = wait_until(timeout == 0, deadline, |stack| {
        let mut count = 0;
        for (entry, &what) in entries.iter_mut().zip(&named) {
            entry.revents = revents(stack, what, entry.events);
            count += i32::from(entry.revents != 0);
        }
        (count > 0).then_some(Ok(count))
    });
    match found {
        Err(EAGAIN) => 0,
        Err(EBADF) if named.iter().all(|n| !matches!(n, Polled::Socket(_))) => {
            // No network at all: files and the console still answer.
            entries.iter().filter(|e| e.revents != 0).count() as i32
        }
        other => status(other),
    }
}

/// One answer of `getaddrinfo`, with the address it points to.
#[repr(C)]
struct AddressInfo {
    info: addrinfo,
    address: sockaddr_in,
}

/// `getaddrinfo(nodename, servname, hints, res)`: numeric IPv4 addresses
/// and `localhost`, one answer; `EAI_NONAME` for other names (there is no
/// resolver).
///
/// # Safety
///
/// `nodename` and `servname` are null or NUL-terminated strings; `hints`
/// is null or readable; `res` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_getaddrinfo(
    nodename: *const c_char,
    servname: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> i32 {
    if res.is_null() || nodename.is_null() {
        return EAI_NONAME;
    }
    // SAFETY: the caller promises NUL-terminated strings or null.
    let (node, service) = unsafe {
        (
            CStr::from_ptr(nodename).to_str().ok(),
            (!servname.is_null()).then(|| CStr::from_ptr(servname).to_str().ok()),
        )
    };
    // SAFETY: the caller promises `hints` null or readable.
    let hints = unsafe { hints.as_ref() };
    let family = hints.map_or(AF_UNSPEC, |h| h.ai_family);
    if family != AF_UNSPEC && family != AF_INET {
        return EAI_FAMILY;
    }
    let Some(address) = node.and_then(resolve) else {
        return EAI_NONAME;
    };
    let port = match service {
        None => 0,
        Some(Some(text)) if text.parse::<u16>().is_ok() => text.parse().unwrap_or(0),
        Some(_) => return EAI_SERVICE,
    };
    let socktype = hints.map_or(0, |h| h.ai_socktype);
    let mut answer = Box::new(AddressInfo {
        info: addrinfo {
            ai_flags: 0,
            ai_family: AF_INET,
            ai_socktype: if socktype == 0 { SOCK_STREAM } else { socktype },
            ai_protocol: hints.map_or(0, |h| h.ai_protocol),
            ai_addrlen: size_of::<sockaddr_in>() as socklen_t,
            ai_canonname: core::ptr::null_mut(),
            ai_addr: core::ptr::null_mut(),
            ai_next: core::ptr::null_mut(),
        },
        address: socket_address(SocketAddrV4::new(address, port)),
    });
    answer.info.ai_addr = (&raw mut answer.address).cast();
    let answer = Box::into_raw(answer);
    // SAFETY: the caller promises `res` writable; `info` is the first field
    // of the repr(C) answer, so its address is the answer's.
    unsafe { res.write(answer.cast()) };
    0
}

/// `freeaddrinfo(ai)`: what `getaddrinfo` handed out.
///
/// # Safety
///
/// `ai` is null or came from [`sys_getaddrinfo`] and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_freeaddrinfo(ai: *mut addrinfo) {
    if !ai.is_null() {
        // SAFETY: the caller promises it is one of our answers (a single
        // boxed AddressInfo, whose first field `ai` points to).
        drop(unsafe { Box::from_raw(ai.cast::<AddressInfo>()) });
    }
}
