//! A minimal fanout server: the least a chat server can do over TCP, to see
//! what this machine's kernel costs any server per delivery.
//!
//! One thread, one `mio::Poll`, no framing beyond what the load generator's
//! Redis driver speaks (a subset of RESP3: `HELLO`, `SUBSCRIBE`, `PUBLISH`),
//! no allocation per message, no timers, no heartbeats, no directory, no
//! checkpoints. A `PUBLISH` appends the message push to every
//! subscriber's output buffer, and at the end of each pass every connection
//! with output gets one `write`: one TCP segment per member per pass, which
//! is what Elko and Redis also send. What a real server costs above this,
//! it spends in its own work. (Not a strict lower bound: on loopback some
//! of the clients' kernel work is charged to whichever process runs when it
//! happens, and the load generator drives this server with its Redis
//! driver, not Elko's.)
//!
//! `elko-loadgen chat --target minimal` (or `--compare minimal,redis,nats`)
//! starts it on a free loopback port and drives it with the Redis driver;
//! by hand:
//!
//! ```text
//! target/release/elko-minimal-fanout 127.0.0.1:7399 &
//! target/release/elko-loadgen chat --target minimal --target-addr 127.0.0.1:7399 --server-pid $!
//! ```
//!
//! It is a measuring instrument, not a server: no authentication, no
//! limits but two (a command longer than 1 MiB, output past 8 MiB for one
//! client); anything it cannot parse closes that one connection with the
//! reason on stderr.

use elko_loadgen::peer::wire::bulk;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};

const LISTENER: Token = Token(usize::MAX);
/// Output a connection may hold before it is dropped as a slow consumer.
const OUT_LIMIT: usize = 8 << 20;
/// Input a connection may hold without a complete command.
const IN_LIMIT: usize = 1 << 20;

#[derive(Default)]
struct Conn {
    stream: Option<TcpStream>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    dirty: bool,
}

/// One parsed command: its name and arguments, as ranges into the input.
fn parse(buf: &[u8], args: &mut Vec<(usize, usize)>) -> Result<Option<usize>, String> {
    fn line(buf: &[u8], from: usize) -> Option<usize> {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
    }
    fn num(s: &[u8]) -> Result<usize, String> {
        std::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(s)))
    }
    args.clear();
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return Err(format!("expected an array, got byte {:#04x}", buf[0]));
    }
    let Some(end) = line(buf, 1) else {
        return Ok(None);
    };
    let n = num(&buf[1..end])?;
    let mut pos = end + 2;
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err("expected a bulk string".into());
        }
        let Some(end) = line(buf, pos + 1) else {
            return Ok(None);
        };
        let len = num(&buf[pos + 1..end])?;
        if len > IN_LIMIT {
            return Err(format!("a {len}-byte argument (limit {IN_LIMIT})"));
        }
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        args.push((start, start + len));
        pos = start + len + 2;
    }
    Ok(Some(pos))
}

struct Server {
    conns: slab::Slab<Conn>,
    channels: HashMap<Vec<u8>, Vec<usize>>,
    subscribed: HashMap<usize, Vec<u8>>,
    dirty: Vec<usize>,
    /// One message push, built once per PUBLISH.
    msg: Vec<u8>,
    args: Vec<(usize, usize)>,
}

/// Note that `slot` has output to write at the end of the pass.
fn mark(conns: &mut slab::Slab<Conn>, dirty: &mut Vec<usize>, slot: usize) {
    let c = &mut conns[slot];
    if !c.dirty {
        c.dirty = true;
        dirty.push(slot);
    }
}

/// Why `read` ends a connection without anything to report.
const CLOSED_BY_PEER: &str = "closed by peer";

impl Server {
    fn mark(&mut self, slot: usize) {
        mark(&mut self.conns, &mut self.dirty, slot);
    }

    /// Run every complete command in `slot`'s input. Err closes it.
    fn commands(&mut self, slot: usize) -> Result<(), String> {
        let mut input = std::mem::take(&mut self.conns[slot].inbuf);
        let mut args = std::mem::take(&mut self.args);
        let mut at = 0;
        let res = loop {
            match parse(&input[at..], &mut args) {
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
                Ok(Some(used)) => {
                    let base = at;
                    let arg = |i: usize| &input[base + args[i].0..base + args[i].1];
                    if args.is_empty() {
                        break Err("empty command".into());
                    }
                    let name = arg(0);
                    let is =
                        |cmd: &[u8], n: usize| name.eq_ignore_ascii_case(cmd) && args.len() == n;
                    if name.eq_ignore_ascii_case(b"HELLO") {
                        self.conns[slot].out.extend_from_slice(b"%0\r\n");
                        self.mark(slot);
                    } else if is(b"SUBSCRIBE", 2) {
                        let ch = arg(1).to_vec();
                        let out = &mut self.conns[slot].out;
                        out.extend_from_slice(b">3\r\n$9\r\nsubscribe\r\n");
                        bulk(out, &ch);
                        out.extend_from_slice(b":1\r\n");
                        if let Some(old) = self.subscribed.insert(slot, ch.clone()) {
                            self.unsubscribe(slot, &old);
                        }
                        self.channels.entry(ch).or_default().push(slot);
                        self.mark(slot);
                    } else if is(b"PUBLISH", 3) {
                        self.msg.clear();
                        self.msg.extend_from_slice(b">3\r\n$7\r\nmessage\r\n");
                        bulk(&mut self.msg, arg(1));
                        bulk(&mut self.msg, arg(2));
                        let members = self.channels.get(arg(1)).map_or(&[][..], |v| v);
                        let mut gone = Vec::new();
                        for &m in members {
                            let c = &mut self.conns[m];
                            if c.out.len() - c.sent + self.msg.len() > OUT_LIMIT {
                                gone.push(m);
                                continue;
                            }
                            c.out.extend_from_slice(&self.msg);
                            mark(&mut self.conns, &mut self.dirty, m);
                        }
                        let n = members.len() - gone.len();
                        let _ = write!(self.conns[slot].out, ":{n}\r\n");
                        self.mark(slot);
                        for m in gone {
                            eprintln!("elko-minimal-fanout: connection {m} too slow, dropped");
                            if m != slot {
                                self.close(m);
                            }
                        }
                    } else {
                        break Err(format!(
                            "unsupported command {:?} with {} arguments",
                            String::from_utf8_lossy(name),
                            args.len() - 1
                        ));
                    }
                    at += used;
                }
            }
        };
        input.drain(..at);
        self.args = args;
        let res = match res {
            Ok(()) if input.len() > IN_LIMIT => Err(format!(
                "{} bytes without a complete command (limit {IN_LIMIT})",
                input.len()
            )),
            r => r,
        };
        if let Some(c) = self.conns.get_mut(slot) {
            c.inbuf = input;
        }
        res
    }

    fn read(&mut self, slot: usize) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let c = &mut self.conns[slot];
            let Some(stream) = c.stream.as_mut() else {
                return Ok(());
            };
            match stream.read(&mut chunk) {
                Ok(0) => return Err(CLOSED_BY_PEER.into()),
                Ok(n) => {
                    c.inbuf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        return self.commands(slot);
                    }
                    if c.inbuf.len() > IN_LIMIT {
                        // A client that keeps sending: run what is complete
                        // before reading on, so the input stays bounded.
                        self.commands(slot)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.commands(slot),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn flush(&mut self, slot: usize) -> Result<(), String> {
        let c = &mut self.conns[slot];
        let Some(stream) = c.stream.as_mut() else {
            return Ok(());
        };
        while c.sent < c.out.len() {
            match stream.write(&c.out[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        c.out.clear();
        c.sent = 0;
        Ok(())
    }

    fn unsubscribe(&mut self, slot: usize, channel: &[u8]) {
        if let Some(v) = self.channels.get_mut(channel) {
            v.retain(|&m| m != slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(ch) = self.subscribed.remove(&slot) {
            self.unsubscribe(slot, &ch);
        }
        if self.conns.contains(slot) {
            self.conns.remove(slot);
        }
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7399".into());
    if addr == "--help" || addr == "-h" {
        println!("usage: elko-minimal-fanout [ADDR]   (default 127.0.0.1:7399)\nA fanout-only pub/sub server (a RESP3 subset: HELLO, SUBSCRIBE, PUBLISH): what elko-loadgen sets other servers beside (--target minimal).");
        return Ok(());
    }
    let addr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    // One socket per client: take as many descriptors as allowed.
    if let Err(e) = elko_engine::raise_fd_limit(u64::MAX) {
        eprintln!("elko-minimal-fanout: cannot raise RLIMIT_NOFILE: {e}");
    }
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("elko-minimal-fanout: listening on {addr}");
    let mut s = Server {
        conns: slab::Slab::new(),
        channels: HashMap::new(),
        subscribed: HashMap::new(),
        dirty: Vec::new(),
        msg: Vec::new(),
        args: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let slot = s.conns.vacant_key();
                            let setup = stream.set_nodelay(true).and_then(|()| {
                                poll.registry().register(
                                    &mut stream,
                                    Token(slot),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                            });
                            match setup {
                                Ok(()) => {
                                    s.conns.insert(Conn {
                                        stream: Some(stream),
                                        ..Conn::default()
                                    });
                                }
                                Err(e) => eprintln!("elko-minimal-fanout: {peer}: {e}; closed"),
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("elko-minimal-fanout: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let slot = ev.token().0;
            if !s.conns.contains(slot) {
                continue;
            }
            if ev.is_writable() {
                s.mark(slot);
            }
            if ev.is_readable() {
                if let Err(e) = s.read(slot) {
                    if e != CLOSED_BY_PEER {
                        eprintln!("elko-minimal-fanout: connection {slot}: {e}");
                    }
                    s.close(slot);
                }
            }
        }
        for slot in std::mem::take(&mut s.dirty) {
            let Some(c) = s.conns.get_mut(slot) else {
                continue;
            };
            c.dirty = false;
            if let Err(e) = s.flush(slot) {
                eprintln!("elko-minimal-fanout: connection {slot}: {e}");
                s.close(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command's length and arguments.
    type Parsed<'a> = Option<(usize, Vec<&'a [u8]>)>;

    fn parsed(buf: &[u8]) -> Result<Parsed<'_>, String> {
        let mut args = Vec::new();
        Ok(parse(buf, &mut args)?
            .map(|used| (used, args.iter().map(|&(a, b)| &buf[a..b]).collect())))
    }

    #[test]
    fn commands_parse_whole_or_wait_for_more() {
        let cmd = b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nroom:7\r\n$2\r\nhi\r\n";
        let (used, args) = parsed(cmd).expect("valid").expect("complete");
        assert_eq!(used, cmd.len());
        assert_eq!(args, [&b"PUBLISH"[..], b"room:7", b"hi"]);
        for cut in 0..cmd.len() {
            assert_eq!(parsed(&cmd[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_and_oversize_lengths_are_errors() {
        let err = |buf: &[u8]| parsed(buf).expect_err("an error");
        assert!(err(b"PING\r\n").contains("expected an array"));
        assert!(err(b"*1\r\n:5\r\n").contains("bulk string"));
        assert!(err(b"*x\r\n").contains("bad length"));
        let huge = format!("*1\r\n${}\r\n", usize::MAX);
        assert!(err(huge.as_bytes()).contains("limit"));
    }
}
