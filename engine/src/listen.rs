//! Listening sockets, and keeping a port to one process.
//!
//! With [`AcceptMode::ReusePort`](crate::AcceptMode) every loop listens on
//! its own `SO_REUSEPORT` socket and the kernel spreads connections over
//! them. The kernel lets *any* process of the same user join such a group:
//! a second server started on the same port by mistake would silently take
//! a share of the first one's new connections (clients sent to one context
//! server landing on another). So a group binds first, checks that nobody
//! listens on an overlapping address (the kernel's LISTEN table in
//! `/proc/net/tcp` and `tcp6`), and only then listens: a second server fails
//! to start with `AddrInUse`, as it would on a plain port. Two servers that
//! start at the very same moment can still both pass the check, and a
//! program that sets `SO_REUSEPORT` without it can still join a group later.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const BACKLOG: i32 = 4096;

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

fn local_addr(s: &Socket) -> io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// Create a listening socket. With `reuse_port`, several sockets may bind the
/// same address and the kernel spreads connections over them; nothing checks
/// who else is in the group (see [`bind_group`] for a group that does).
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let s = bind_socket(addr, reuse_port)?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// `n` listening sockets on `addr` as one `SO_REUSEPORT` group (port 0: a
/// free port, the same for all), refused with `AddrInUse` if another socket
/// already listens on an overlapping address and port.
pub(crate) fn bind_group(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = ReservedPort::new(addr)?;
    let mut group = Vec::with_capacity(n.max(1));
    for _ in 1..n.max(1) {
        group.push(bind_socket(first.addr, true)?);
    }
    group.push(first.sock);
    group
        .into_iter()
        .map(|s| s.listen(BACKLOG).map(|()| s.into()))
        .collect()
}

/// A port held, bound but not listening, so that a [`bind_group`] can join it
/// later: learn the port (for port 0) before starting the loops, without
/// receiving a connection. Released on drop.
#[derive(Debug)]
pub struct ReservedPort {
    sock: Socket,
    addr: SocketAddr,
}

impl ReservedPort {
    /// Bind `addr` (port 0: a free port) for an `SO_REUSEPORT` group, refused
    /// with `AddrInUse` if another socket already listens on an overlapping
    /// address and port.
    pub fn new(addr: SocketAddr) -> io::Result<ReservedPort> {
        let sock = bind_socket(addr, true)?;
        let addr = local_addr(&sock)?;
        if let Some(other) = listening_on(addr) {
            return Err(in_use(other));
        }
        Ok(ReservedPort { sock, addr })
    }

    /// The bound address, with the port the kernel chose.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn in_use(other: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("address in use: a socket already listens on {other} (another server?)"),
    )
}

/// A socket in LISTEN state on `addr`'s port whose address overlaps it
/// (equal, or either a wildcard), from the kernel's tables of this network
/// namespace; `None` if there is none, or if the tables cannot be read (no
/// `/proc`, no IPv6: then the kernel alone decides, with a warning if the
/// table exists but is unreadable).
fn listening_on(addr: SocketAddr) -> Option<SocketAddr> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table)
                .inspect_err(|e| {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(%addr, table, error = %e, "cannot check who else listens");
                    }
                })
                .ok()?;
            text.lines()
                .skip(1)
                .filter_map(parse_listener)
                .find(|other| overlaps(*other, addr))
        })
}

/// The local address of one line of `/proc/net/tcp{,6}` if its state is
/// LISTEN (`0A`). Addresses are printed as the 32-bit words of the network
/// order address, each in host order; the port in host order.
fn parse_listener(line: &str) -> Option<SocketAddr> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let word = |i: usize| {
        let w = u32::from_str_radix(ip_hex.get(8 * i..8 * i + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a listener on `a` would take connections meant for `b` or the
/// other way round: the same port, and the same address or a wildcard that
/// covers the other (`[::]` covers IPv4 too, unless the socket is v6-only,
/// which the table does not say: counted as covering).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: IpAddr, x: IpAddr| w.is_unspecified() && (w.is_ipv6() || x.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn ne_hex(octets: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(octets))
    }

    #[test]
    fn parses_listeners_and_skips_other_states() {
        let v4 = format!(
            "   0: {}:1E1E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123 1",
            ne_hex([127, 0, 0, 1])
        );
        assert_eq!(parse_listener(&v4), Some(sa("127.0.0.1:7710")));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_listener(&established), None);
        let any6 = "   1: 00000000000000000000000000000000:1E1E 00000000000000000000000000000000:0000 0A 0 0 0";
        assert_eq!(parse_listener(any6), Some(sa("[::]:7710")));
        let mapped = format!(
            "   2: 0000000000000000{}{}:0050 00000000000000000000000000000000:0000 0A 0",
            ne_hex([0, 0, 0xff, 0xff]),
            ne_hex([10, 1, 2, 3])
        );
        assert_eq!(parse_listener(&mapped), Some(sa("10.1.2.3:80")));
        assert_eq!(parse_listener("  sl  local_address rem_address   st"), None);
    }

    #[test]
    fn overlap_is_same_port_and_covering_address() {
        assert!(overlaps(sa("127.0.0.1:7710"), sa("127.0.0.1:7710")));
        assert!(overlaps(sa("0.0.0.0:7710"), sa("127.0.0.1:7710")));
        assert!(overlaps(sa("127.0.0.1:7710"), sa("0.0.0.0:7710")));
        assert!(overlaps(sa("[::]:7710"), sa("127.0.0.1:7710")));
        assert!(!overlaps(sa("0.0.0.0:7710"), sa("[::1]:7710")));
        assert!(!overlaps(sa("127.0.0.1:7710"), sa("127.0.0.2:7710")));
        assert!(!overlaps(sa("127.0.0.1:7710"), sa("127.0.0.1:7711")));
    }

    #[test]
    fn a_group_is_refused_where_another_reuseport_socket_listens() {
        let other = bind_listener(sa("127.0.0.1:0"), true).expect("bind");
        let addr = other.local_addr().expect("addr");
        let err = bind_group(addr, 2).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        let err = ReservedPort::new(addr).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(other);
        // Free again: a reservation, then a group joining it.
        let held = ReservedPort::new(addr).expect("free again");
        let group = bind_group(held.addr(), 2).expect("joins the reservation");
        assert_eq!(group.len(), 2);
        assert_eq!(group[1].local_addr().expect("addr"), addr);
        let _ = std::net::TcpStream::connect(addr).expect("the group accepts");
    }

    #[test]
    fn a_group_is_refused_where_another_listens_on_ipv6_loopback() {
        // Through the kernel's tcp6 table; a machine without IPv6 has none.
        let Ok(other) = bind_listener(sa("[::1]:0"), true) else {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        };
        let addr = other.local_addr().expect("addr");
        let err = bind_group(addr, 1).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // The same port on IPv4 loopback is another address: not refused.
        let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port());
        // (Unless something on this machine happens to hold it there.)
        match bind_group(v4, 1) {
            Ok(group) => assert_eq!(group[0].local_addr().expect("addr"), v4),
            Err(e) => assert!(!e.to_string().contains(&addr.to_string()), "{e}"),
        }
    }
}
