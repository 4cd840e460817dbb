//! Unit tests of the store: round trips, generations, torn and corrupt files.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "elko-ckpt-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn newest_file(store: &CheckpointStore, ctx: &str) -> PathBuf {
    let g = store.list_generations(ctx).expect("list")[0];
    store.context_dir(ctx).join(format!("{g:020}.ckpt"))
}

fn make_writable(p: &std::path::Path) {
    let mut perm = std::fs::metadata(p).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(p, perm).expect("chmod");
}

#[test]
fn round_trip_and_newest_wins() {
    let d = Dir::new("rt");
    let s = CheckpointStore::open(&d.0).expect("open");
    assert_eq!(s.load("room/1").expect("load"), None);
    assert_eq!(s.save("room/1", b"first").expect("save"), 1);
    assert_eq!(s.save("room/1", b"second").expect("save"), 2);
    let l = s.load("room/1").expect("load").expect("some");
    assert_eq!((l.generation, l.payload.as_slice()), (2, &b"second"[..]));
    assert_eq!(
        s.load("room/2").expect("load"),
        None,
        "contexts are separate"
    );
}

#[test]
fn another_process_s_generation_is_seen() {
    let d = Dir::new("two");
    let a = CheckpointStore::open(&d.0).expect("open");
    let b = CheckpointStore::open(&d.0).expect("open");
    a.save("c", b"from a").expect("save");
    assert_eq!(b.save("c", b"from b").expect("save"), 2);
    assert_eq!(a.load("c").expect("load").expect("some").payload, b"from b");
}

#[test]
fn empty_and_large_payloads() {
    let d = Dir::new("sizes");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("e", b"").expect("save");
    assert_eq!(s.load("e").expect("load").expect("some").payload, b"");
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    s.save("big", &big).expect("save");
    assert_eq!(s.load("big").expect("load").expect("some").payload, big);
}

#[test]
fn pruning_keeps_k_verified_generations() {
    let d = Dir::new("prune");
    let s = CheckpointStore::open(&d.0).expect("open").with_keep(2);
    for i in 0..6u8 {
        s.save("p", &[i]).expect("save");
    }
    assert_eq!(s.list_generations("p").expect("list"), vec![6, 5]);
}

#[test]
fn a_torn_newest_generation_at_every_length_falls_back_to_the_previous() {
    let d = Dir::new("torn");
    let s = CheckpointStore::open(&d.0).expect("open").with_keep(5);
    s.save("t", b"good old state").expect("save");
    s.save("t", b"the newest state, to be torn").expect("save");
    let path = newest_file(&s, "t");
    let full = std::fs::read(&path).expect("read");
    make_writable(&path);
    for cut in 0..full.len() {
        std::fs::write(&path, &full[..cut]).expect("write torn");
        let l = s.load("t").expect("load").expect("older generation");
        assert_eq!(
            l.payload, b"good old state",
            "torn at {cut} bytes must not load"
        );
    }
    assert_eq!(
        s.stats()
            .corrupt_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        full.len() as u64
    );
}

#[test]
fn a_bit_flip_anywhere_is_refused() {
    let d = Dir::new("flip");
    let s = CheckpointStore::open(&d.0).expect("open").with_keep(5);
    s.save("f", b"old").expect("save");
    s.save("f", b"new payload with some length").expect("save");
    let path = newest_file(&s, "f");
    let full = std::fs::read(&path).expect("read");
    make_writable(&path);
    for pos in 0..full.len() {
        for bit in [0u8, 3, 7] {
            let mut b = full.clone();
            b[pos] ^= 1 << bit;
            std::fs::write(&path, &b).expect("write flipped");
            let l = s.load("f").expect("load").expect("older");
            assert_eq!(
                l.payload, b"old",
                "flip at byte {pos} bit {bit} must not load"
            );
        }
    }
}

#[test]
fn a_file_of_another_context_is_refused() {
    let d = Dir::new("wrong");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("a", b"state of a").expect("save");
    let file = format::encode(1, "b", b"state of b").expect("encode");
    let dir_a = s.context_dir("a");
    std::fs::write(dir_a.join(format!("{:020}.ckpt", 2)), file).expect("plant");
    assert_eq!(
        s.load("a").expect("load").expect("some").payload,
        b"state of a"
    );
}

#[test]
fn leftover_temp_files_are_ignored() {
    let d = Dir::new("temp");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("x", b"real").expect("save");
    std::fs::write(s.context_dir("x").join(".tmp-1-deadbeef"), b"half written").expect("temp");
    assert_eq!(s.load("x").expect("load").expect("some").payload, b"real");
}

#[test]
fn bad_context_ids_are_errors() {
    let d = Dir::new("ids");
    let s = CheckpointStore::open(&d.0).expect("open");
    assert!(matches!(
        s.save("", b"x"),
        Err(CheckpointError::EmptyContextId)
    ));
    assert!(matches!(
        s.save(&"x".repeat(256), b"x"),
        Err(CheckpointError::ContextIdTooLong { .. })
    ));
}

#[test]
fn concurrent_writers_never_clobber_a_generation() {
    let d = Dir::new("race");
    // No pruning, so every published generation can be checked afterwards.
    let stores: Vec<CheckpointStore> = (0..2)
        .map(|_| CheckpointStore::open(&d.0).expect("open").with_keep(10_000))
        .collect();
    let written: Vec<(Generation, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(writer, store)| {
                scope.spawn(move || {
                    (0..40)
                        .map(|i| {
                            let payload = format!("writer {writer} save {i}").into_bytes();
                            (store.save("shared", &payload).expect("save"), payload)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect()
    });
    let mut generations: Vec<Generation> = written.iter().map(|(g, _)| *g).collect();
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(generations.len(), 80, "two saves got the same generation");
    let dir = stores[0].context_dir("shared");
    for (generation, payload) in &written {
        let file = std::fs::read(dir.join(format!("{generation:020}.ckpt"))).expect("read");
        assert_eq!(
            format::verify(&file, "shared", *generation),
            Ok(payload.as_slice()),
            "generation {generation} holds another writer's payload"
        );
    }
}

#[test]
fn pruning_never_counts_a_corrupt_generation_as_kept() {
    let d = Dir::new("prune-corrupt");
    let s = CheckpointStore::open(&d.0).expect("open").with_keep(2);
    s.save("p", b"one").expect("save");
    s.save("p", b"two").expect("save");
    let two = newest_file(&s, "p");
    make_writable(&two);
    std::fs::write(&two, b"rotten").expect("corrupt");
    s.save("p", b"three").expect("save");
    // Generation 2 does not verify, so 1 is still one of the two kept.
    assert_eq!(s.list_generations("p").expect("list"), vec![3, 2, 1]);
    s.save("p", b"four").expect("save");
    assert_eq!(s.list_generations("p").expect("list"), vec![4, 3]);
    assert_eq!(s.load("p").expect("load").expect("some").payload, b"four");
}

#[test]
fn a_generation_under_the_wrong_name_is_refused() {
    let d = Dir::new("misnamed");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("m", b"generation one").expect("save");
    let dir = s.context_dir("m");
    std::fs::copy(
        dir.join(format!("{:020}.ckpt", 1)),
        dir.join(format!("{:020}.ckpt", 5)),
    )
    .expect("copy");
    let l = s.load("m").expect("load").expect("some");
    assert_eq!(
        (l.generation, l.payload.as_slice()),
        (1, &b"generation one"[..])
    );
    assert_eq!(s.stats().corrupt_skipped.load(Relaxed), 1);
    assert_eq!(
        s.save("m", b"next").expect("save"),
        6,
        "never reuses a name"
    );
}

#[test]
fn stale_temp_files_are_removed_by_the_next_save() {
    let d = Dir::new("stale");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("x", b"real").expect("save");
    let dir = s.context_dir("x");
    let old = dir.join(".tmp-1-0000000000000old");
    let fresh = dir.join(".tmp-1-00000000000fresh");
    std::fs::write(&old, b"crashed writer").expect("temp");
    std::fs::write(&fresh, b"writer in progress").expect("temp");
    let two_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .and_then(|f| f.set_modified(two_minutes_ago))
        .expect("age the temp file");
    s.save("x", b"newer").expect("save");
    assert!(
        !old.exists(),
        "a minute-old temp file is a crashed writer's"
    );
    assert!(
        fresh.exists(),
        "a fresh temp file may belong to a live writer"
    );
    assert_eq!(s.stats().stale_temps_removed.load(Relaxed), 1);
    assert_eq!(s.stats().corrupt_skipped.load(Relaxed), 0);
}

#[test]
fn any_context_id_stays_inside_the_store() {
    let d = Dir::new("odd-ids");
    let s = CheckpointStore::open(&d.0).expect("open");
    let long = "\u{1F600}".repeat(63) + "abc"; // 255 bytes
    assert_eq!(long.len(), 255);
    let ids = [
        "../../etc/passwd",
        "/",
        ".",
        "a\0b",
        "room/42",
        "lobby",
        long.as_str(),
    ];
    for (i, id) in ids.iter().enumerate() {
        s.save(id, &[i as u8]).expect("save");
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(s.load(id).expect("load").expect("some").payload, [i as u8]);
    }
    for entry in std::fs::read_dir(&d.0).expect("list root") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        assert!(
            name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "unexpected entry {name:?} in the store root"
        );
    }
    assert_eq!(
        std::fs::read_dir(&d.0).expect("list root").count(),
        ids.len()
    );
}

#[test]
fn remove_deletes_every_generation() {
    let d = Dir::new("remove");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("r", b"1").expect("save");
    s.save("r", b"2").expect("save");
    s.remove("r").expect("remove");
    assert_eq!(s.load("r").expect("load"), None);
    assert!(s.list_generations("r").expect("list").is_empty());
    s.remove("r").expect("removing nothing is fine");
    assert_eq!(s.save("r", b"again").expect("save"), 1);
}

#[test]
fn an_unreadable_generation_is_an_error_not_a_fallback() {
    let d = Dir::new("unreadable");
    let s = CheckpointStore::open(&d.0).expect("open");
    s.save("u", b"old").expect("save");
    std::fs::create_dir(s.context_dir("u").join(format!("{:020}.ckpt", 2))).expect("mkdir");
    assert!(matches!(s.load("u"), Err(CheckpointError::Read { .. })));
}

#[test]
fn bit_flips_in_a_large_file_are_refused() {
    let d = Dir::new("large-flip");
    let s = CheckpointStore::open(&d.0).expect("open");
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    s.save("big", &big).expect("save");
    let mut file = std::fs::read(newest_file(&s, "big")).expect("read");
    let len = file.len();
    // Every header byte, 64 payload bytes spread over the file, and the trailer.
    let header = 22 + "big".len() + 8;
    let positions: Vec<usize> = (0..header)
        .chain((0..64).map(|k| header + k * (big.len() / 64) + k % 7))
        .chain(len - 4..len)
        .collect();
    for pos in positions {
        let bit = 1u8 << (pos % 8);
        file[pos] ^= bit;
        assert!(
            format::verify(&file, "big", 1).is_err(),
            "flip at byte {pos} accepted"
        );
        file[pos] ^= bit;
    }
    assert_eq!(format::verify(&file, "big", 1), Ok(big.as_slice()));
}
