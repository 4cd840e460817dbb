//! The director link, and the way into a context.
//!
//! A [`Client`] is a cheap handle (clone it freely, send it to threads) on
//! one director connection shared by every [`Session`] it created: an
//! automatic re-entry asks the same director over the same connection. The
//! link is kept open between requests and checked before reuse; a director
//! that closed it meanwhile (idle timeout, restart) costs one reconnect,
//! not an error.
//!
//! Entering is `ask director -> connect to the context server -> Enter ->
//! Snapshot`. An answer meaning "ask the director again" (a `ReEnter`, an
//! expired token, a context still loading, a server that just went away) is
//! followed automatically, at most [`ClientOptions::max_reentries`] times in
//! a row with exponential backoff; anything else is returned as it is.

use crate::conn::{resolve, Conn};
use crate::error::{code_is_transient, ClientError};
use crate::session::Session;
use elko_protocol::{
    validate_id, Enter, EnterContext, EnterWhereUser, Message, ReEnter, Redirect, Snapshot,
};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest pause between two entry attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Settings of a [`Client`] and the sessions it creates.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Sent in `Hello`, for the servers' logs.
    pub client_name: String,
    /// Bound on each TCP connect.
    pub connect_timeout: Duration,
    /// Bound on each wait for an answer (`Welcome`, `Redirect`, `Snapshot`)
    /// and on each blocked write. Keep it above the context server's entry
    /// wait (10 s by default), which is how long a `Snapshot` may take when
    /// the context is loading.
    pub io_timeout: Duration,
    /// Automatic re-entries through the director in a row before giving up.
    pub max_reentries: u32,
    /// Pause before the first automatic re-entry; doubled for each further
    /// one in a row (at most 2 s).
    pub reentry_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_name: concat!("elko-client/", env!("CARGO_PKG_VERSION")).into(),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(15),
            max_reentries: 3,
            reentry_backoff: Duration::from_millis(100),
        }
    }
}

/// A connection to a director, from which contexts are entered.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    director: SocketAddr,
    opts: ClientOptions,
    link: Mutex<DirectorLink>,
}

#[derive(Debug)]
struct DirectorLink {
    /// `None` after a failure: reopened by the next request.
    conn: Option<Conn>,
    next_request: u32,
}

/// What to enter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Context(&'a str),
    WhereUser(&'a str),
}

/// A connection that has entered a context.
#[derive(Debug)]
pub(crate) struct Entered {
    pub(crate) conn: Conn,
    pub(crate) snapshot: Snapshot,
}

/// Why an entry is being tried again through the director.
#[derive(Debug)]
pub(crate) enum Retry {
    ReEnter(ReEnter),
    Error(ClientError),
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retry::ReEnter(r) => write!(f, "ReEnter {:?}: {}", r.reason, r.message),
            Retry::Error(e) => e.fmt(f),
        }
    }
}

/// Outcome of one entry attempt that did not enter.
enum Attempt {
    Retry(Retry),
    Fatal(ClientError),
}

impl Client {
    /// Connect to a director's client port and complete the handshake.
    pub fn connect(
        director: impl ToSocketAddrs + fmt::Debug,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let addr = resolve(director)?;
        let conn = Conn::open(addr, &opts)?;
        Ok(Client {
            shared: Arc::new(Shared {
                director: addr,
                opts,
                link: Mutex::new(DirectorLink {
                    conn: Some(conn),
                    next_request: 1,
                }),
            }),
        })
    }

    /// Enter context `context` as `user`.
    pub fn enter(&self, user: &str, context: &str) -> Result<Session, ClientError> {
        self.enter_target(user, Target::Context(context))
    }

    /// Enter, as `user`, the context where `target_user` is now. Automatic
    /// re-entries later go back to that same context, wherever
    /// `target_user` has gone meanwhile.
    pub fn enter_where(&self, user: &str, target_user: &str) -> Result<Session, ClientError> {
        self.enter_target(user, Target::WhereUser(target_user))
    }

    /// The director's address.
    pub fn director_addr(&self) -> SocketAddr {
        self.shared.director
    }

    /// The options this client was created with.
    pub fn options(&self) -> &ClientOptions {
        &self.shared.opts
    }

    fn enter_target(&self, user: &str, target: Target<'_>) -> Result<Session, ClientError> {
        let mut in_row = 0;
        let entered = self.establish(user, target, &mut in_row, None)?;
        Ok(Session::new(
            self.clone(),
            user.to_string(),
            entered,
            in_row,
        ))
    }

    /// Enter, following "ask the director again" answers. `cause` is why
    /// this is already a re-entry (`None` for a first entry); `in_row`
    /// counts re-entries in a row and is updated.
    pub(crate) fn establish(
        &self,
        user: &str,
        target: Target<'_>,
        in_row: &mut u32,
        mut cause: Option<Retry>,
    ) -> Result<Entered, ClientError> {
        let opts = &self.shared.opts;
        loop {
            if let Some(why) = cause.take() {
                if *in_row >= opts.max_reentries {
                    return Err(match why {
                        Retry::ReEnter(r) => ClientError::TooManyReEntries {
                            attempts: *in_row,
                            reason: r.reason,
                            message: r.message,
                        },
                        Retry::Error(e) => e,
                    });
                }
                *in_row += 1;
                let backoff = opts
                    .reentry_backoff
                    .saturating_mul(1 << (*in_row - 1).min(16))
                    .min(MAX_BACKOFF);
                tracing::info!(attempt = *in_row, ?backoff, cause = %why, "entering again through the director");
                std::thread::sleep(backoff);
            }
            match self.try_enter(user, target) {
                Ok(entered) => return Ok(entered),
                Err(Attempt::Retry(why)) => cause = Some(why),
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
    }

    fn try_enter(&self, user: &str, target: Target<'_>) -> Result<Entered, Attempt> {
        let redirect = self.ask_director(user, target).map_err(Attempt::Fatal)?;
        tracing::debug!(context = %redirect.context, to = %redirect.contextd_addr, "redirected");
        let addr = resolve(redirect.contextd_addr.as_str()).map_err(Attempt::Fatal)?;
        let mut conn = Conn::open(addr, &self.shared.opts).map_err(retry_if_transient)?;
        conn.send(&Enter {
            context: redirect.context,
            user: user.to_string(),
            token: redirect.token,
        })
        .map_err(retry_if_transient)?;
        match conn.expect("Snapshot") {
            Ok(Message::Snapshot(snapshot)) => Ok(Entered { conn, snapshot }),
            Ok(Message::ReEnter(r)) => Err(Attempt::Retry(Retry::ReEnter(r))),
            Ok(other) => Err(Attempt::Fatal(conn.unexpected("Snapshot", &other))),
            Err(e) => Err(retry_if_transient(e)),
        }
    }

    /// One request on the director link, reopening the link if the director
    /// closed it since the last request.
    fn ask_director(&self, user: &str, target: Target<'_>) -> Result<Redirect, ClientError> {
        let sh = &*self.shared;
        let mut link = sh.link.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = link
            .conn
            .take()
            .and_then(|mut c| still_open(&mut c).then_some(c));
        let (mut conn, reused) = match kept {
            Some(c) => (c, true),
            None => (Conn::open(sh.director, &sh.opts)?, false),
        };
        if let Err(e) = check_ids(user, target, conn.limits().max_id_len) {
            link.conn = Some(conn);
            return Err(e);
        }
        let request_id = link.next_request;
        link.next_request = link.next_request.wrapping_add(1);
        let mut res = request(&mut conn, user, target, request_id);
        if reused && res.as_ref().is_err_and(is_link_failure) {
            tracing::debug!(director = %sh.director, "director link went stale; reconnecting");
            conn = Conn::open(sh.director, &sh.opts)?;
            res = request(&mut conn, user, target, request_id);
        }
        // After any other failure the link's state is unknown: the next
        // request opens a fresh one.
        let keep = match &res {
            Ok(_) => true,
            Err(e) => matches!(e, ClientError::Denied { .. }),
        };
        if keep {
            link.conn = Some(conn);
        }
        res
    }
}

/// Refuse ids the director would refuse, before sending anything.
fn check_ids(user: &str, target: Target<'_>, max_id_len: u16) -> Result<(), ClientError> {
    check_id("user name", user, max_id_len)?;
    match target {
        Target::Context(context) => check_id("context id", context, max_id_len),
        Target::WhereUser(target_user) => check_id("target user name", target_user, max_id_len),
    }
}

/// Send one enter request and wait for its answer.
fn request(
    conn: &mut Conn,
    user: &str,
    target: Target<'_>,
    request_id: u32,
) -> Result<Redirect, ClientError> {
    match target {
        Target::Context(context) => conn.send(&EnterContext {
            request_id,
            user: user.to_string(),
            context: context.to_string(),
        })?,
        Target::WhereUser(target_user) => conn.send(&EnterWhereUser {
            request_id,
            user: user.to_string(),
            target_user: target_user.to_string(),
        })?,
    }
    let waiting_for = "Redirect or Denied";
    let deadline = Instant::now() + conn.io_timeout();
    loop {
        let Some(msg) = conn.recv(Some(deadline))? else {
            return Err(ClientError::Timeout {
                addr: conn.addr(),
                waiting_for,
                timeout: conn.io_timeout(),
            });
        };
        match msg {
            Message::Redirect(r) if r.request_id == request_id => return Ok(r),
            Message::Denied(d) if d.request_id == request_id => {
                return Err(ClientError::Denied {
                    code: d.code,
                    message: d.message,
                })
            }
            Message::Redirect(_) | Message::Denied(_) => {
                tracing::debug!("skipped the answer to an abandoned request");
            }
            other => return Err(conn.unexpected(waiting_for, &other)),
        }
    }
}

fn check_id(what: &'static str, value: &str, max_len: u16) -> Result<(), ClientError> {
    validate_id(value, max_len).map_err(|source| ClientError::InvalidId {
        what,
        value: value.to_string(),
        source,
    })
}

/// Whether a kept-open director link is still usable: reads what has
/// arrived meanwhile without waiting (answering Pings on the way).
fn still_open(conn: &mut Conn) -> bool {
    loop {
        match conn.recv(Some(Instant::now())) {
            Ok(None) => return true,
            Ok(Some(Message::Redirect(_) | Message::Denied(_))) => {} // stale answers
            Ok(Some(_)) | Err(_) => return false,
        }
    }
}

/// Failures that mean the link died, not that the request was refused.
fn is_link_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Closed { .. }
            | ClientError::Io { .. }
            | ClientError::Server { .. }
            | ClientError::ServerSilent { .. }
    )
}

/// Failures of the context-server part of an entry that another trip
/// through the director may fix.
fn retry_if_transient(e: ClientError) -> Attempt {
    let transient = match &e {
        ClientError::Connect { .. } | ClientError::Closed { .. } => true,
        ClientError::Server { code, .. } => code_is_transient(*code),
        _ => false,
    };
    if transient {
        Attempt::Retry(Retry::Error(e))
    } else {
        Attempt::Fatal(e)
    }
}
