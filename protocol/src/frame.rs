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
/// of the read buffer (no copy).
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
}

impl FrameDecoder {
    /// A decoder refusing frames whose length (type byte + body) exceeds `max_frame`.
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame,
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
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take the buffered, not yet decoded bytes (to move a connection to
    /// another decoder without losing a byte).
    pub fn take_buffered(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Release buffer memory when nothing is buffered (idle connections should
    /// cost almost nothing).
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// error that makes the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
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
}
