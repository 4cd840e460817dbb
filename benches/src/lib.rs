//! Shared pieces of Elko's benchmarks: sample messages and per-thread CPU time.

use elko_protocol::*;

/// One representative instance of every message type.
pub fn sample_messages() -> Vec<Message> {
    let limits = Limits {
        max_frame: 65536,
        max_id_len: 255,
        max_text_len: 16384,
        heartbeat_ms: 15000,
        idle_timeout_ms: 60000,
    };
    let text = "x".repeat(64);
    vec![
        Hello {
            magic: MAGIC,
            min_version: 1,
            max_version: 1,
            client_name: "bench/1.0".into(),
        }
        .into(),
        Welcome {
            version: 1,
            server_id: "contextd-1".into(),
            limits,
            challenge: [7; 16],
        }
        .into(),
        ErrorFrame {
            code: ErrorCode::SLOW_CONSUMER,
            message: "slow consumer".into(),
        }
        .into(),
        Ping { nonce: 1 << 40 }.into(),
        Pong { nonce: 1 << 40 }.into(),
        EnterContext {
            request_id: 7,
            user: "user-1234".into(),
            context: "room/42".into(),
        }
        .into(),
        EnterWhereUser {
            request_id: 7,
            user: "user-1234".into(),
            target_user: "user-99".into(),
        }
        .into(),
        Redirect {
            request_id: 7,
            context: "room/42".into(),
            contextd_addr: "127.0.0.1:7710".into(),
            token: vec![9; 90],
            expires_in_ms: 30000,
        }
        .into(),
        Denied {
            request_id: 7,
            code: ErrorCode::NO_CAPACITY,
            message: "no context server".into(),
        }
        .into(),
        Enter {
            context: "room/42".into(),
            user: "user-1234".into(),
            token: vec![9; 90],
        }
        .into(),
        Snapshot {
            context: "room/42".into(),
            app: "chat".into(),
            members: (0..40).map(|i| format!("user-{i}")).collect(),
            history: (0..20)
                .map(|i| HistoryEntry {
                    context_seq: i,
                    from: format!("user-{i}"),
                    text: text.clone(),
                    at_ms: 1_700_000_000_000,
                })
                .collect(),
            state: vec![],
        }
        .into(),
        Say {
            client_seq: 1234,
            sent_at_us: 1 << 33,
            text: text.clone(),
        }
        .into(),
        Said {
            context_seq: 99_999,
            from: "user-1234".into(),
            client_seq: 1234,
            sent_at_us: 1 << 33,
            text: text.clone(),
        }
        .into(),
        Joined {
            user: "user-1234".into(),
        }
        .into(),
        Left {
            user: "user-1234".into(),
        }
        .into(),
        Exit {}.into(),
        ReEnter {
            reason: ReEnterReason::SHUTDOWN,
            message: "shutting down".into(),
        }
        .into(),
        AppMessage {
            op: 2,
            body: vec![1; 16],
        }
        .into(),
        Register {
            provider_id: "contextd-1".into(),
            epoch: 1_700_000_000_000,
            client_addr: "127.0.0.1:7710".into(),
            workers: 2,
            capacity: 0,
            auth: [3; 32],
        }
        .into(),
        Registered {
            director_id: "director-1".into(),
        }
        .into(),
        LoadReport {
            seq: 1000,
            loops: vec![
                LoopLoad {
                    connections: 4000,
                    contexts: 100,
                    users: 4000,
                    busy_permille: 120
                };
                2
            ],
        }
        .into(),
        Activate {
            context: "room/42".into(),
        }
        .into(),
        ContextOpened {
            context: "room/42".into(),
        }
        .into(),
        ActivateFailed {
            context: "room/42".into(),
            code: ErrorCode::ALREADY_ACTIVE,
            holder: Some("contextd-2".into()),
        }
        .into(),
        ContextClosed {
            context: "room/42".into(),
        }
        .into(),
        UserEntered {
            context: "room/42".into(),
            user: "user-1234".into(),
        }
        .into(),
        UserExited {
            context: "room/42".into(),
            user: "user-1234".into(),
        }
        .into(),
        ExpectClient {
            context: "room/42".into(),
            user: "user-1234".into(),
            token_id: 1 << 60,
            expires_at_ms: 1_700_000_030_000,
        }
        .into(),
        Drain {}.into(),
        ShuttingDown {}.into(),
    ]
}

/// User + system CPU time, in seconds, of this process's threads whose name
/// starts with `prefix` (from `/proc/self/task/*/stat`).
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0u64;
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that ends the command name: state is field 3,
        // utime and stime are fields 14 and 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += ut + st;
        }
    }
    total as f64 / ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_type_has_a_sample() {
        let mut types: Vec<_> = sample_messages()
            .iter()
            .map(Message::message_type)
            .collect();
        types.sort();
        types.dedup();
        assert_eq!(types, MessageType::ALL.to_vec());
    }

    #[test]
    fn cpu_time_of_a_busy_named_thread_is_seen() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (spun_tx, spun_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(move || {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                let _ = spun_tx.send(());
                let _ = done_rx.recv();
            })
            .expect("spawn");
        spun_rx.recv().expect("spun");
        let cpu = threads_cpu_seconds("cpu-probe");
        assert!(cpu >= 0.1, "a thread that spun 300 ms shows {cpu} s of CPU");
        assert_eq!(threads_cpu_seconds("no-such-thread"), 0.0);
        drop(done_tx);
        t.join().expect("join");
    }
}
