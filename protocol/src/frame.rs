//! Frames: a resumable decoder that splits a byte stream into frames.
//!
//! The decoder accepts bytes in chunks of any size (one byte at a time works)
//! and yields each complete frame once. It reads the 4-byte length first and
//! refuses a frame longer than the limit in force *before* buffering or
//! allocating for it, so a peer cannot make us hold more than one maximum
//! frame. The limit can change at runtime: it starts at the pre-handshake limit
//! and is raised once the handshake completes.

use crate::codec::{decode_body, decode_body_borrowed, DecodeError};
use crate::message::{Message, MessageType};
use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

/// Bytes before the type byte: the `u32` little-endian length.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why the byte stream could not be split into frames. Each is fatal for the
/// connection: after it, frame boundaries are lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("frame length 0: every frame carries at least a type byte")]
    Empty,
}

/// One complete frame: its type byte and its body. The body is a shared slice
/// of the read buffer (no copy); with [`FrameDecoder::extend_shared`] that
/// buffer is a block many frames share, so a body kept long keeps the whole
/// block: copy what you keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The raw type byte (it may not name a known [`MessageType`]).
    pub ty: u8,
    /// The body bytes, `length - 1` of them.
    pub body: Bytes,
}

impl Frame {
    /// The message type, or [`DecodeError::UnknownType`].
    pub fn message_type(&self) -> Result<MessageType, DecodeError> {
        MessageType::from_u8(self.ty).ok_or(DecodeError::UnknownType(self.ty))
    }

    /// Decode into the owned [`Message`] enum.
    pub fn decode(&self) -> Result<Message, DecodeError> {
        Message::decode(self.ty, &self.body)
    }

    /// Decode the body as `T`, which must be the struct (or borrowed view) of
    /// this frame's type `expected`.
    pub fn decode_as<'a, T: Deserialize<'a>>(
        &'a self,
        expected: MessageType,
    ) -> Result<T, DecodeError> {
        let found = self.message_type()?;
        if found != expected {
            return Err(DecodeError::WrongType { expected, found });
        }
        decode_body_borrowed(found, &self.body)
    }

    /// Decode the body as an owned `T` of type `expected`.
    pub fn decode_owned<T: for<'de> Deserialize<'de>>(
        &self,
        expected: MessageType,
    ) -> Result<T, DecodeError> {
        let found = self.message_type()?;
        if found != expected {
            return Err(DecodeError::WrongType { expected, found });
        }
        decode_body(found, &self.body)
    }

    /// Length of the whole frame on the wire, header included.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_LEN + 1 + self.body.len()
    }
}

/// Splits a byte stream into [`Frame`]s.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: u32,
    /// `buf` is a view into a block shared with other decoders
    /// ([`FrameDecoder::extend_shared`]).
    shared: bool,
}

impl FrameDecoder {
    /// A decoder refusing frames whose length (type byte + body) exceeds `max_frame`.
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame,
            shared: false,
        }
    }

    /// The limit in force.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Change the limit (for example when the handshake completes). Applies to
    /// the next frame header read, including one already buffered.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// Append received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.unshare();
        self.buf.extend_from_slice(data);
    }

    /// Append received bytes, taking the memory from `block` (one buffer
    /// shared by the decoders of an event loop) when nothing is buffered —
    /// the common case of a read holding whole frames. The frames then share
    /// the block, where [`extend`](Self::extend) would allocate a buffer per
    /// read and its shared header at the first frame: no allocation per read
    /// while the block's earlier frames have all been dropped (`reserve`
    /// reuses it in place). A partial frame left at the end is copied into a
    /// buffer of its own (see [`next_frame`](Self::next_frame)), so an idle
    /// connection never holds on to the block.
    pub fn extend_shared(&mut self, data: &[u8], block: &mut BytesMut) {
        if !self.buf.is_empty() {
            return self.extend(data);
        }
        block.extend_from_slice(data); // reserves, reusing the block in place when unique
        self.buf = block.split();
        self.shared = true;
    }

    /// Give up a view into a shared block: keep what is buffered in memory
    /// of this decoder's own.
    fn unshare(&mut self) {
        if self.shared {
            self.shared = false;
            self.buf = if self.buf.is_empty() {
                BytesMut::new()
            } else {
                BytesMut::from(&self.buf[..])
            };
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take the buffered, not yet decoded bytes (to move a connection to
    /// another decoder without losing a byte).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.unshare();
        std::mem::take(&mut self.buf)
    }

    /// Release buffer memory when nothing is buffered (idle connections should
    /// cost almost nothing).
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
            self.shared = false;
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// error that makes the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            self.unshare();
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < total {
            // Reserve once for the rest of this frame (bounded by max_frame).
            self.unshare();
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let ty = self.buf.get_u8();
        let body = self.buf.split_to(len as usize - 1).freeze();
        Ok(Some(Frame { ty, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversize_before_buffering_body() {
        let mut d = FrameDecoder::new(16);
        d.extend(&17u32.to_le_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        // Nothing was reserved for the 17-byte frame.
        assert!(d.buf.capacity() < 64);
    }

    #[test]
    fn rejects_empty_frame() {
        let mut d = FrameDecoder::new(16);
        d.extend(&0u32.to_le_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut d = FrameDecoder::new(16);
        let wire = [3, 0, 0, 0, 0x04, 7, 9, 2, 0, 0, 0, 0x26, 0];
        let mut frames = vec![];
        for b in wire {
            d.extend(&[b]);
            while let Some(f) = d.next_frame().expect("valid stream") {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].ty, 0x04);
        assert_eq!(&frames[0].body[..], &[7, 9]);
        assert_eq!(frames[1].ty, 0x26);
        assert_eq!(&frames[1].body[..], &[0]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn limit_can_be_raised_mid_stream() {
        let mut d = FrameDecoder::new(4);
        d.extend(&[6, 0, 0, 0, 0x04, 1, 2, 3, 4, 5]);
        assert!(d.next_frame().is_err());
        d.set_max_frame(8);
        assert!(d.next_frame().expect("now allowed").is_some());
    }

    #[test]
    fn shared_block_frames_need_no_allocation_and_partials_are_copied_out() {
        let mut block = BytesMut::with_capacity(1024);
        let base = block.as_ptr();
        let mut a = FrameDecoder::new(2048);
        let mut b = FrameDecoder::new(64);
        // a: two whole frames; b: one whole frame and the start of another.
        a.extend_shared(&[2, 0, 0, 0, 0x04, 1, 2, 0, 0, 0, 0x04, 2], &mut block);
        b.extend_shared(&[2, 0, 0, 0, 0x04, 3, 5, 0, 0], &mut block);
        let f1 = a.next_frame().expect("valid").expect("whole");
        let f2 = a.next_frame().expect("valid").expect("whole");
        let f3 = b.next_frame().expect("valid").expect("whole");
        assert_eq!([&f1.body[..], &f2.body[..], &f3.body[..]], [[1], [2], [3]]);
        // The bodies are views into the block itself.
        let in_block = |p: *const u8| p >= base && p < base.wrapping_add(1024);
        assert!(in_block(f1.body.as_ptr()) && in_block(f3.body.as_ptr()));
        assert_eq!(a.next_frame(), Ok(None));
        assert_eq!(b.next_frame(), Ok(None));
        // b's partial header now lives in memory of its own.
        assert!(!b.shared && !in_block(b.buf.as_ptr()));
        b.extend_shared(&[0, 0x04, 9, 9, 9, 9], &mut block);
        assert_eq!(
            &b.next_frame().expect("valid").expect("whole").body[..],
            &[9, 9, 9, 9]
        );
        // Once every frame is dropped, a read larger than the block's unused
        // tail reuses the block from its start instead of allocating.
        drop((f1, f2, f3));
        let mut big = vec![0u8; 1010];
        big[..4].copy_from_slice(&1006u32.to_le_bytes());
        big[4] = 0x26;
        a.extend_shared(&big, &mut block);
        let f4 = a.next_frame().expect("valid").expect("whole");
        assert_eq!((f4.ty, f4.body.len()), (0x26, 1005));
        assert_eq!(
            f4.body.as_ptr(),
            base.wrapping_add(5),
            "the block's space came back"
        );
        drop(f4);
        // A frame split over two reads, arriving into a shared view, decodes.
        let mut c = FrameDecoder::new(64);
        c.extend_shared(&[3, 0, 0, 0, 0x04, 7], &mut block);
        assert_eq!(c.next_frame(), Ok(None));
        c.extend_shared(&[8], &mut block);
        assert_eq!(
            &c.next_frame().expect("valid").expect("whole").body[..],
            &[7, 8]
        );
        assert_eq!(c.take_buffered().len(), 0);
    }
}
