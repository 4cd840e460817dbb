//! Kernel receive timestamps: when the bytes a read returns reached the
//! socket, not when the reader got round to reading them.
//!
//! A measuring client (the load generator) reads thousands of sockets from
//! one thread, so the time it reads a copy includes its own wake-up and the
//! reads before it in the same pass: on a real network each client has its
//! own machine and sees the copy at its socket's time. With `SO_TIMESTAMPNS`
//! the kernel stamps every segment as it is queued on the receiving socket,
//! and `recvmsg` returns the stamp of the last segment it consumed.
//!
//! The kernel turns stamping on (a static key) in deferred work once the
//! first socket asks for it, so segments in the first moments after that
//! may arrive unstamped: [`recv`] then returns no stamp.
//!
//! The stamp is `CLOCK_REALTIME`; [`recv`] turns it into an [`Instant`] by
//! its age at the read (`CLOCK_REALTIME` and `CLOCK_MONOTONIC` are slewed
//! alike, so the age is exact but for a clock step in between).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Ask the kernel to stamp every segment queued on `fd` (`SO_TIMESTAMPNS`).
pub fn enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a valid descriptor with a c_int value of the
    // size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Read from `stream`, with its receive stamp if `stamped` ([`recv`]), else
/// with a plain `read` and no stamp.
pub fn read<S: io::Read + AsFd>(
    stream: &mut S,
    buf: &mut [u8],
    stamped: bool,
) -> io::Result<(usize, Option<Instant>)> {
    if stamped {
        recv(stream.as_fd(), buf)
    } else {
        stream.read(buf).map(|n| (n, None))
    }
}

/// Control buffer for one `SCM_TIMESTAMPNS` (a `cmsghdr` and a `timespec`,
/// aligned as a `cmsghdr`).
#[repr(C)]
struct Control {
    _align: [libc::cmsghdr; 0],
    buf: [u8; 64],
}

/// `read(2)` that also returns when the last byte read reached the socket,
/// if the socket stamps ([`enable`]) and the kernel gave a stamp. `Ok(0)` is
/// end of stream, as for `read`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<Instant>)> {
    let mut control = Control {
        _align: [],
        buf: [0; 64],
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf.as_mut_ptr().cast();
    msg.msg_controllen = control.buf.len() as _;
    // SAFETY: msg points at one iovec over `buf` and at `control`, both live
    // and writable for the call's duration, with their true lengths.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, stamp_of(&msg)))
}

/// The `SCM_TIMESTAMPNS` of a `recvmsg`'s result, as an [`Instant`].
fn stamp_of(msg: &libc::msghdr) -> Option<Instant> {
    // SAFETY: msg is the msghdr recvmsg just filled: its control pointer and
    // length describe the kernel-written control messages, which the CMSG_*
    // functions walk within that length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return instant_of(ts);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// A `CLOCK_REALTIME` stamp as the [`Instant`] it was that long ago.
fn instant_of(ts: libc::timespec) -> Option<Instant> {
    if ts.tv_sec <= 0 {
        return None;
    }
    let stamp = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let now = Instant::now();
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    // A stamp from the future (the clock stepped back) is taken as now.
    now.checked_sub(wall.saturating_sub(stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn a_read_carries_when_its_bytes_arrived() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut tx = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (rx, _) = l.accept().expect("accept");
        enable(rx.as_fd()).expect("SO_TIMESTAMPNS");
        // The kernel turns stamping on in a deferred work item.
        std::thread::sleep(Duration::from_millis(50));
        let sent = Instant::now();
        tx.write_all(b"hello").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let (n, stamp) = recv(rx.as_fd(), &mut buf).expect("recv");
        let read = Instant::now();
        assert_eq!(&buf[..n], b"hello");
        let stamp = stamp.expect("a stamp");
        // It arrived at once, 50 ms before it was read.
        assert!(
            stamp >= sent - Duration::from_millis(5),
            "stamp {:?} before the send",
            sent.saturating_duration_since(stamp)
        );
        assert!(
            read.duration_since(stamp) >= Duration::from_millis(45),
            "stamp only {:?} before the read",
            read.duration_since(stamp)
        );
    }

    #[test]
    fn without_stamping_a_read_has_no_stamp_and_eof_is_zero() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut tx = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut rx, _) = l.accept().expect("accept");
        tx.write_all(b"xy").expect("write");
        drop(tx);
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 16];
        let plain = read(&mut rx, &mut buf[..1], false).expect("read");
        assert_eq!((plain, buf[0]), ((1, None), b'x'));
        assert_eq!(recv(rx.as_fd(), &mut buf).expect("recv"), (1, None));
        assert_eq!(recv(rx.as_fd(), &mut buf).expect("eof").0, 0);
        let e = recv(rx.as_fd(), &mut buf);
        assert!(matches!(e, Ok((0, None))), "{e:?}");
    }
}
