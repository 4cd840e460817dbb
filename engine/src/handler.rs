//! The application side of the engine.

use crate::close::CloseReason;
use crate::conn::ConnId;
use crate::ctx::Ctx;
use crate::timer::TimerId;
use elko_protocol::{Frame, Hello, Welcome};
use std::net::SocketAddr;

/// An application plugged into the engine. One instance per event loop,
/// created on that loop's thread by the factory given to
/// [`crate::Engine::start`], so a handler needs no locks: everything it owns
/// is touched by one thread. It talks to other loops only through
/// [`Ctx::post`] and [`Ctx::handoff`], which arrive as [`Handler::on_mail`]
/// and [`Handler::on_adopt`].
///
/// The engine handles the handshake (Hello/Welcome), heartbeats (Ping/Pong)
/// and peer ErrorFrames itself; every other frame of an established
/// connection reaches [`Handler::on_frame`].
pub trait Handler: 'static {
    /// What other loops (and the engine's owner) send this loop.
    type Mail: Send + 'static;

    /// The loop started; a good place to open outbound connections and set timers.
    fn on_start(&mut self, _cx: &mut Ctx<Self::Mail>) {}

    /// A connection was accepted (before its Hello).
    fn on_accept(&mut self, _cx: &mut Ctx<Self::Mail>, _conn: ConnId, _peer: SocketAddr) {}

    /// An accepted connection sent a valid Hello; the engine has queued Welcome.
    fn on_hello(&mut self, _cx: &mut Ctx<Self::Mail>, _conn: ConnId, _hello: &Hello) {}

    /// An outbound connection received Welcome: it is ready for application frames.
    fn on_welcome(&mut self, _cx: &mut Ctx<Self::Mail>, _conn: ConnId, _welcome: &Welcome) {}

    /// An application frame arrived on an established connection. Its body
    /// shares the loop's receive block with other frames: copy what you keep
    /// past this call (keeping the `Bytes` keeps the block).
    fn on_frame(&mut self, cx: &mut Ctx<Self::Mail>, conn: ConnId, frame: Frame);

    /// The connection was closed and reaped; `conn` is no longer valid.
    fn on_close(&mut self, _cx: &mut Ctx<Self::Mail>, _conn: ConnId, _reason: &CloseReason) {}

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, _cx: &mut Ctx<Self::Mail>, _timer: TimerId, _data: u64) {}

    /// Mail from another loop or from the engine's owner.
    fn on_mail(&mut self, _cx: &mut Ctx<Self::Mail>, _mail: Self::Mail) {}

    /// A connection handed over by another loop with [`Ctx::handoff`] now
    /// lives here under the new id `conn`, with the mail sent along with it.
    /// Bytes it had buffered (read but not yet dispatched, or queued but not
    /// yet written) came along and keep their order.
    fn on_adopt(&mut self, cx: &mut Ctx<Self::Mail>, conn: ConnId, mail: Self::Mail) {
        let _ = mail;
        cx.close(
            conn,
            CloseReason::unexpected("this loop does not adopt connections"),
        );
    }

    /// Graceful shutdown began: the listener is closed; queued output will be
    /// flushed (within the grace period) and then every connection closed.
    fn on_shutdown(&mut self, _cx: &mut Ctx<Self::Mail>) {}
}
