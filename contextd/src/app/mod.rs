//! Applications: what a context *does*.
//!
//! The host (`crate::host`) owns what every context has — members, entry,
//! `Said` fanout with the context sequence number, joined/left events,
//! checkpoint scheduling — and calls an [`App`] for what differs. An app
//! never touches sockets: it returns [`AppEffect`]s, so it is tested with
//! plain calls and a fake clock.
//!
//! Which app runs a context is decided by its id: `auction/...` runs
//! [`auction::Auction`], anything else runs [`chat::Chat`].

pub mod auction;
pub mod chat;

use elko_protocol::{ErrorCode, HistoryEntry};
use std::time::Duration;

/// What an app asks the host to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEffect {
    /// Send an `AppMessage{op, body}` to every member.
    Broadcast { op: u16, body: Vec<u8> },
    /// Send an `AppMessage{op, body}` to the members named `user`.
    SendTo {
        user: String,
        op: u16,
        body: Vec<u8>,
    },
    /// Call [`App::on_timer`] with `tag` after `after`.
    SetTimer { after: Duration, tag: u64 },
}

/// The app's view of the world during one call.
#[derive(Debug)]
pub struct AppCx {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub now_ms: u64,
    effects: Vec<AppEffect>,
    changed: bool,
}

impl AppCx {
    /// A context for one call at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        AppCx {
            now_ms,
            effects: Vec::new(),
            changed: false,
        }
    }

    /// Ask for an effect.
    pub fn effect(&mut self, e: AppEffect) {
        self.effects.push(e);
    }

    /// Long-term state changed: checkpoint it at the next opportunity.
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// The effects asked for, and whether state changed.
    pub fn finish(self) -> (Vec<AppEffect>, bool) {
        (self.effects, self.changed)
    }
}

/// Why an app's checkpoint could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{app} checkpoint did not decode: {detail}")]
    Decode { app: &'static str, detail: String },
}

/// A context's behaviour.
pub trait App: Send {
    /// The app's name, sent in `Snapshot.app` ("chat", "auction").
    fn kind(&self) -> &'static str;
    /// Long-term state to checkpoint.
    fn checkpoint(&self) -> Vec<u8>;
    /// `Snapshot.state` for an entering member.
    fn snapshot_state(&self) -> Vec<u8>;
    /// `Snapshot.history` for an entering member, oldest first.
    fn history(&self) -> Vec<HistoryEntry> {
        Vec::new()
    }
    /// The context was activated (fresh or from its checkpoint).
    fn on_activate(&mut self, _cx: &mut AppCx) {}
    /// `user` entered.
    fn on_enter(&mut self, _cx: &mut AppCx, _user: &str) {}
    /// `user` left.
    fn on_exit(&mut self, _cx: &mut AppCx, _user: &str) {}
    /// `user` said `text`, numbered `context_seq` (already sent to every member).
    fn on_say(&mut self, _cx: &mut AppCx, _context_seq: u64, _user: &str, _text: &str) {}
    /// `user` sent an application message. An error closes that member's
    /// connection with the code.
    fn on_app_message(
        &mut self,
        _cx: &mut AppCx,
        _user: &str,
        _op: u16,
        _body: &[u8],
    ) -> Result<(), ErrorCode> {
        Err(ErrorCode::UNEXPECTED_MESSAGE)
    }
    /// A timer set with [`AppEffect::SetTimer`] fired.
    fn on_timer(&mut self, _cx: &mut AppCx, _tag: u64) {}
    /// Stay active with no members (for example while a timer is pending).
    fn keep_active(&self) -> bool {
        false
    }
}

/// Create the app for `context`, restoring `checkpoint` if there is one.
pub fn create(
    context: &str,
    checkpoint: Option<&[u8]>,
    history_len: usize,
) -> Result<Box<dyn App>, RestoreError> {
    if context.starts_with("auction/") {
        Ok(Box::new(match checkpoint {
            Some(b) => auction::Auction::restore(b)?,
            None => auction::Auction::new(auction::DEFAULT_DURATION),
        }))
    } else {
        Ok(Box::new(match checkpoint {
            Some(b) => chat::Chat::restore(b, history_len)?,
            None => chat::Chat::new(history_len),
        }))
    }
}

/// Encode app state with the project's one bincode configuration.
pub(crate) fn encode_state<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, elko_protocol::codec::CONFIG).unwrap_or_default()
}

/// Decode app state written by [`encode_state`].
pub(crate) fn decode_state<T: serde::de::DeserializeOwned>(
    app: &'static str,
    b: &[u8],
) -> Result<T, RestoreError> {
    let (v, used) =
        bincode::serde::decode_from_slice(b, elko_protocol::codec::CONFIG).map_err(|e| {
            RestoreError::Decode {
                app,
                detail: e.to_string(),
            }
        })?;
    if used != b.len() {
        return Err(RestoreError::Decode {
            app,
            detail: format!("{} trailing bytes", b.len() - used),
        });
    }
    Ok(v)
}
