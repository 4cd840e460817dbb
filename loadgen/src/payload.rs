//! The utterance text: a fixed ASCII header the receivers parse, then padding.
//!
//! Every target carries the same bytes, so the servers move the same amount
//! of data. The header is what lets a receiver account for a delivery with
//! no shared table and no allocation:
//!
//! | bytes  | field                                                      |
//! |--------|------------------------------------------------------------|
//! | 0..16  | how late the actual send was after the intended time, µs   |
//! | 16..32 | intended send time, µs since the run's epoch               |
//! | 32..40 | the sender's client index                                  |
//! | 40..56 | the sender's utterance number (1, 2, ...)                  |
//! | 56..   | `x` padding up to the message size                         |
//!
//! All fields are lowercase hex, fixed width. Elko also carries the intended
//! time in `Say.sent_at_us`; Redis and NATS carry only these bytes.

/// Length of the header; utterances are at least this long.
pub const HEADER_LEN: usize = 56;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a receiver reads back from an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub late_us: u64,
    pub intended_us: u64,
    pub sender: u32,
    pub seq: u64,
}

/// A reusable utterance buffer: padding is written once, the header per send.
#[derive(Debug, Clone)]
pub struct Utterance {
    buf: Vec<u8>,
}

fn put_hex(out: &mut [u8], v: u64) {
    let n = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        let shift = 4 * (n - 1 - i);
        *b = if shift >= 64 {
            b'0'
        } else {
            HEX[((v >> shift) & 0xf) as usize]
        };
    }
}

fn get_hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

impl Utterance {
    /// A buffer of `size` bytes (at least [`HEADER_LEN`]).
    pub fn new(size: usize) -> Utterance {
        Utterance {
            buf: vec![b'x'; size.max(HEADER_LEN)],
        }
    }

    /// Write the header and return the whole utterance.
    pub fn stamp(&mut self, s: Stamp) -> &[u8] {
        put_hex(&mut self.buf[0..16], s.late_us);
        put_hex(&mut self.buf[16..32], s.intended_us);
        put_hex(&mut self.buf[32..40], u64::from(s.sender));
        put_hex(&mut self.buf[40..56], s.seq);
        &self.buf
    }

    /// The utterance as text (it is ASCII by construction).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf).unwrap_or_default()
    }
}

/// Only the lateness of the actual send (what an Elko receiver needs: the
/// intended time and the order come with the frame). 0 if not one of ours.
#[inline]
pub fn late_us(text: &[u8]) -> u64 {
    text.get(0..16).and_then(get_hex).unwrap_or(0)
}

/// Read the header of a received utterance; `None` if it is not one of ours.
pub fn parse(text: &[u8]) -> Option<Stamp> {
    if text.len() < HEADER_LEN {
        return None;
    }
    Some(Stamp {
        late_us: get_hex(&text[0..16])?,
        intended_us: get_hex(&text[16..32])?,
        sender: u32::try_from(get_hex(&text[32..40])?).ok()?,
        seq: get_hex(&text[40..56])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let mut u = Utterance::new(64);
        let s = Stamp {
            late_us: 17,
            intended_us: 0x0123_4567_89ab_cdef,
            sender: 7999,
            seq: u64::MAX,
        };
        let bytes = u.stamp(s).to_vec();
        assert_eq!(bytes.len(), 64);
        assert_eq!(&bytes[..16], b"0000000000000011");
        assert!(bytes[56..].iter().all(|&b| b == b'x'));
        assert_eq!(parse(&bytes), Some(s));
        assert_eq!(late_us(&bytes), 17);
        assert_eq!(late_us(b"short"), 0);
        assert_eq!(u.as_str().len(), 64);
        assert_eq!(
            Utterance::new(8).stamp(s).len(),
            HEADER_LEN,
            "never shorter than the header"
        );
    }

    #[test]
    fn rejects_foreign_text() {
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(&[b'Z'; 64]), None);
        assert_eq!(parse(&[b'0'; 56]).map(|s| s.seq), Some(0));
    }
}
