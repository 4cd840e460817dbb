//! Unit tests of the store: round trips, generations, torn and corrupt files.

use super::*;
use std::path::PathBuf;

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
