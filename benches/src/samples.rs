//! One representative instance of every message type, shared by the codec
//! bench and the codec table.
//!
//! Sizes follow what the servers send in practice: 64-byte utterances, ids of
//! ten-odd bytes, 90-byte reservation tokens, a Snapshot of a 40-member room
//! with 20 history entries.

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

/// `frames` frames cycling through [`sample_messages`], as one byte stream.
pub fn mixed_stream(frames: usize) -> bytes::Bytes {
    let msgs = sample_messages();
    let mut stream = bytes::BytesMut::new();
    for m in msgs.iter().cycle().take(frames) {
        // Every sample encodes: checked by the test below.
        let _ = m.encode(&mut stream);
    }
    stream.freeze()
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
    fn mixed_stream_splits_back_into_the_samples() {
        let msgs = sample_messages();
        let stream = mixed_stream(100);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.extend(&stream);
        let mut n = 0;
        while let Some(f) = d.next_frame().expect("valid stream") {
            assert_eq!(f.decode().expect("decodes"), msgs[n % msgs.len()]);
            n += 1;
        }
        assert_eq!(n, 100);
        assert_eq!(d.buffered(), 0);
    }
}
