//! The byte layout of one checkpoint file, and its verification.
//!
//! One file holds one generation of one context and describes itself completely, so a file can be
//! judged without looking at any other. All integers are little-endian.
//!
//! | offset        | size     | field                                                  |
//! |---------------|----------|--------------------------------------------------------|
//! | 0             | 8        | magic `b"ELKOCKP1"`                                    |
//! | 8             | 4        | format version, u32 (= 1)                              |
//! | 12            | 8        | generation, u64 (equals the number in the file name)   |
//! | 20            | 2        | context id length `n`, u16 (1..=255)                   |
//! | 22            | n        | context id, UTF-8                                      |
//! | 22 + n        | 8        | payload length `p`, u64                                |
//! | 30 + n        | p        | payload                                                |
//! | 30 + n + p    | 4        | CRC32C (Castagnoli) of bytes `0 .. 30 + n + p`, u32    |
//!
//! The file is exactly `34 + n + p` bytes. The checksum is a trailer so the writer can stream
//! the payload once; it covers the header too, so a flipped length or generation is caught like a
//! flipped payload byte. Verification checks every length against the real file size *before*
//! slicing, so a header that claims more bytes than the file has is reported as torn rather than
//! read out of bounds.

use thiserror::Error;

use super::CheckpointError;

/// First 8 bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"ELKOCKP1";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest context id, in bytes.
pub const MAX_CONTEXT_ID_LEN: usize = 255;

const VERSION_AT: usize = 8;
const GENERATION_AT: usize = 12;
const ID_LEN_AT: usize = 20;
const ID_AT: usize = 22;
const PAYLOAD_LEN_SIZE: usize = 8;
const CRC_SIZE: usize = 4;
/// Size of a file with an empty id and an empty payload: nothing shorter can be a checkpoint.
pub const MIN_FILE_LEN: usize = ID_AT + PAYLOAD_LEN_SIZE + CRC_SIZE;

/// Why a checkpoint file was refused. The file is skipped and an older generation is tried.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CorruptReason {
    /// The file ends before its header does (a torn write, or not a checkpoint at all).
    #[error("file is {len} bytes, its header alone needs {needed}")]
    TooShort { len: u64, needed: u64 },
    /// The first 8 bytes are not [`MAGIC`].
    #[error("bad magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic { found: [u8; 8] },
    /// Written by a format version this code does not read.
    #[error("unsupported format version {found}, this build reads {FORMAT_VERSION}")]
    UnsupportedVersion { found: u32 },
    /// The header's lengths add up to a different file size (torn, or extra bytes).
    #[error("header claims a {claimed}-byte file, the file is {actual} bytes")]
    LengthMismatch { claimed: u64, actual: u64 },
    /// The CRC32C trailer does not match the contents.
    #[error("checksum mismatch: file says {expected:#010x}, contents hash to {found:#010x}")]
    ChecksumMismatch { expected: u32, found: u32 },
    /// A valid checkpoint of a different context (a hash collision of the directory name, or a
    /// misplaced file).
    #[error("file belongs to context {found:?}")]
    WrongContext { found: String },
    /// A valid checkpoint whose header generation differs from its file name (a misplaced file).
    #[error("header says generation {found}, file name says {expected}")]
    WrongGeneration { found: u64, expected: u64 },
}

/// Checks that `context_id` fits the format and returns its length field.
pub(crate) fn context_id_len(context_id: &str) -> Result<u16, CheckpointError> {
    let len = context_id.len();
    if len == 0 {
        return Err(CheckpointError::EmptyContextId);
    }
    if len > MAX_CONTEXT_ID_LEN {
        return Err(CheckpointError::ContextIdTooLong {
            len,
            max: MAX_CONTEXT_ID_LEN,
        });
    }
    u16::try_from(len).map_err(|_| CheckpointError::ContextIdTooLong {
        len,
        max: MAX_CONTEXT_ID_LEN,
    })
}

/// Everything before the payload: magic, version, generation, id length, id, payload length.
pub(crate) fn encode_header(
    generation: u64,
    context_id: &str,
    payload_len: u64,
) -> Result<Vec<u8>, CheckpointError> {
    let id_len = context_id_len(context_id)?;
    let mut header = Vec::with_capacity(ID_AT + context_id.len() + PAYLOAD_LEN_SIZE);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&generation.to_le_bytes());
    header.extend_from_slice(&id_len.to_le_bytes());
    header.extend_from_slice(context_id.as_bytes());
    header.extend_from_slice(&payload_len.to_le_bytes());
    Ok(header)
}

/// The trailer for `header` followed by `payload`.
pub(crate) fn checksum(header: &[u8], payload: &[u8]) -> [u8; CRC_SIZE] {
    crc32c::crc32c_append(crc32c::crc32c(header), payload).to_le_bytes()
}

/// A whole file in memory: header, payload, trailer. For tests and tools.
pub fn encode(
    generation: u64,
    context_id: &str,
    payload: &[u8],
) -> Result<Vec<u8>, CheckpointError> {
    let mut file = encode_header(generation, context_id, payload.len() as u64)?;
    let trailer = checksum(&file, payload);
    file.extend_from_slice(payload);
    file.extend_from_slice(&trailer);
    Ok(file)
}

/// Verifies a whole checkpoint file and returns its payload.
///
/// `context_id` and `generation` are what the caller expects (from the directory and the file
/// name). The checksum is checked before the id and generation, so a flipped bit in the id is
/// reported as a checksum mismatch, and `WrongContext` means a genuine, intact file of another
/// context.
pub fn verify<'a>(
    file: &'a [u8],
    context_id: &str,
    generation: u64,
) -> Result<&'a [u8], CorruptReason> {
    let actual = file.len() as u64;
    if file.len() < MIN_FILE_LEN {
        return Err(CorruptReason::TooShort {
            len: actual,
            needed: MIN_FILE_LEN as u64,
        });
    }
    let found_magic: [u8; 8] = array_at(file, 0).ok_or(CorruptReason::TooShort {
        len: actual,
        needed: MIN_FILE_LEN as u64,
    })?;
    if found_magic != MAGIC {
        return Err(CorruptReason::BadMagic { found: found_magic });
    }
    let version = u32::from_le_bytes(array_at(file, VERSION_AT).unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(CorruptReason::UnsupportedVersion { found: version });
    }
    let header_generation = u64::from_le_bytes(array_at(file, GENERATION_AT).unwrap_or_default());
    let id_len = usize::from(u16::from_le_bytes(
        array_at(file, ID_LEN_AT).unwrap_or_default(),
    ));

    // The id length decides where the payload length is: check it fits before reading it.
    let payload_len_at = ID_AT + id_len;
    let needed = payload_len_at + PAYLOAD_LEN_SIZE + CRC_SIZE;
    let Some(payload_len_bytes) =
        array_at::<PAYLOAD_LEN_SIZE>(file, payload_len_at).filter(|_| file.len() >= needed)
    else {
        return Err(CorruptReason::TooShort {
            len: actual,
            needed: needed as u64,
        });
    };
    let payload_len = u64::from_le_bytes(payload_len_bytes);
    let claimed = (needed as u64).saturating_add(payload_len);
    if claimed != actual {
        return Err(CorruptReason::LengthMismatch { claimed, actual });
    }

    // From here on `file.len() == needed + payload_len`, so these slices are in bounds; `get`
    // keeps that a checked fact rather than an assumption.
    let payload_at = payload_len_at + PAYLOAD_LEN_SIZE;
    let crc_at = file.len() - CRC_SIZE;
    let (Some(covered), Some(stored), Some(payload), Some(id)) = (
        file.get(..crc_at),
        array_at::<CRC_SIZE>(file, crc_at),
        file.get(payload_at..crc_at),
        file.get(ID_AT..payload_len_at),
    ) else {
        return Err(CorruptReason::LengthMismatch { claimed, actual });
    };
    let expected = u32::from_le_bytes(stored);
    let found = crc32c::crc32c(covered);
    if expected != found {
        return Err(CorruptReason::ChecksumMismatch { expected, found });
    }
    if id != context_id.as_bytes() {
        return Err(CorruptReason::WrongContext {
            found: String::from_utf8_lossy(id).into_owned(),
        });
    }
    if header_generation != generation {
        return Err(CorruptReason::WrongGeneration {
            found: header_generation,
            expected: generation,
        });
    }
    Ok(payload)
}

/// `N` bytes at `at`, or `None` if the file is shorter.
fn array_at<const N: usize>(file: &[u8], at: usize) -> Option<[u8; N]> {
    file.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(7, "room/42", b"hello payload").expect("valid id")
    }

    #[test]
    fn encoded_file_matches_the_documented_layout() {
        let file = sample();
        let n = "room/42".len();
        let p = b"hello payload".len();
        assert_eq!(file.len(), MIN_FILE_LEN + n + p);
        assert_eq!(&file[0..8], b"ELKOCKP1");
        assert_eq!(&file[8..12], &1u32.to_le_bytes());
        assert_eq!(&file[12..20], &7u64.to_le_bytes());
        assert_eq!(&file[20..22], &(n as u16).to_le_bytes());
        assert_eq!(&file[22..22 + n], b"room/42");
        assert_eq!(&file[22 + n..30 + n], &(p as u64).to_le_bytes());
        assert_eq!(&file[30 + n..30 + n + p], b"hello payload");
        let crc = crc32c::crc32c(&file[..30 + n + p]);
        assert_eq!(&file[30 + n + p..], &crc.to_le_bytes());
        assert_eq!(verify(&file, "room/42", 7), Ok(&b"hello payload"[..]));
    }

    /// A fixed vector, so a reader in another language can check its encoder against ours.
    #[test]
    fn hex_test_vector() {
        let file = encode(1, "a", b"xy").expect("valid id");
        let hex: String = file.iter().map(|b| format!("{b:02x}")).collect();
        let crc = crc32c::crc32c(&file[..file.len() - 4]);
        assert_eq!(
            hex,
            format!(
                "454c4b4f434b5031\
                 01000000\
                 0100000000000000\
                 0100\
                 61\
                 0200000000000000\
                 7879\
                 {}",
                crc.to_le_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let file = sample();
        for len in 0..file.len() {
            let reason = verify(&file[..len], "room/42", 7).expect_err("truncated file accepted");
            assert!(
                matches!(
                    reason,
                    CorruptReason::TooShort { .. } | CorruptReason::LengthMismatch { .. }
                ),
                "truncation to {len} bytes gave {reason:?}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let file = sample();
        for at in 0..file.len() {
            for bit in 0..8 {
                let mut flipped = file.clone();
                flipped[at] ^= 1 << bit;
                assert!(
                    verify(&flipped, "room/42", 7).is_err(),
                    "flip of bit {bit} at byte {at} accepted"
                );
            }
        }
    }

    #[test]
    fn reasons_name_the_field_that_is_wrong() {
        let file = sample();
        let mut bad = file.clone();
        bad[0] = b'X';
        assert!(matches!(
            verify(&bad, "room/42", 7),
            Err(CorruptReason::BadMagic { .. })
        ));
        let mut bad = file.clone();
        bad[8] = 9;
        assert_eq!(
            verify(&bad, "room/42", 7),
            Err(CorruptReason::UnsupportedVersion { found: 9 })
        );
        let mut long = file.clone();
        long.push(0);
        assert_eq!(
            verify(&long, "room/42", 7),
            Err(CorruptReason::LengthMismatch {
                claimed: file.len() as u64,
                actual: file.len() as u64 + 1,
            })
        );
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert!(matches!(
            verify(&bad, "room/42", 7),
            Err(CorruptReason::ChecksumMismatch { .. })
        ));
        assert_eq!(
            verify(&file, "room/43", 7),
            Err(CorruptReason::WrongContext {
                found: "room/42".to_owned()
            })
        );
        assert_eq!(
            verify(&file, "room/42", 8),
            Err(CorruptReason::WrongGeneration {
                found: 7,
                expected: 8
            })
        );
    }

    #[test]
    fn huge_claimed_lengths_do_not_overflow() {
        let mut file = sample();
        let n = "room/42".len();
        file[22 + n..30 + n].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            verify(&file, "room/42", 7),
            Err(CorruptReason::LengthMismatch {
                claimed: u64::MAX,
                ..
            })
        ));
        let mut file = sample();
        file[20..22].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            verify(&file, "room/42", 7),
            Err(CorruptReason::TooShort { .. })
        ));
    }

    #[test]
    fn context_ids_are_bounded() {
        assert!(matches!(
            context_id_len(""),
            Err(CheckpointError::EmptyContextId)
        ));
        assert_eq!(context_id_len(&"x".repeat(255)).ok(), Some(255));
        assert!(matches!(
            context_id_len(&"x".repeat(256)),
            Err(CheckpointError::ContextIdTooLong { len: 256, max: 255 })
        ));
    }
}
