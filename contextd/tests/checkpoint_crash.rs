//! Crash safety by killing a real writer at random moments (sled's `test_crash_recovery` style).
//!
//! The test binary re-executes itself as a writer child (told so by an environment variable) that
//! saves generations of one context in a tight loop. The parent SIGKILLs it after a random delay
//! and then, like a restarted server, opens the store and checks: the load succeeds, the payload
//! is exactly one complete generation's (it verifies against its own counter), no torn generation
//! was ever published, and neither the counter nor the generation goes backwards. Bounded: 30
//! kills or 20 s, whichever comes first. A last child runs to completion to show that a writer
//! resumes from exactly what the parent saw.
//!
//! Set `ELKO_CKPT_CRASH_SEED` to replay the kill delays of a failed run (the seed is printed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elko_contextd::checkpoint::CheckpointStore;

/// The directory a child writes to; set only for the child.
const CHILD_DIR_ENV: &str = "ELKO_CKPT_CRASH_CHILD_DIR";
/// How many saves a child makes before exiting; unset means "until killed".
const CHILD_SAVES_ENV: &str = "ELKO_CKPT_CRASH_CHILD_SAVES";
const SEED_ENV: &str = "ELKO_CKPT_CRASH_SEED";
/// The child prints this once it has loaded and is about to write.
const READY: &str = "ELKO-CKPT-WRITER-READY";
const CONTEXT: &str = "room/crash";

const MAX_KILLS: u32 = 30;
const MAX_TEST_TIME: Duration = Duration::from_secs(20);
/// A child that is never killed still stops by itself.
const MAX_CHILD_TIME: Duration = Duration::from_secs(30);
const MAX_KILL_DELAY_MS: u64 = 50;
/// Upper bound of the child's own start-up; only for not hanging if it never gets ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A payload that proves its own integrity: the counter, then a body whose length (up to 256 KiB,
/// so kills land inside writes) and bytes are derived from it.
fn payload(counter: u64) -> Vec<u8> {
    let len = (counter.wrapping_mul(104_729) % (256 * 1024)) as usize;
    let mut p = Vec::with_capacity(8 + len);
    p.extend_from_slice(&counter.to_le_bytes());
    p.extend((0..len).map(|i| (i as u64 ^ counter.wrapping_mul(31)) as u8));
    p
}

/// The counter of a payload, after checking the payload is exactly `payload(counter)`.
fn verify(p: &[u8]) -> u64 {
    let Some(counter) = p.get(..8).and_then(|b| b.try_into().ok()) else {
        panic!("payload of {} bytes is shorter than its counter", p.len());
    };
    let counter = u64::from_le_bytes(counter);
    assert!(
        p == payload(counter).as_slice(),
        "payload claiming counter {counter} ({} bytes) is not the one written",
        p.len()
    );
    counter
}

/// Not a test when run normally: the writer the parent test kills.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let saves: Option<u64> = std::env::var(CHILD_SAVES_ENV)
        .ok()
        .map(|s| s.parse().expect("saves is a number"));
    let store = CheckpointStore::open(&dir).expect("open");
    let mut counter = store
        .load(CONTEXT)
        .expect("load")
        .map(|l| verify(&l.payload))
        .expect("the parent seeds a checkpoint first");
    println!("{READY}");
    let started = Instant::now();
    let mut saved = 0;
    while started.elapsed() < MAX_CHILD_TIME && saves.is_none_or(|n| saved < n) {
        counter += 1;
        store.save(CONTEXT, &payload(counter)).expect("save");
        saved += 1;
    }
}

/// Kills the child if the parent test panics, so no writer outlives it.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a writer child and waits until it has loaded and is about to write.
fn start_writer(dir: &Path, saves: Option<u64>) -> Writer {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(n) = saves {
        command.env(CHILD_SAVES_ENV, n.to_string());
    }
    let mut child = Writer(command.spawn().expect("spawn writer"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    // Reads until the child's stdout closes (it exits or is killed), so it never blocks on a
    // full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                // libtest may have printed "test crash_child_writer ... " on the same line.
                Ok(line) if line.ends_with(READY) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    ready_rx
        .recv_timeout(READY_TIMEOUT)
        .expect("writer child never got ready (see its stderr above)");
    child
}

/// xorshift64: reproducible delays from a printed seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn killing_the_writer_at_random_moments_never_loses_a_complete_generation() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return; // inside a child: only `crash_child_writer` runs there anyway
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(nanos)
        .max(1);
    eprintln!("checkpoint crash test: {SEED_ENV}={seed}");
    let dir = TempDir(
        std::env::temp_dir().join(format!("elko-ckpt-crash-{}-{nanos:x}", std::process::id())),
    );

    let seeded = CheckpointStore::open(&dir.0).expect("open");
    let mut last_generation = seeded.save(CONTEXT, &payload(0)).expect("seed checkpoint");
    let mut last_counter = 0;

    let start = Instant::now();
    let mut kills = 0;
    while kills < MAX_KILLS && start.elapsed() < MAX_TEST_TIME {
        let mut writer = start_writer(&dir.0, None);
        let delay = next_random(&mut seed) % (MAX_KILL_DELAY_MS + 1);
        std::thread::sleep(Duration::from_millis(delay));
        writer.0.kill().expect("SIGKILL the writer");
        let _ = writer.0.wait();
        kills += 1;

        // A restarted server: a fresh store on the same directory.
        let store = CheckpointStore::open(&dir.0).expect("open after crash");
        let loaded = store
            .load(CONTEXT)
            .expect("load after crash")
            .expect("a checkpoint survives every crash");
        let counter = verify(&loaded.payload);
        assert_eq!(
            store.stats().corrupt_skipped.load(Relaxed),
            0,
            "a torn generation was published (kill {kills}, after {delay} ms)"
        );
        assert!(
            counter >= last_counter && loaded.generation >= last_generation,
            "state went backwards: counter {counter} generation {} after counter \
             {last_counter} generation {last_generation}",
            loaded.generation
        );
        assert_eq!(
            counter > last_counter,
            loaded.generation > last_generation,
            "a new generation must hold a new counter and vice versa"
        );
        last_counter = counter;
        last_generation = loaded.generation;
    }

    // A writer that is not killed resumes from exactly the state the parent saw.
    let mut writer = start_writer(&dir.0, Some(3));
    let status = writer.0.wait().expect("wait for writer");
    assert!(status.success(), "uninterrupted writer failed: {status}");
    let store = CheckpointStore::open(&dir.0).expect("open");
    let loaded = store.load(CONTEXT).expect("load").expect("checkpoint");
    assert_eq!(verify(&loaded.payload), last_counter + 3);
    assert_eq!(store.list_generations(CONTEXT).expect("list").len(), 2);

    let temps = std::fs::read_dir(store.context_dir(CONTEXT))
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        })
        .count();
    eprintln!(
        "checkpoint crash test: {kills} kills, counter reached {last_counter}, \
         {temps} temp files left by killed writers"
    );
}
