//! Crash safety by killing a real writer at random moments (sled's
//! `test_crash_recovery` style): after every SIGKILL the store still loads,
//! the payload is exactly one complete generation, and the state never goes
//! backwards. Bounded: 30 kills or 20 s, whichever comes first.

use elko_contextd::checkpoint::CheckpointStore;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ELKO_CKPT_CRASH_CHILD_DIR";
const CONTEXT: &str = "room/crash";

/// A payload that proves its own integrity: the counter, then a body whose
/// length and bytes are derived from it.
fn payload(counter: u64) -> Vec<u8> {
    let mut p = counter.to_le_bytes().to_vec();
    let len = (counter as usize * 7919) % 20_000;
    p.extend((0..len).map(|i| (i as u64 ^ counter) as u8));
    p
}

fn verify(p: &[u8]) -> u64 {
    assert!(p.len() >= 8, "payload shorter than its counter");
    let counter = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
    assert_eq!(
        p,
        payload(counter).as_slice(),
        "payload of counter {counter} is not the one written"
    );
    counter
}

/// Not a test when run normally: the writer the parent test kills.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = CheckpointStore::open(&dir).expect("open");
    let mut counter = store
        .load(CONTEXT)
        .expect("load")
        .map(|l| verify(&l.payload))
        .unwrap_or(0);
    // Bounded even if nobody kills us.
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        counter += 1;
        store.save(CONTEXT, &payload(counter)).expect("save");
    }
}

#[test]
fn killing_the_writer_at_random_moments_never_loses_a_complete_generation() {
    let dir = std::env::temp_dir().join(format!("elko-ckpt-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().expect("test binary");
    let start = Instant::now();
    let mut last = 0u64;
    let mut kills = 0;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    while kills < 30 && start.elapsed() < Duration::from_secs(20) {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn writer");
        // xorshift: a random delay of 5..55 ms, so kills land anywhere in the write path.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(5 + seed % 50));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
        let store = CheckpointStore::open(&dir).expect("open after crash");
        if let Some(l) = store.load(CONTEXT).expect("load after crash") {
            let c = verify(&l.payload);
            assert!(c >= last, "state went backwards: {c} after {last}");
            last = c;
        }
    }
    assert!(kills >= 5, "only {kills} kills in 20 s");
    assert!(last > 0, "the writer never completed a checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
}
