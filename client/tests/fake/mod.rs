//! A fake director and a fake context server for the client's tests.
//!
//! Real TCP on 127.0.0.1:0 and threads; `elko-protocol` for the bytes; each
//! test scripts the server side with a closure run once per accepted
//! connection. What the fake servers see is reported as short lines
//! (`"c0 Enter room/1 alice tok-1"`: connection 0, then what arrived) that
//! the test waits for. Everything is bounded: every read has a timeout,
//! every wait a deadline, and [`within`] bounds a whole test.

#![allow(dead_code)]

use bytes::BytesMut;
use elko_protocol::{
    Enter, ErrorCode, ErrorFrame, FrameDecoder, HistoryEntry, Limits, Message, Pong, Redirect,
    Said, Snapshot, Welcome, MAGIC, PROTOCOL_VERSION,
};
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bound on each wait of a fake server and each expectation of a test.
pub const STEP: Duration = Duration::from_secs(5);

/// Run `test` on its own thread and fail if it takes longer than `limit`.
pub fn within(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        test();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test thread"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The test panicked: re-raise its panic here.
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test did not finish within {limit:?}"),
    }
}

/// Limits a fake server announces.
pub fn limits(heartbeat_ms: u32, idle_timeout_ms: u32) -> Limits {
    Limits {
        max_frame: 65536,
        max_id_len: 255,
        max_text_len: 16384,
        heartbeat_ms,
        idle_timeout_ms,
    }
}

/// Limits with heartbeats far beyond any test.
pub fn quiet_limits() -> Limits {
    limits(60_000, 120_000)
}

/// A snapshot of `context` with `members` and `(from, text)` history.
pub fn snapshot(context: &str, members: &[&str], history: &[(&str, &str)]) -> Snapshot {
    Snapshot {
        context: context.into(),
        app: "chat".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        history: history
            .iter()
            .zip(1u64..)
            .map(|((from, text), seq)| HistoryEntry {
                context_seq: seq,
                from: from.to_string(),
                text: text.to_string(),
                at_ms: 1_732_000_000_000 + seq,
            })
            .collect(),
        state: Vec::new(),
    }
}

/// A fake server: a listener thread, one thread per connection.
pub struct Fake {
    pub addr: SocketAddr,
    seen: Receiver<String>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Fake {
    /// Listen on 127.0.0.1:0 and run `handler` for each accepted connection.
    pub fn start(handler: impl Fn(&mut Peer) + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, seen) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let accept = thread::spawn({
            let stop = stop.clone();
            move || {
                for (index, stream) in listener.incoming().enumerate() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let handler = handler.clone();
                    let tx = tx.clone();
                    thread::spawn(move || {
                        let mut peer = Peer::new(index, stream, tx);
                        handler(&mut peer);
                    });
                }
            }
        });
        Fake {
            addr,
            seen,
            stop,
            accept: Some(accept),
        }
    }

    /// Wait for the report `want`, skipping others; panic after [`STEP`].
    pub fn expect(&self, want: &str) {
        let end = Instant::now() + STEP;
        let mut skipped = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(line) => skipped.push(line),
                Err(_) => panic!("fake server never saw {want:?}; it saw {skipped:?}"),
            }
        }
    }

    /// Every report so far, waiting `settle` for late ones.
    pub fn seen(&self, settle: Duration) -> Vec<String> {
        thread::sleep(settle);
        self.seen.try_iter().collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The server side of one accepted connection.
pub struct Peer {
    pub index: usize,
    stream: TcpStream,
    dec: FrameDecoder,
    seen: Sender<String>,
}

impl Peer {
    fn new(index: usize, stream: TcpStream, seen: Sender<String>) -> Peer {
        Peer {
            index,
            stream,
            dec: FrameDecoder::new(elko_protocol::MAX_FRAME_CEILING),
            seen,
        }
    }

    /// Report `what`, prefixed with this connection's index.
    pub fn note(&self, what: impl fmt::Display) {
        let _ = self.seen.send(format!("c{} {what}", self.index));
    }

    /// Send one message; false if the client is gone.
    pub fn send(&mut self, m: impl Into<Message>) -> bool {
        let mut buf = BytesMut::new();
        m.into()
            .encode(&mut buf)
            .expect("fake server message encodes");
        self.stream.write_all(&buf).is_ok()
    }

    pub fn error(&mut self, code: ErrorCode, message: &str) -> bool {
        self.send(ErrorFrame {
            code,
            message: message.into(),
        })
    }

    /// The next message, or `None` on close, garbage or after `limit`.
    pub fn recv_within(&mut self, limit: Duration) -> Option<Message> {
        let end = Instant::now() + limit;
        loop {
            match self.dec.next_frame() {
                Ok(Some(frame)) => return frame.decode().ok(),
                Ok(None) => {}
                Err(_) => return None,
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.extend(&buf[..n]),
            }
        }
    }

    pub fn recv(&mut self) -> Option<Message> {
        self.recv_within(STEP)
    }

    /// Read the client's Hello and answer with a Welcome announcing `limits`.
    pub fn handshake(&mut self, limits: Limits) -> bool {
        match self.recv() {
            Some(Message::Hello(h)) if h.magic == MAGIC && h.max_version >= PROTOCOL_VERSION => {
                self.send(Welcome {
                    version: PROTOCOL_VERSION,
                    server_id: "fake".into(),
                    limits,
                    challenge: [7; 16],
                })
            }
            other => {
                self.note(format!("bad hello {other:?}"));
                false
            }
        }
    }

    /// Handshake, then read the client's Enter and report it.
    pub fn accept_enter(&mut self, limits: Limits) -> Option<Enter> {
        if !self.handshake(limits) {
            return None;
        }
        match self.recv() {
            Some(Message::Enter(e)) => {
                self.note(format!(
                    "Enter {} {} {}",
                    e.context,
                    e.user,
                    String::from_utf8_lossy(&e.token)
                ));
                Some(e)
            }
            other => {
                self.note(format!("expected Enter, got {other:?}"));
                None
            }
        }
    }

    /// Play an entered context for `user` until Exit or close: echo Say as
    /// Said and AppMessage as AppMessage, answer Pings, report Pongs, Pings
    /// and Exit.
    pub fn serve(&mut self, user: &str) {
        let mut context_seq = 0;
        loop {
            match self.recv() {
                Some(Message::Say(s)) => {
                    context_seq += 1;
                    self.note(format!("Say {} {}", s.client_seq, s.text));
                    self.send(Said {
                        context_seq,
                        from: user.into(),
                        client_seq: s.client_seq,
                        sent_at_us: s.sent_at_us,
                        text: s.text,
                    });
                }
                Some(Message::AppMessage(a)) => {
                    self.note(format!("App {}", a.op));
                    self.send(a);
                }
                Some(Message::Ping(p)) => {
                    self.note("Ping");
                    self.send(Pong { nonce: p.nonce });
                }
                Some(Message::Pong(p)) => self.note(format!("Pong {}", p.nonce)),
                Some(Message::Exit(_)) => {
                    self.note("Exit");
                    return;
                }
                Some(other) => {
                    self.note(format!("unexpected {:?}", other.message_type()));
                    return;
                }
                None => {
                    self.note("closed");
                    return;
                }
            }
        }
    }
}

/// What a fake director answers to the `n`th enter request (1, 2, ...
/// across all its connections); `None` closes the connection instead.
pub type Route = dyn Fn(u32, &Message) -> Option<Message> + Send + Sync;

/// A fake director: handshakes, reports each request as
/// `"EnterContext ID USER CONTEXT"` / `"EnterWhereUser ID USER TARGET"` and
/// answers it with `route`.
pub fn director(route: impl Fn(u32, &Message) -> Option<Message> + Send + Sync + 'static) -> Fake {
    let count = Arc::new(AtomicU32::new(0));
    Fake::start(move |p| {
        if !p.handshake(quiet_limits()) {
            return;
        }
        loop {
            let msg = match p.recv_within(Duration::from_secs(30)) {
                Some(Message::Ping(ping)) => {
                    p.send(Pong { nonce: ping.nonce });
                    continue;
                }
                Some(Message::Pong(_)) => continue,
                Some(m @ (Message::EnterContext(_) | Message::EnterWhereUser(_))) => m,
                Some(other) => {
                    p.note(format!("unexpected {:?}", other.message_type()));
                    return;
                }
                None => return,
            };
            match &msg {
                Message::EnterContext(r) => p.note(format!(
                    "EnterContext {} {} {}",
                    r.request_id, r.user, r.context
                )),
                Message::EnterWhereUser(r) => p.note(format!(
                    "EnterWhereUser {} {} {}",
                    r.request_id, r.user, r.target_user
                )),
                _ => {}
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            match route(n, &msg) {
                Some(answer) => {
                    if !p.send(answer) {
                        return;
                    }
                }
                None => return,
            }
        }
    })
}

/// The request id of an enter request.
pub fn request_id(req: &Message) -> u32 {
    match req {
        Message::EnterContext(r) => r.request_id,
        Message::EnterWhereUser(r) => r.request_id,
        other => panic!("not an enter request: {other:?}"),
    }
}

/// Redirect request `n` to `contextd` with token `tok-N`. The context is
/// the one asked for, or `home/TARGET` for an enter-where-user.
pub fn redirect(n: u32, req: &Message, contextd: SocketAddr) -> Message {
    let context = match req {
        Message::EnterContext(r) => r.context.clone(),
        Message::EnterWhereUser(r) => format!("home/{}", r.target_user),
        other => panic!("not an enter request: {other:?}"),
    };
    Message::Redirect(Redirect {
        request_id: request_id(req),
        context,
        contextd_addr: contextd.to_string(),
        token: format!("tok-{n}").into_bytes(),
        expires_in_ms: 30_000,
    })
}
