//! Chat: members talk; the context remembers a topic, the last N utterances
//! and counters, across checkpoints.
//!
//! Application messages (op codes):
//! - `1` SET_TOPIC, body = UTF-8 topic (at most 256 bytes). Broadcast to all
//!   members as op `1` with the same body.
//!
//! `Snapshot.state` = the topic as UTF-8 (empty when none).

use super::{decode_state, encode_state, App, AppCx, AppEffect, RestoreError};
use elko_protocol::{ErrorCode, HistoryEntry};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Op code: set the topic.
pub const OP_SET_TOPIC: u16 = 1;
/// Longest topic, in bytes.
pub const MAX_TOPIC: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    topic: String,
    history: VecDeque<HistoryEntry>,
    utterances: u64,
    entries: u64,
}

/// A chat room.
#[derive(Debug)]
pub struct Chat {
    s: State,
    history_len: usize,
}

impl Chat {
    /// An empty room remembering `history_len` utterances.
    pub fn new(history_len: usize) -> Self {
        Chat {
            s: State::default(),
            history_len,
        }
    }

    /// A room from its checkpoint.
    pub fn restore(b: &[u8], history_len: usize) -> Result<Self, RestoreError> {
        let mut s: State = decode_state("chat", b)?;
        while s.history.len() > history_len {
            s.history.pop_front();
        }
        Ok(Chat { s, history_len })
    }

    /// Utterances ever said here.
    pub fn utterances(&self) -> u64 {
        self.s.utterances
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.s.topic
    }
}

impl App for Chat {
    fn kind(&self) -> &'static str {
        "chat"
    }

    fn checkpoint(&self) -> Vec<u8> {
        encode_state(&self.s)
    }

    fn snapshot_state(&self) -> Vec<u8> {
        self.s.topic.as_bytes().to_vec()
    }

    fn history(&self) -> Vec<HistoryEntry> {
        self.s.history.iter().cloned().collect()
    }

    fn on_enter(&mut self, cx: &mut AppCx, _user: &str) {
        self.s.entries += 1;
        cx.mark_changed();
    }

    fn on_say(&mut self, cx: &mut AppCx, context_seq: u64, user: &str, text: &str) {
        self.s.utterances += 1;
        if self.history_len > 0 {
            if self.s.history.len() == self.history_len {
                self.s.history.pop_front();
            }
            self.s.history.push_back(HistoryEntry {
                context_seq,
                from: user.to_string(),
                text: text.to_string(),
                at_ms: cx.now_ms,
            });
        }
        cx.mark_changed();
    }

    fn on_app_message(
        &mut self,
        cx: &mut AppCx,
        _user: &str,
        op: u16,
        body: &[u8],
    ) -> Result<(), ErrorCode> {
        match op {
            OP_SET_TOPIC => {
                if body.len() > MAX_TOPIC {
                    return Err(ErrorCode::TEXT_TOO_LONG);
                }
                let topic = std::str::from_utf8(body).map_err(|_| ErrorCode::MALFORMED)?;
                self.s.topic = topic.to_string();
                cx.mark_changed();
                cx.effect(AppEffect::Broadcast {
                    op,
                    body: body.to_vec(),
                });
                Ok(())
            }
            _ => Err(ErrorCode::UNEXPECTED_MESSAGE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_a_ring_and_survives_checkpoint() {
        let mut c = Chat::new(3);
        let mut cx = AppCx::new(1_000);
        for i in 1..=5u64 {
            c.on_say(&mut cx, i, "alice", &format!("m{i}"));
        }
        let (_, changed) = cx.finish();
        assert!(changed);
        let h = c.history();
        assert_eq!(
            h.iter().map(|e| e.context_seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let back = Chat::restore(&c.checkpoint(), 3).expect("restores");
        assert_eq!(back.history(), h);
        assert_eq!(back.utterances(), 5);
        // A smaller ring on restore keeps the newest.
        let small = Chat::restore(&c.checkpoint(), 2).expect("restores");
        assert_eq!(
            small
                .history()
                .iter()
                .map(|e| e.context_seq)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
    }

    #[test]
    fn topic_is_set_broadcast_and_validated() {
        let mut c = Chat::new(3);
        let mut cx = AppCx::new(0);
        c.on_app_message(&mut cx, "bob", OP_SET_TOPIC, b"rust")
            .expect("ok");
        assert_eq!(c.topic(), "rust");
        assert_eq!(c.snapshot_state(), b"rust");
        let (fx, _) = cx.finish();
        assert_eq!(
            fx,
            vec![AppEffect::Broadcast {
                op: OP_SET_TOPIC,
                body: b"rust".to_vec()
            }]
        );
        let mut cx = AppCx::new(0);
        assert_eq!(
            c.on_app_message(&mut cx, "bob", OP_SET_TOPIC, &[0xff]),
            Err(ErrorCode::MALFORMED)
        );
        assert_eq!(
            c.on_app_message(&mut cx, "bob", 99, b""),
            Err(ErrorCode::UNEXPECTED_MESSAGE)
        );
    }

    #[test]
    fn garbage_checkpoint_is_an_error_not_a_panic() {
        assert!(Chat::restore(&[0xff, 0xff, 0xff], 3).is_err());
    }
}
