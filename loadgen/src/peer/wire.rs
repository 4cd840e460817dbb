//! The two peer wire protocols, reduced to what the chat workload needs:
//! open (handshake + subscribe to the room), publish an utterance, answer a
//! ping, and recognise what arrives. Parsers work on a borrowed buffer and
//! return borrowed payloads: nothing is allocated per message.

use std::io::Write as _;

/// Something a peer server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The subscription is in place: the client is in its room.
    Ready,
    /// A message published to the room (the payload only).
    Message(&'a [u8]),
    /// The server asks for a pong.
    Ping,
    /// Anything else that needs no action (replies, info, acks).
    Ignore,
}

/// The server said something the generator cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// A peer protocol.
pub trait Wire: Send + Sync + 'static {
    /// Name used in reports and error kinds.
    const NAME: &'static str;
    /// The room's channel or subject, e.g. `room:7`.
    fn channel(room: usize) -> Vec<u8>;
    /// Bytes sent once connected: handshake and subscription to `channel`.
    fn open(out: &mut Vec<u8>, channel: &[u8]);
    /// Publish `payload` to `channel`.
    fn publish(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]);
    /// Answer a ping.
    fn pong(out: &mut Vec<u8>);
    /// The first complete item of `buf` and its length, `Ok(None)` if more bytes are needed.
    fn parse(buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, WireError>;
}

fn crlf(buf: &[u8], from: usize) -> Option<usize> {
    let i = from + buf.get(from..)?.iter().position(|&b| b == b'\r')?;
    match buf.get(i + 1) {
        Some(b'\n') => Some(i),
        Some(_) => crlf(buf, i + 1),
        None => None,
    }
}

fn int(s: &[u8]) -> Result<i64, WireError> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| WireError(format!("bad length {:?}", String::from_utf8_lossy(s))))
}

/// Redis pub/sub over RESP3 (`HELLO 3`): one connection per client both
/// subscribes and publishes (RESP3 allows commands while subscribed), as an
/// Elko client does on its one connection. Messages arrive as pushes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resp3;

/// One RESP3 value: where it ends, its type byte, and its content range.
#[derive(Debug, Clone, Copy)]
struct Item {
    end: usize,
    kind: u8,
    data: (usize, usize),
}

const MAX_DEPTH: u32 = 16;

fn item(buf: &[u8], pos: usize, depth: u32) -> Result<Option<Item>, WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError("RESP nesting too deep".into()));
    }
    let Some(&t) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(cr) = crlf(buf, pos + 1) else {
        return Ok(None);
    };
    let head = &buf[pos + 1..cr];
    let after = cr + 2;
    let simple = |kind| {
        Ok(Some(Item {
            end: after,
            kind,
            data: (pos + 1, cr),
        }))
    };
    match t {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => simple(t),
        b'$' | b'=' | b'!' => {
            let n = int(head)?;
            if n < 0 {
                return simple(b'_');
            }
            let end = after + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some(Item {
                end: end + 2,
                kind: t,
                data: (after, end),
            }))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int(head)?.max(0) as usize;
            let elems = if matches!(t, b'%' | b'|') { 2 * n } else { n };
            let mut p = after;
            for _ in 0..elems {
                match item(buf, p, depth + 1)? {
                    Some(i) => p = i.end,
                    None => return Ok(None),
                }
            }
            if t == b'|' {
                // An attribute precedes the value it describes.
                return item(buf, p, depth + 1);
            }
            Ok(Some(Item {
                end: p,
                kind: t,
                data: (after, p),
            }))
        }
        _ => Err(WireError(format!("unexpected RESP type byte {t:#04x}"))),
    }
}

/// Append `b` as a RESP bulk string.
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    let _ = write!(out, "${}\r\n", b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

impl Wire for Resp3 {
    const NAME: &'static str = "redis";

    fn channel(room: usize) -> Vec<u8> {
        format!("room:{room}").into_bytes()
    }

    fn open(out: &mut Vec<u8>, channel: &[u8]) {
        out.extend_from_slice(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$9\r\nSUBSCRIBE\r\n");
        bulk(out, channel);
    }

    fn publish(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]) {
        out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
        bulk(out, channel);
        bulk(out, payload);
    }

    fn pong(_out: &mut Vec<u8>) {}

    fn parse(buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, WireError> {
        let Some(top) = item(buf, 0, 0)? else {
            return Ok(None);
        };
        let ev = match top.kind {
            b'>' => {
                // Complete, so its elements parse.
                let first = item(buf, top.data.0, 1)?.filter(|i| i.end <= top.end);
                match first.map(|f| (f, &buf[f.data.0..f.data.1])) {
                    Some((f, b"message")) => {
                        let channel = item(buf, f.end, 1)?;
                        match channel.and_then(|c| item(buf, c.end, 1).ok().flatten()) {
                            Some(p) if p.end <= top.end => Event::Message(&buf[p.data.0..p.data.1]),
                            _ => return Err(WireError("message push without a payload".into())),
                        }
                    }
                    Some((_, b"subscribe")) => Event::Ready,
                    _ => Event::Ignore,
                }
            }
            b'-' | b'!' => {
                return Err(WireError(format!(
                    "redis error: {}",
                    String::from_utf8_lossy(&buf[top.data.0..top.data.1])
                )))
            }
            _ => Event::Ignore,
        };
        Ok(Some((top.end, ev)))
    }
}

/// NATS core over its text protocol: `CONNECT`, `SUB`, `PUB`, `MSG`,
/// `PING`/`PONG`. Echo is on, so a publisher hears itself, as in Elko.
/// The client is ready when the `PONG` to its first `PING` arrives (the
/// server has then processed the `SUB`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nats;

impl Wire for Nats {
    const NAME: &'static str = "nats";

    fn channel(room: usize) -> Vec<u8> {
        format!("room.{room}").into_bytes()
    }

    fn open(out: &mut Vec<u8>, channel: &[u8]) {
        out.extend_from_slice(
            br#"CONNECT {"verbose":false,"pedantic":false,"echo":true,"protocol":1,"name":"elko-loadgen"}"#,
        );
        out.extend_from_slice(b"\r\nSUB ");
        out.extend_from_slice(channel);
        out.extend_from_slice(b" 1\r\nPING\r\n");
    }

    fn publish(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]) {
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(channel);
        let _ = write!(out, " {}\r\n", payload.len());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }

    fn pong(out: &mut Vec<u8>) {
        out.extend_from_slice(b"PONG\r\n");
    }

    fn parse(buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, WireError> {
        let Some(cr) = crlf(buf, 0) else {
            return Ok(None);
        };
        let line = &buf[..cr];
        let after = cr + 2;
        let op_end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let op = &line[..op_end];
        let ev = if op.eq_ignore_ascii_case(b"MSG") {
            let size = line
                .rsplit(|&b| b == b' ')
                .next()
                .ok_or_else(|| WireError("MSG without a size".into()))?;
            let n = int(size)?.max(0) as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            return Ok(Some((
                after + n + 2,
                Event::Message(&buf[after..after + n]),
            )));
        } else if op.eq_ignore_ascii_case(b"PING") {
            Event::Ping
        } else if op.eq_ignore_ascii_case(b"PONG") {
            Event::Ready
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            return Err(WireError(format!(
                "nats error: {}",
                String::from_utf8_lossy(line)
            )));
        } else {
            Event::Ignore // INFO, +OK
        };
        Ok(Some((after, ev)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `stream`, parsed after splitting it at every byte
    /// boundary (what arrives may stop anywhere).
    fn events<W: Wire>(stream: &[u8]) -> Vec<String> {
        let whole = {
            let mut v = Vec::new();
            let mut pos = 0;
            while let Some((n, ev)) = W::parse(&stream[pos..]).expect("parses") {
                v.push(format!("{ev:?}"));
                pos += n;
            }
            assert_eq!(pos, stream.len(), "everything consumed");
            v
        };
        for cut in 0..stream.len() {
            let mut v = Vec::new();
            let mut pos = 0;
            while let Some((n, ev)) = W::parse(&stream[pos..cut]).expect("parses") {
                v.push(format!("{ev:?}"));
                pos += n;
            }
            assert!(whole.starts_with(&v), "cut at {cut}");
        }
        whole
    }

    #[test]
    fn resp3_session() {
        let mut out = Vec::new();
        Resp3::open(&mut out, b"room:7");
        assert_eq!(
            out,
            b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nroom:7\r\n"
        );
        out.clear();
        Resp3::publish(&mut out, b"room:7", b"hi");
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nroom:7\r\n$2\r\nhi\r\n");
        let stream = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n\
>3\r\n$9\r\nsubscribe\r\n$6\r\nroom:7\r\n:1\r\n\
:40\r\n\
|1\r\n+key\r\n+val\r\n:2\r\n\
>3\r\n$7\r\nmessage\r\n$6\r\nroom:7\r\n$4\r\nab\r\n\r\n";
        assert_eq!(
            events::<Resp3>(stream),
            [
                "Ignore",
                "Ready",
                "Ignore",
                "Ignore",
                "Message([97, 98, 13, 10])"
            ]
        );
        assert!(Resp3::parse(b"-ERR unknown command 'HELLO'\r\n").is_err());
        assert!(Resp3::parse(b"?1\r\n").is_err());
    }

    #[test]
    fn nats_session() {
        let mut out = Vec::new();
        Nats::open(&mut out, b"room.7");
        let s = String::from_utf8(out.clone()).expect("ascii");
        assert!(
            s.starts_with("CONNECT {") && s.ends_with("\r\nSUB room.7 1\r\nPING\r\n"),
            "{s}"
        );
        out.clear();
        Nats::publish(&mut out, b"room.7", b"hi");
        assert_eq!(out, b"PUB room.7 2\r\nhi\r\n");
        let stream = b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPONG\r\nMSG room.7 1 4\r\nab\r\n\r\nPING\r\nMSG room.7 1 reply.x 0\r\n\r\n";
        assert_eq!(
            events::<Nats>(stream),
            [
                "Ignore",
                "Ignore",
                "Ready",
                "Message([97, 98, 13, 10])",
                "Ping",
                "Message([])"
            ]
        );
        assert!(Nats::parse(b"-ERR 'Authorization Violation'\r\n").is_err());
        assert!(Nats::parse(b"MSG room.7 1 x\r\n").is_err());
    }
}
