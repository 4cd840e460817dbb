//! Message bodies: serde + bincode 2 under one fixed configuration.
//!
//! The configuration is bincode's `standard()`: little-endian, variable-length
//! integers (see `docs/protocol.md` for the exact byte rules). It is fixed for
//! protocol version 1; changing it is a new protocol version.
//!
//! Decoding allocates in proportion to the frame, never to a length the frame
//! merely claims. bincode allocates a string's claimed length before reading
//! it, so we decode under a byte limit chosen from the body's own size class
//! (4 KiB, 64 KiB, 1 MiB, 16 MiB): a claim beyond the limit fails with
//! [`DecodeError::Truncated`] before anything is allocated for it. bincode's
//! limit counts *in-memory* sizes, not wire bytes (a one-byte varint `u64` or
//! length claims 8), so the limit is [`CLAIM_FACTOR`] times the class: a valid
//! body of `n` bytes never claims more than `8 * n`, and a lying string costs
//! at most 8 times the class (32 KiB for bodies up to 4 KiB). Byte vectors are
//! decoded through `deserialize_bytes` (checked against the bytes actually
//! left, no allocation before that), and other vectors preallocate at most
//! 4 KiB whatever count they claim (`bounded_vec`) instead of serde's 1 MiB.
//! Trailing bytes after the last field are an error too, so a frame has at
//! most one decoding (the decoder accepts non-minimal varints, so a message
//! may have several encodings; encoders write the shortest).

use crate::frame::FRAME_HEADER_LEN;
use crate::message::MessageType;
use crate::MAX_FRAME_CEILING;
use bincode::config::{Configuration, LittleEndian, Varint};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Ratio between what bincode's decode limit counts and wire bytes, at most:
/// bincode claims the in-memory size of each value (8 bytes for a `u64` or a
/// length) while the smallest varint on the wire is 1 byte.
pub const CLAIM_FACTOR: usize = 8;

/// The one bincode configuration of protocol version 1, used for encoding.
pub const CONFIG: Configuration<LittleEndian, Varint> = bincode::config::standard();

/// A message body with a fixed frame type. Implemented by every message struct
/// (and the borrowed `*Ref` views of hot messages), so a hot path can encode a
/// struct without wrapping it in [`crate::Message`].
pub trait Body: Serialize {
    /// The frame type byte of this message.
    const TYPE: MessageType;
}

/// Why a body could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{ty:?} frame would be {len} bytes, above the {MAX_FRAME_CEILING}-byte ceiling")]
    TooLarge { ty: MessageType, len: usize },
    #[error("{ty:?} body did not encode: {detail}")]
    Serialize { ty: MessageType, detail: String },
}

/// Why a frame's body did not decode into its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{ty:?} body is truncated: a field or length runs past the end of the frame")]
    Truncated { ty: MessageType },
    #[error("{ty:?} body has {extra} trailing bytes after the last field")]
    TrailingBytes { ty: MessageType, extra: usize },
    #[error("{ty:?} body has a string that is not valid UTF-8")]
    InvalidUtf8 { ty: MessageType },
    #[error("{ty:?} body has an invalid value: {detail}")]
    Invalid { ty: MessageType, detail: String },
    #[error("{found:?} frame where {expected:?} was expected")]
    WrongType {
        expected: MessageType,
        found: MessageType,
    },
}

impl DecodeError {
    fn from_bincode(ty: MessageType, e: bincode::error::DecodeError) -> Self {
        use bincode::error::DecodeError as B;
        match e {
            B::UnexpectedEnd { .. } | B::LimitExceeded => DecodeError::Truncated { ty },
            B::Utf8 { .. } => DecodeError::InvalidUtf8 { ty },
            other => DecodeError::Invalid {
                ty,
                detail: other.to_string(),
            },
        }
    }
}

/// Encode `body` as one whole frame (header + type + body) appended to `out`.
/// Returns the number of bytes appended.
pub fn encode_frame<B: Body + ?Sized>(body: &B, out: &mut BytesMut) -> Result<usize, EncodeError> {
    let start = out.len();
    out.put_u32_le(0); // length, patched below
    out.put_u8(B::TYPE as u8);
    let mut w = out.writer();
    let res = bincode::serde::encode_into_std_write(body, &mut w, CONFIG);
    let out = w.into_inner();
    if let Err(e) = res {
        out.truncate(start);
        return Err(EncodeError::Serialize {
            ty: B::TYPE,
            detail: e.to_string(),
        });
    }
    let total = out.len() - start;
    let len = total - FRAME_HEADER_LEN;
    if len > MAX_FRAME_CEILING as usize {
        out.truncate(start);
        return Err(EncodeError::TooLarge { ty: B::TYPE, len });
    }
    // `len` fits: checked against the u32 ceiling above.
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(total)
}

/// Encode `body` as one frame in its own buffer: the form to share one
/// encoding among many recipients (each queue holds a clone of the `Bytes`).
pub fn encode_frame_to_bytes<B: Body + ?Sized>(body: &B) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::with_capacity(64);
    encode_frame(body, &mut buf)?;
    Ok(buf.freeze())
}

/// Decode a body into an owned message struct, rejecting trailing bytes.
pub fn decode_body<T>(ty: MessageType, body: &[u8]) -> Result<T, DecodeError>
where
    T: for<'de> Deserialize<'de>,
{
    decode_body_borrowed(ty, body)
}

/// Decode a body into a struct that may borrow from it (the `*Ref` views of
/// hot messages decode with no allocation). Rejects trailing bytes.
pub fn decode_body_borrowed<'a, T: Deserialize<'a>>(
    ty: MessageType,
    body: &'a [u8],
) -> Result<T, DecodeError> {
    macro_rules! with_limit {
        ($n:expr) => {
            bincode::serde::borrow_decode_from_slice::<T, _>(
                body,
                CONFIG.with_limit::<{ $n * CLAIM_FACTOR }>(),
            )
        };
    }
    let res = match body.len() {
        0..=4096 => with_limit!(4096),
        4097..=65536 => with_limit!(65536),
        65537..=1048576 => with_limit!(1048576),
        _ => with_limit!(MAX_FRAME_CEILING as usize),
    };
    let (value, used) = res.map_err(|e| DecodeError::from_bincode(ty, e))?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes {
            ty,
            extra: body.len() - used,
        });
    }
    Ok(value)
}

/// Largest preallocation, in bytes, for a decoded vector, whatever count it
/// claims; longer vectors grow as their elements actually decode.
const MAX_VEC_PREALLOC: usize = 4096;

/// Serde glue for `Vec<u8>` fields. On the wire it is exactly a sequence of
/// `u8` (varint length, then the raw bytes), but it decodes through
/// `deserialize_bytes`, which borrows the bytes from the body after checking
/// the length against what is left: a lying length fails before allocating.
pub(crate) mod byte_vec {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        // Formats that present bytes as a sequence (JSON and the like).
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<u8>, A::Error> {
            super::bounded_vec::collect(seq)
        }
    }
}

/// Serde glue for `Vec<T>` fields (same wire bytes as plain `Vec<T>`) that
/// preallocates at most [`MAX_VEC_PREALLOC`] bytes. serde's own `Vec` visitor
/// trusts the claimed count up to 1 MiB, so a ten-byte body claiming 2^40
/// elements would allocate 1 MiB before failing.
pub(crate) mod bounded_vec {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        d.deserialize_seq(VecVisitor(PhantomData))
    }

    pub(crate) fn collect<'de, A, T>(mut seq: A) -> Result<Vec<T>, A::Error>
    where
        A: SeqAccess<'de>,
        T: Deserialize<'de>,
    {
        let cap = super::MAX_VEC_PREALLOC / std::mem::size_of::<T>().max(1);
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(cap));
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        Ok(v)
    }

    struct VecVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for VecVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            collect(seq)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Joined, Ping, Said, SaidRef};

    #[test]
    fn huge_claimed_string_length_is_truncated_not_allocated() {
        // Joined { user }: varint 253 + u64 length of 2^40 bytes, then nothing.
        let mut body = vec![253];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode_body::<Joined>(MessageType::Joined, &body).expect_err("must fail");
        assert_eq!(
            err,
            DecodeError::Truncated {
                ty: MessageType::Joined
            }
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let err = decode_body::<Ping>(MessageType::Ping, &[7, 0]).expect_err("must fail");
        assert_eq!(
            err,
            DecodeError::TrailingBytes {
                ty: MessageType::Ping,
                extra: 1
            }
        );
    }

    #[test]
    fn borrowed_twin_encodes_identically() {
        let owned = Said {
            context_seq: 300,
            from: "alice".into(),
            client_seq: 7,
            sent_at_us: 1 << 40,
            text: "hello".into(),
        };
        let borrowed = SaidRef {
            context_seq: 300,
            from: "alice",
            client_seq: 7,
            sent_at_us: 1 << 40,
            text: "hello",
        };
        let a = encode_frame_to_bytes(&owned).expect("encodes");
        let b = encode_frame_to_bytes(&borrowed).expect("encodes");
        assert_eq!(a, b);
        let back: SaidRef<'_> = decode_body_borrowed(MessageType::Said, &a[5..]).expect("decodes");
        assert_eq!(back, borrowed);
    }
}
