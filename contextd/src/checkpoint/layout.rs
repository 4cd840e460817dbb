//! Where a context's checkpoints live: directory and file names, and reading a directory back.
//!
//! Names are derived so that any id is safe on any filesystem: the directory is a hash of the id
//! (the id itself is inside each file), generation files are fixed-width decimal so they also
//! sort by name, and temp files start with `.tmp-` so nothing mistakes them for a generation.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const GENERATION_DIGITS: usize = 20;
const GENERATION_SUFFIX: &str = ".ckpt";
const TEMP_PREFIX: &str = ".tmp-";
/// Hex characters of the id hash used as the directory name (128 bits).
const DIR_NAME_HEX: usize = 32;

/// The directory name for a context: the first 32 hex chars of SHA-256 of the id bytes.
pub(crate) fn context_dir_name(context_id: &str) -> String {
    let digest = Sha256::digest(context_id.as_bytes());
    let mut name = String::with_capacity(DIR_NAME_HEX);
    for byte in digest.iter().take(DIR_NAME_HEX / 2) {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// `00000000000000000042.ckpt` for generation 42.
pub(crate) fn generation_file_name(generation: u64) -> String {
    format!(
        "{generation:0width$}{GENERATION_SUFFIX}",
        width = GENERATION_DIGITS
    )
}

/// The generation a file name stands for, or `None` for anything that is not exactly
/// `<20 digits>.ckpt`.
pub(crate) fn parse_generation_file_name(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_suffix(GENERATION_SUFFIX)?;
    if digits.len() != GENERATION_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A fresh temp file name: `.tmp-<pid>-<16 random hex>`.
pub(crate) fn temp_file_name() -> String {
    format!(
        "{TEMP_PREFIX}{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

pub(crate) fn is_temp_file_name(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX))
}

/// What a context directory holds.
#[derive(Debug, Default)]
pub(crate) struct DirScan {
    /// Published generation numbers, newest first.
    pub generations: Vec<u64>,
    /// Leftover or in-progress temp files.
    pub temps: Vec<PathBuf>,
}

impl DirScan {
    pub fn newest(&self) -> Option<u64> {
        self.generations.first().copied()
    }
}

/// Lists `dir`. A directory that does not exist is empty; other names are ignored.
pub(crate) fn scan(dir: &Path) -> io::Result<DirScan> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DirScan::default()),
        Err(e) => return Err(e),
    };
    let mut scan = DirScan::default();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(generation) = parse_generation_file_name(&name) {
            scan.generations.push(generation);
        } else if is_temp_file_name(&name) {
            scan.temps.push(entry.path());
        }
    }
    scan.generations.sort_unstable_by(|a, b| b.cmp(a));
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_round_trip_and_sort() {
        for generation in [0, 1, 42, 10_000_000_000, u64::MAX] {
            let name = generation_file_name(generation);
            assert_eq!(name.len(), GENERATION_DIGITS + GENERATION_SUFFIX.len());
            assert_eq!(
                parse_generation_file_name(OsStr::new(&name)),
                Some(generation)
            );
        }
        assert!(generation_file_name(9) < generation_file_name(10));
    }

    #[test]
    fn other_names_are_not_generations() {
        for name in [
            "42.ckpt",
            "0000000000000000004x.ckpt",
            "00000000000000000042.ckpt.tmp",
            "99999999999999999999.ckpt", // > u64::MAX
            "+0000000000000000042.ckpt",
            ".tmp-1-00000000000000000042.ckpt",
        ] {
            assert_eq!(parse_generation_file_name(OsStr::new(name)), None, "{name}");
        }
    }

    #[test]
    fn dir_names_are_fixed_width_hex_and_distinct() {
        let a = context_dir_name("room/42");
        let b = context_dir_name("room/43");
        let long = context_dir_name(&"\u{1F600}".repeat(63));
        for name in [&a, &b, &long] {
            assert_eq!(name.len(), DIR_NAME_HEX);
            assert!(name
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_ne!(a, b);
        // SHA-256("abc") starts with ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(context_dir_name("abc"), "ba7816bf8f01cfea414140de5dae2223");
    }

    #[test]
    fn temp_names_are_recognised_and_unique() {
        let a = temp_file_name();
        let b = temp_file_name();
        assert_ne!(a, b);
        assert!(is_temp_file_name(OsStr::new(&a)));
        assert!(!is_temp_file_name(OsStr::new(&generation_file_name(1))));
    }
}
