//! The director's routing state, as a pure state machine.
//!
//! [`Directory`] knows which context server ("provider") hosts which context
//! and which user is where, and answers clients' enter requests. It opens no
//! sockets and reads no clocks: the engine adapter (`crate::server`) feeds it
//! inputs (`handle_*`, each with the time passed in as [`Now`]) and sends
//! what [`Directory::poll_output`] yields. Tests drive it the same way with
//! integer connection ids and a fake clock.
//!
//! Each connection is a *link* whose state is a type (`Link`); every input
//! message consumes the link's state and yields the next one, or closes the
//! link with a reason. A message in the wrong state is never ignored:
//!
//! ```text
//! client link:    Client --EnterContext/EnterWhereUser--> Client
//! provider link:  AwaitRegister --Register (proof ok)--> Registered
//!                 Registered --LoadReport/ContextOpened/...--> Registered
//!                 Registered --ShuttingDown--> Departed
//! anything else:  -> closed (UNEXPECTED_MESSAGE, AUTH_FAILED, ...)
//! ```
//!
//! What the directory believes is only ever what providers told it (or what
//! it ordered and is waiting to hear about). A provider's own report about
//! itself wins over older news from another provider: exactly one context
//! server can hold a context (an exclusive lock file per context, on the
//! context-server side), so if P says it opened `c`, any record of `c` on Q
//! is stale. That is also what lets several directors run side by side, each
//! with its own view: when two of them place the same context on different
//! servers, the loser answers `ActivateFailed{ALREADY_ACTIVE, holder}` and
//! the directory re-routes to the holder.

mod placement;
#[cfg(test)]
mod tests;

pub use placement::{choose_provider, Candidate};

use elko_cluster::{auth, ClusterSecret, TokenIssuer};
use elko_protocol::{
    validate_id, Activate, ActivateFailed, Denied, EnterContext, EnterWhereUser, ErrorCode,
    ExpectClient, LoadReport, Message, Redirect, Register, Registered,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A user or context id held in the per-user records. Shared, not copied:
/// a user's record and its provider's member index point at one string, and
/// every member of a context shares that context's name (a routed user costs
/// about 150 bytes here instead of 360).
type Name = Arc<str>;

/// How long an ordered, unconfirmed activation still counts towards its
/// provider's load (the "provisional bump" that spreads a burst of new
/// contexts instead of sending them all to the server that looked emptiest).
pub const PROVISIONAL_TTL: Duration = Duration::from_secs(5);
/// An activation neither confirmed nor refused after this long is forgotten,
/// so the next entry places the context again (safe: the context servers'
/// lock files keep it single).
pub const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The time of an input, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: report deadlines, activation ages.
    pub mono: Instant,
    /// Wall-clock milliseconds since the Unix epoch: token issue and expiry.
    pub wall_ms: u64,
}

/// What the directory needs to know about its deployment.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Announced to providers in `Registered`.
    pub director_id: String,
    /// Longest context id or user name accepted.
    pub max_id_len: u16,
    /// How long a reservation token lives.
    pub token_ttl_ms: u64,
    /// How often providers send a LoadReport.
    pub report_interval: Duration,
    /// A provider silent for this many report intervals is declared dead.
    pub dead_after_reports: u32,
    /// See [`PROVISIONAL_TTL`].
    pub provisional_ttl: Duration,
    /// See [`ACTIVATION_TIMEOUT`].
    pub activation_timeout: Duration,
}

/// How many report intervals a provider that refused an activation with
/// `NO_CAPACITY` is left out of placement. A server drained through another
/// director (or full sooner than its reports said) refuses; without this
/// back-off it would stay the least-loaded choice, and its clients would
/// bounce between it and this director.
pub const REFUSAL_BACKOFF_REPORTS: u32 = 3;

impl DirectoryConfig {
    /// Defaults: 30 s tokens, 1 s reports, dead after 3 missed reports.
    pub fn new(director_id: impl Into<String>) -> Self {
        DirectoryConfig {
            director_id: director_id.into(),
            max_id_len: elko_protocol::DEFAULT_MAX_ID_LEN,
            token_ttl_ms: 30_000,
            report_interval: Duration::from_secs(1),
            dead_after_reports: 3,
            provisional_ttl: PROVISIONAL_TTL,
            activation_timeout: ACTIVATION_TIMEOUT,
        }
    }

    /// Silence after which a provider is dead.
    pub fn dead_after(&self) -> Duration {
        self.report_interval
            .saturating_mul(self.dead_after_reports.max(1))
    }
}

/// What the directory asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<C> {
    /// Send a message on a connection.
    Send { conn: C, msg: Message },
    /// Send an ErrorFrame with `code` and close the connection. The
    /// directory has already forgotten the link; the driver's later
    /// [`Directory::handle_closed`] for it is a no-op.
    Close {
        conn: C,
        code: ErrorCode,
        detail: String,
    },
}

/// The state of one connection.
#[derive(Debug)]
enum Link {
    /// A client: any number of enter requests, in any order.
    Client,
    /// A provider after the handshake: only Register may come, answered
    /// with a proof over the challenge sent in this connection's Welcome.
    AwaitRegister { challenge: [u8; 16] },
    /// A registered provider; its record in `providers` names this connection.
    Registered { provider_id: String },
    /// The provider announced ShuttingDown and was forgotten; its last
    /// reports (closing contexts, leaving users) are accepted and ignored.
    Departed { provider_id: String },
}

/// Where a context is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    provider: String,
    state: PlacementState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlacementState {
    /// This director ordered the activation; no answer yet.
    Activating { since: Instant },
    /// The provider said the context is open.
    Active,
}

/// Where a user is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserLoc {
    context: Name,
    provider: Name,
}

/// A provider's last LoadReport, summed over its loops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reported {
    connections: u64,
    contexts: u64,
    users: u64,
    busy_permille_max: u16,
}

/// Records from before a reconnect that the provider has not confirmed yet.
/// The provider re-sends ContextOpened/UserEntered for everything it holds
/// and then its first LoadReport; what is still unconfirmed then is gone.
#[derive(Debug, Default)]
struct Resync {
    contexts: HashSet<String>,
    members: HashSet<(Name, Name)>,
}

#[derive(Debug)]
struct Provider<C> {
    /// The provider id (shared with every user record on this provider).
    id: Name,
    conn: C,
    epoch: u64,
    client_addr: String,
    workers: u16,
    capacity: u32,
    draining: bool,
    /// Refused an activation with NO_CAPACITY: no placement here before
    /// then (extended by every further refusal).
    refusing_until: Option<Instant>,
    reported: Reported,
    last_seq: Option<u64>,
    /// Registration or last LoadReport.
    last_heard: Instant,
    /// Activations ordered here and not yet confirmed, with when.
    /// Invariant: every key is also in `contexts` (as Activating).
    pending: HashMap<String, Instant>,
    /// Contexts placed here (active or activating).
    contexts: HashSet<String>,
    /// Users recorded here, by context.
    members: HashMap<Name, HashSet<Name>>,
    resync: Option<Resync>,
}

impl<C> Provider<C> {
    fn new(conn: C, r: &Register, now: Instant) -> Self {
        Provider {
            id: Name::from(r.provider_id.as_str()),
            conn,
            epoch: r.epoch,
            client_addr: r.client_addr.clone(),
            workers: r.workers,
            capacity: r.capacity,
            draining: false,
            refusing_until: None,
            reported: Reported::default(),
            last_seq: None,
            last_heard: now,
            pending: HashMap::new(),
            contexts: HashSet::new(),
            members: HashMap::new(),
            resync: None,
        }
    }

    /// Contexts hosted, as best known, plus fresh unconfirmed activations.
    fn load(&self, now: Instant, provisional_ttl: Duration) -> u64 {
        let unconfirmed = self.pending.len() as u64;
        let confirmed = (self.contexts.len() as u64).saturating_sub(unconfirmed);
        let fresh = self
            .pending
            .values()
            .filter(|&&at| now.saturating_duration_since(at) < provisional_ttl)
            .count() as u64;
        self.reported.contexts.max(confirmed) + fresh
    }
}

/// Counters, for the periodic summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Enter requests (EnterContext and EnterWhereUser).
    pub enters: u64,
    /// Requests answered with a Redirect.
    pub redirects: u64,
    /// Requests answered with Denied, by code.
    pub denials: BTreeMap<u16, u64>,
    /// Activate commands sent.
    pub activations: u64,
    /// Providers declared dead (silent, or their connection closed).
    pub providers_lost: u64,
}

impl DirectoryStats {
    /// Total denials.
    pub fn denied(&self) -> u64 {
        self.denials.values().sum()
    }
}

/// A snapshot of the directory's size and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub providers: usize,
    pub contexts_active: usize,
    pub contexts_activating: usize,
    pub users: usize,
    pub stats: DirectoryStats,
}

/// A registered provider as the directory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderView {
    pub id: String,
    pub epoch: u64,
    pub client_addr: String,
    pub workers: u16,
    pub capacity: u32,
    pub draining: bool,
    /// Refused an activation with NO_CAPACITY recently: skipped by placement
    /// for a few report intervals.
    pub refusing: bool,
    /// The load placement uses (contexts plus fresh unconfirmed activations).
    pub load: u64,
    /// Activations ordered and not yet answered.
    pub activating: usize,
    /// From the last LoadReport.
    pub users: u64,
    pub connections: u64,
    pub busy_permille_max: u16,
    pub last_seq: Option<u64>,
}

/// The routing state machine. `C` identifies a connection (the engine's
/// `ConnId` in the server, integers in tests).
#[derive(Debug)]
pub struct Directory<C> {
    cfg: DirectoryConfig,
    secret: ClusterSecret,
    issuer: TokenIssuer,
    links: HashMap<C, Link>,
    /// By provider id; ordered so that logs and placement ties are stable.
    providers: BTreeMap<String, Provider<C>>,
    contexts: HashMap<String, Placement>,
    users: HashMap<Name, UserLoc>,
    out: VecDeque<Output<C>>,
    stats: DirectoryStats,
}

impl<C: Copy + Eq + Hash + Debug> Directory<C> {
    /// An empty directory using `secret` to check providers and sign tokens.
    pub fn new(cfg: DirectoryConfig, secret: ClusterSecret) -> Self {
        let issuer = TokenIssuer::new(secret.clone(), cfg.token_ttl_ms);
        Directory {
            cfg,
            secret,
            issuer,
            links: HashMap::new(),
            providers: BTreeMap::new(),
            contexts: HashMap::new(),
            users: HashMap::new(),
            out: VecDeque::new(),
            stats: DirectoryStats::default(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output<C>> {
        self.out.pop_front()
    }

    // ---- links opening and closing ------------------------------------------

    /// A client completed the handshake on the client listener.
    pub fn handle_client_open(&mut self, conn: C) {
        self.links.insert(conn, Link::Client);
    }

    /// A context server completed the handshake on the provider listener;
    /// `challenge` is what its Welcome carried.
    pub fn handle_provider_open(&mut self, conn: C, challenge: [u8; 16]) {
        self.links.insert(conn, Link::AwaitRegister { challenge });
    }

    /// A connection closed (for any reason). A registered provider whose
    /// connection closes is forgotten with its contexts and users.
    pub fn handle_closed(&mut self, conn: C) {
        if let Some(link) = self.links.remove(&conn) {
            self.link_gone(conn, link, "connection closed");
        }
    }

    // ---- messages -------------------------------------------------------------

    /// A message arrived on `conn`. Consumes the link's state and moves it on
    /// (or closes the link).
    pub fn handle_message(&mut self, conn: C, msg: Message, now: Now) {
        let Some(link) = self.links.remove(&conn) else {
            self.push_close(
                conn,
                ErrorCode::UNEXPECTED_MESSAGE,
                format!(
                    "{} on a connection the director does not know",
                    msg.message_type().name()
                ),
            );
            return;
        };
        let next = match link {
            Link::Client => self.client_step(conn, msg, now),
            Link::AwaitRegister { challenge } => {
                self.await_register_step(conn, challenge, msg, now)
            }
            Link::Registered { provider_id } => self.registered_step(conn, provider_id, msg, now),
            Link::Departed { provider_id } => self.departed_step(conn, provider_id, msg),
        };
        if let Some(next) = next {
            self.links.insert(conn, next);
        }
    }

    /// A client asks to enter a context.
    pub fn handle_enter(&mut self, conn: C, m: EnterContext, now: Now) {
        self.handle_message(conn, m.into(), now);
    }

    /// A client asks to enter the context where another user is.
    pub fn handle_enter_where(&mut self, conn: C, m: EnterWhereUser, now: Now) {
        self.handle_message(conn, m.into(), now);
    }

    /// A provider registers (the only message allowed before it is registered).
    pub fn handle_register(&mut self, conn: C, m: Register, now: Now) {
        self.handle_message(conn, m.into(), now);
    }

    /// A registered provider's periodic load figures.
    pub fn handle_load_report(&mut self, conn: C, m: LoadReport, now: Now) {
        self.handle_message(conn, m.into(), now);
    }

    /// A registered provider opened a context.
    pub fn handle_context_opened(&mut self, conn: C, context: impl Into<String>, now: Now) {
        let context = context.into();
        self.handle_message(conn, elko_protocol::ContextOpened { context }.into(), now);
    }

    /// A registered provider closed (checkpointed and unloaded) a context.
    pub fn handle_context_closed(&mut self, conn: C, context: impl Into<String>, now: Now) {
        let context = context.into();
        self.handle_message(conn, elko_protocol::ContextClosed { context }.into(), now);
    }

    /// A registered provider could not activate a context.
    pub fn handle_activate_failed(&mut self, conn: C, m: ActivateFailed, now: Now) {
        self.handle_message(conn, m.into(), now);
    }

    /// A user entered a context on a registered provider.
    pub fn handle_user_entered(&mut self, conn: C, context: &str, user: &str, now: Now) {
        let m = elko_protocol::UserEntered {
            context: context.into(),
            user: user.into(),
        };
        self.handle_message(conn, m.into(), now);
    }

    /// A user left a context on a registered provider.
    pub fn handle_user_exited(&mut self, conn: C, context: &str, user: &str, now: Now) {
        let m = elko_protocol::UserExited {
            context: context.into(),
            user: user.into(),
        };
        self.handle_message(conn, m.into(), now);
    }

    /// A registered provider is shutting down.
    pub fn handle_shutting_down(&mut self, conn: C, now: Now) {
        self.handle_message(conn, elko_protocol::ShuttingDown {}.into(), now);
    }

    /// Time passed: declare silent providers dead and forget activations that
    /// were never answered. Call it a few times per report interval.
    pub fn handle_tick(&mut self, now: Now) {
        let dead_after = self.cfg.dead_after();
        let silent: Vec<(String, C, Duration)> = self
            .providers
            .iter()
            .filter_map(|(id, p)| {
                let quiet = now.mono.saturating_duration_since(p.last_heard);
                (quiet > dead_after).then(|| (id.clone(), p.conn, quiet))
            })
            .collect();
        for (id, conn, quiet) in silent {
            self.links.remove(&conn);
            self.push_close(
                conn,
                ErrorCode::IDLE_TIMEOUT,
                format!("no LoadReport for {quiet:?}; the limit is {dead_after:?}"),
            );
            self.forget_provider(&id, "silent (missed load reports)", true);
        }

        let limit = self.cfg.activation_timeout;
        let stale: Vec<(String, String)> = self
            .providers
            .iter()
            .flat_map(|(id, p)| {
                p.pending
                    .iter()
                    .filter(move |(_, &at)| now.mono.saturating_duration_since(at) > limit)
                    .map(move |(c, _)| (id.clone(), c.clone()))
            })
            .collect();
        for (provider, context) in stale {
            tracing::warn!(%provider, %context, "activation not answered within {limit:?}; forgetting it");
            if let Some(p) = self.providers.get_mut(&provider) {
                p.pending.remove(&context);
            }
            if self.placed_on(&context, &provider) {
                self.unplace(&context);
            }
        }
    }

    /// Operator command: tell a provider to take no new activations, and
    /// stop placing contexts on it. False if no such provider.
    pub fn drain_provider(&mut self, provider_id: &str) -> bool {
        let Some(p) = self.providers.get_mut(provider_id) else {
            return false;
        };
        p.draining = true;
        let conn = p.conn;
        self.push_send(conn, elko_protocol::Drain {}.into());
        true
    }

    // ---- queries ----------------------------------------------------------------

    /// The provider hosting (or activating) `context`, and whether it is active.
    pub fn placement(&self, context: &str) -> Option<(&str, bool)> {
        self.contexts
            .get(context)
            .map(|p| (p.provider.as_str(), p.state == PlacementState::Active))
    }

    /// The (context, provider) where `user` is, as last reported.
    pub fn user_location(&self, user: &str) -> Option<(&str, &str)> {
        self.users.get(user).map(|l| (&*l.context, &*l.provider))
    }

    /// Registered provider ids, sorted.
    pub fn provider_ids(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// One line of figures per registered provider, for logs.
    pub fn provider_views(&self, now: Instant) -> Vec<ProviderView> {
        self.providers
            .iter()
            .map(|(id, p)| ProviderView {
                id: id.clone(),
                epoch: p.epoch,
                client_addr: p.client_addr.clone(),
                workers: p.workers,
                capacity: p.capacity,
                draining: p.draining,
                refusing: p.refusing_until.is_some_and(|t| now < t),
                load: p.load(now, self.cfg.provisional_ttl),
                activating: p.pending.len(),
                users: p.reported.users,
                connections: p.reported.connections,
                busy_permille_max: p.reported.busy_permille_max,
                last_seq: p.last_seq,
            })
            .collect()
    }

    /// Sizes and counters.
    pub fn summary(&self) -> Summary {
        let activating: usize = self.providers.values().map(|p| p.pending.len()).sum();
        Summary {
            providers: self.providers.len(),
            contexts_active: self.contexts.len().saturating_sub(activating),
            contexts_activating: activating,
            users: self.users.len(),
            stats: self.stats.clone(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &DirectoryStats {
        &self.stats
    }

    // ---- client link --------------------------------------------------------------

    fn client_step(&mut self, conn: C, msg: Message, now: Now) -> Option<Link> {
        match msg {
            Message::EnterContext(m) => self.enter_context(conn, m, now),
            Message::EnterWhereUser(m) => self.enter_where_user(conn, m, now),
            other => {
                let detail = format!(
                    "{} is not allowed on a client link to a director (send EnterContext or EnterWhereUser)",
                    other.message_type().name()
                );
                return self.close_link(conn, Link::Client, ErrorCode::UNEXPECTED_MESSAGE, detail);
            }
        }
        Some(Link::Client)
    }

    fn enter_context(&mut self, conn: C, m: EnterContext, now: Now) {
        self.stats.enters += 1;
        if let Err(detail) = self.check_ids(&[("user", &m.user), ("context", &m.context)]) {
            self.deny(conn, m.request_id, ErrorCode::INVALID_ID, detail);
            return;
        }
        self.route(conn, m.request_id, m.user, m.context, now);
    }

    fn enter_where_user(&mut self, conn: C, m: EnterWhereUser, now: Now) {
        self.stats.enters += 1;
        if let Err(detail) = self.check_ids(&[("user", &m.user), ("target user", &m.target_user)]) {
            self.deny(conn, m.request_id, ErrorCode::INVALID_ID, detail);
            return;
        }
        let Some(loc) = self.users.get(m.target_user.as_str()) else {
            let detail = format!("user {:?} is not in any context", m.target_user);
            self.deny(conn, m.request_id, ErrorCode::NO_SUCH_USER, detail);
            return;
        };
        let context = loc.context.to_string();
        self.route(conn, m.request_id, m.user, context, now);
    }

    fn check_ids(&self, ids: &[(&str, &str)]) -> Result<(), String> {
        for (what, id) in ids {
            validate_id(id, self.cfg.max_id_len).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(())
    }

    /// Send the client where `context` is, activating it first if it is
    /// nowhere. Lookup, choice and marking happen in one call on one thread,
    /// so two requests for the same inactive context cannot both activate it.
    fn route(&mut self, conn: C, request_id: u32, user: String, context: String, now: Now) {
        let placed = self
            .contexts
            .get(&context)
            .map(|p| p.provider.clone())
            .filter(|id| self.providers.contains_key(id));
        let provider_id = match placed {
            Some(id) => id,
            None => match self.choose(now.mono) {
                Some(id) => {
                    self.order_activation(&context, &id, now.mono);
                    id
                }
                None => {
                    let detail = format!(
                        "no context server can host {context:?}: {} registered, none accepting new contexts under capacity",
                        self.providers.len()
                    );
                    self.deny(conn, request_id, ErrorCode::NO_CAPACITY, detail);
                    return;
                }
            },
        };
        let Some(p) = self.providers.get(&provider_id) else {
            return; // unreachable: checked or chosen above
        };
        let (pconn, addr) = (p.conn, p.client_addr.clone());
        let (token, claims) = self.issuer.issue(&context, &user, now.wall_ms);
        self.push_send(
            pconn,
            ExpectClient {
                context: context.clone(),
                user,
                token_id: claims.nonce,
                expires_at_ms: claims.expires_at_ms,
            }
            .into(),
        );
        let expires_in_ms = u32::try_from(self.issuer.ttl_ms()).unwrap_or(u32::MAX);
        self.push_send(
            conn,
            Redirect {
                request_id,
                context,
                contextd_addr: addr,
                token,
                expires_in_ms,
            }
            .into(),
        );
        self.stats.redirects += 1;
    }

    fn choose(&self, now: Instant) -> Option<String> {
        let ttl = self.cfg.provisional_ttl;
        choose_provider(self.providers.iter().map(|(id, p)| Candidate {
            id,
            accepting: !p.draining && p.refusing_until.is_none_or(|t| now >= t),
            load: p.load(now, ttl),
            users: p.reported.users,
            capacity: p.capacity,
        }))
        .map(str::to_owned)
    }

    fn order_activation(&mut self, context: &str, provider_id: &str, now: Instant) {
        self.place(
            context,
            provider_id,
            PlacementState::Activating { since: now },
        );
        let Some(p) = self.providers.get_mut(provider_id) else {
            return;
        };
        p.pending.insert(context.to_owned(), now);
        let conn = p.conn;
        tracing::debug!(provider = provider_id, context, "activating");
        self.push_send(
            conn,
            Activate {
                context: context.to_owned(),
            }
            .into(),
        );
        self.stats.activations += 1;
    }

    fn deny(&mut self, conn: C, request_id: u32, code: ErrorCode, message: String) {
        tracing::debug!(?conn, request_id, ?code, %message, "enter denied");
        *self.stats.denials.entry(code.0).or_default() += 1;
        self.push_send(
            conn,
            Denied {
                request_id,
                code,
                message,
            }
            .into(),
        );
    }

    // ---- provider link ------------------------------------------------------------

    fn await_register_step(
        &mut self,
        conn: C,
        challenge: [u8; 16],
        msg: Message,
        now: Now,
    ) -> Option<Link> {
        match msg {
            Message::Register(r) => self.register(conn, challenge, r, now),
            other => {
                let detail = format!(
                    "{} before Register: a context server's first message must be Register",
                    other.message_type().name()
                );
                self.close_link(
                    conn,
                    Link::AwaitRegister { challenge },
                    ErrorCode::UNEXPECTED_MESSAGE,
                    detail,
                )
            }
        }
    }

    fn register(&mut self, conn: C, challenge: [u8; 16], r: Register, now: Now) -> Option<Link> {
        let link = Link::AwaitRegister { challenge };
        if !auth::verify_register(&self.secret, &challenge, &r.provider_id, r.epoch, &r.auth) {
            tracing::warn!(?conn, provider = %r.provider_id, epoch = r.epoch, "Register proof does not verify");
            let detail = format!(
                "Register proof for provider {:?} epoch {} does not verify: give the context server the director's cluster secret",
                r.provider_id, r.epoch
            );
            return self.close_link(conn, link, ErrorCode::AUTH_FAILED, detail);
        }
        if let Err(e) = validate_id(&r.provider_id, self.cfg.max_id_len) {
            let detail = format!("provider id: {e}");
            return self.close_link(conn, link, ErrorCode::INVALID_ID, detail);
        }
        if r.client_addr.is_empty() {
            let detail = "Register has an empty client_addr".to_owned();
            return self.close_link(conn, link, ErrorCode::MALFORMED, detail);
        }
        let id = r.provider_id.clone();
        match self.providers.get(&id).map(|p| (p.epoch, p.conn)) {
            Some((epoch, _)) if epoch > r.epoch => {
                let detail = format!(
                    "provider {id:?} is registered with epoch {epoch}; epoch {} is older (a stale process?)",
                    r.epoch
                );
                return self.close_link(conn, link, ErrorCode::UNEXPECTED_MESSAGE, detail);
            }
            Some((epoch, old_conn)) if epoch == r.epoch => {
                self.retire_conn(
                    old_conn,
                    "replaced by a newer connection of the same provider and epoch",
                );
                if let Some(p) = self.providers.get_mut(&id) {
                    let resync = Resync {
                        contexts: p
                            .contexts
                            .iter()
                            .filter(|c| !p.pending.contains_key(*c))
                            .cloned()
                            .collect(),
                        members: p
                            .members
                            .iter()
                            .flat_map(|(c, us)| us.iter().map(move |u| (c.clone(), u.clone())))
                            .collect(),
                    };
                    p.conn = conn;
                    p.client_addr = r.client_addr.clone();
                    p.workers = r.workers;
                    p.capacity = r.capacity;
                    p.last_heard = now.mono;
                    p.resync = Some(resync);
                }
                tracing::info!(provider = %id, epoch = r.epoch, ?conn, "provider reconnected");
            }
            Some((epoch, old_conn)) => {
                self.retire_conn(old_conn, &format!("superseded by epoch {}", r.epoch));
                self.forget_provider(
                    &id,
                    &format!("restarted (epoch {epoch} -> {})", r.epoch),
                    false,
                );
                self.insert_provider(conn, &r, now);
            }
            None => self.insert_provider(conn, &r, now),
        }
        self.push_send(
            conn,
            Registered {
                director_id: self.cfg.director_id.clone(),
            }
            .into(),
        );
        Some(Link::Registered { provider_id: id })
    }

    fn insert_provider(&mut self, conn: C, r: &Register, now: Now) {
        tracing::info!(
            provider = %r.provider_id,
            epoch = r.epoch,
            client_addr = %r.client_addr,
            workers = r.workers,
            capacity = r.capacity,
            "provider registered"
        );
        self.providers
            .insert(r.provider_id.clone(), Provider::new(conn, r, now.mono));
    }

    /// Close a provider's previous connection without forgetting its records.
    fn retire_conn(&mut self, old: C, detail: &str) {
        self.links.remove(&old);
        self.push_close(old, ErrorCode::UNEXPECTED_MESSAGE, detail.to_owned());
    }

    fn registered_step(
        &mut self,
        conn: C,
        provider_id: String,
        msg: Message,
        now: Now,
    ) -> Option<Link> {
        let id = provider_id.as_str();
        match msg {
            Message::LoadReport(m) => self.load_report(id, m, now),
            Message::ContextOpened(m) => self.context_opened(id, m.context),
            Message::ActivateFailed(m) => self.activate_failed(id, m, now.mono),
            Message::ContextClosed(m) => self.context_closed(id, &m.context),
            Message::UserEntered(m) => self.user_entered(id, m.context, m.user),
            Message::UserExited(m) => self.user_exited(id, &m.context, &m.user),
            Message::ShuttingDown(_) => {
                self.forget_provider(id, "shutting down", false);
                return Some(Link::Departed { provider_id });
            }
            other => {
                let detail = format!(
                    "{} is not allowed from a registered context server",
                    other.message_type().name()
                );
                let link = Link::Registered { provider_id };
                return self.close_link(conn, link, ErrorCode::UNEXPECTED_MESSAGE, detail);
            }
        }
        Some(Link::Registered { provider_id })
    }

    fn departed_step(&mut self, conn: C, provider_id: String, msg: Message) -> Option<Link> {
        match msg {
            Message::LoadReport(_)
            | Message::ContextOpened(_)
            | Message::ActivateFailed(_)
            | Message::ContextClosed(_)
            | Message::UserEntered(_)
            | Message::UserExited(_)
            | Message::ShuttingDown(_) => Some(Link::Departed { provider_id }),
            other => {
                let detail = format!("{} after ShuttingDown", other.message_type().name());
                let link = Link::Departed { provider_id };
                self.close_link(conn, link, ErrorCode::UNEXPECTED_MESSAGE, detail)
            }
        }
    }

    fn load_report(&mut self, id: &str, m: LoadReport, now: Now) {
        let Some(p) = self.providers.get_mut(id) else {
            return;
        };
        let mut r = Reported::default();
        for l in &m.loops {
            r.connections += u64::from(l.connections);
            r.contexts += u64::from(l.contexts);
            r.users += u64::from(l.users);
            r.busy_permille_max = r.busy_permille_max.max(l.busy_permille);
        }
        if p.last_seq.is_some_and(|s| m.seq <= s) {
            tracing::debug!(provider = id, seq = m.seq, last = ?p.last_seq, "LoadReport seq did not increase");
        }
        p.reported = r;
        p.last_seq = Some(m.seq);
        p.last_heard = now.mono;
        if let Some(resync) = p.resync.take() {
            self.finish_resync(id, resync);
        }
    }

    /// Forget what the provider held before its reconnect and did not
    /// re-announce.
    fn finish_resync(&mut self, id: &str, resync: Resync) {
        let (mut contexts, mut users) = (0, 0);
        for c in resync.contexts {
            if self
                .contexts
                .get(&c)
                .is_some_and(|pl| pl.provider == id && pl.state == PlacementState::Active)
            {
                self.unplace(&c);
                contexts += 1;
            }
        }
        for (c, u) in resync.members {
            self.forget_member(id, &c, &u);
            users += 1;
        }
        if contexts + users > 0 {
            tracing::info!(
                provider = id,
                contexts,
                users,
                "resync: forgot records not re-announced after reconnect"
            );
        }
    }

    fn context_opened(&mut self, id: &str, context: String) {
        let Some(p) = self.providers.get_mut(id) else {
            return;
        };
        p.pending.remove(&context);
        if let Some(r) = p.resync.as_mut() {
            r.contexts.remove(&context);
        }
        self.place(&context, id, PlacementState::Active);
    }

    fn activate_failed(&mut self, id: &str, m: ActivateFailed, now: Instant) {
        let backoff = self
            .cfg
            .report_interval
            .saturating_mul(REFUSAL_BACKOFF_REPORTS);
        let Some(p) = self.providers.get_mut(id) else {
            return;
        };
        p.pending.remove(&m.context);
        if m.code == ErrorCode::NO_CAPACITY {
            tracing::info!(provider = id, context = %m.context, "provider refuses activations; placing elsewhere for {backoff:?}");
            p.refusing_until = Some(now + backoff);
        }
        let holder = m
            .holder
            .as_deref()
            .filter(|h| m.code == ErrorCode::ALREADY_ACTIVE && self.providers.contains_key(*h));
        match holder {
            Some(h) => {
                let h = h.to_owned();
                tracing::info!(provider = id, context = %m.context, holder = %h, "context already active elsewhere; routing to its holder");
                self.place(&m.context, &h, PlacementState::Active);
            }
            None => {
                tracing::warn!(provider = id, context = %m.context, code = ?m.code, holder = ?m.holder, "activation failed");
                if self.placed_on(&m.context, id) {
                    self.unplace(&m.context);
                }
            }
        }
    }

    fn context_closed(&mut self, id: &str, context: &str) {
        if self.placed_on(context, id) {
            self.unplace(context);
        }
        let Some(p) = self.providers.get_mut(id) else {
            return;
        };
        p.pending.remove(context);
        let members = p.members.remove(context).unwrap_or_default();
        if let Some(r) = p.resync.as_mut() {
            r.contexts.remove(context);
            r.members.retain(|(c, _)| &**c != context);
        }
        for u in members {
            if self
                .users
                .get(&u)
                .is_some_and(|l| &*l.provider == id && &*l.context == context)
            {
                self.users.remove(&u);
            }
        }
    }

    fn user_entered(&mut self, id: &str, context: String, user: String) {
        if !self.providers.contains_key(id) {
            return;
        }
        // A member there means the context is open there.
        if self
            .contexts
            .get(&context)
            .is_none_or(|pl| pl.provider != id || pl.state != PlacementState::Active)
        {
            if let Some(p) = self.providers.get_mut(id) {
                p.pending.remove(&context);
            }
            self.place(&context, id, PlacementState::Active);
        }
        let Some(p) = self.providers.get_mut(id) else {
            return;
        };
        // One string per user and per context, shared by the records.
        let context: Name = p
            .members
            .get_key_value(context.as_str())
            .map_or_else(|| Name::from(context), |(k, _)| k.clone());
        let user: Name = Name::from(user);
        if let Some(r) = p.resync.as_mut() {
            r.members.remove(&(context.clone(), user.clone()));
        }
        p.members
            .entry(context.clone())
            .or_default()
            .insert(user.clone());
        let loc = UserLoc {
            context,
            provider: p.id.clone(),
        };
        if let Some(old) = self.users.insert(user.clone(), loc.clone()) {
            if old.provider != loc.provider || old.context != loc.context {
                self.drop_member_record(&old.provider, &old.context, &user);
            }
        }
    }

    fn user_exited(&mut self, id: &str, context: &str, user: &str) {
        if let Some(r) = self.providers.get_mut(id).and_then(|p| p.resync.as_mut()) {
            r.members.remove(&(Name::from(context), Name::from(user)));
        }
        self.forget_member(id, context, user);
    }

    /// Forget that `user` is in `context` on provider `id`.
    fn forget_member(&mut self, id: &str, context: &str, user: &str) {
        self.drop_member_record(id, context, user);
        if self
            .users
            .get(user)
            .is_some_and(|l| &*l.provider == id && &*l.context == context)
        {
            self.users.remove(user);
        }
    }

    fn drop_member_record(&mut self, id: &str, context: &str, user: &str) {
        if let Some(p) = self.providers.get_mut(id) {
            if let Some(set) = p.members.get_mut(context) {
                set.remove(user);
                if set.is_empty() {
                    p.members.remove(context);
                }
            }
        }
    }

    // ---- records ------------------------------------------------------------------

    fn placed_on(&self, context: &str, provider: &str) -> bool {
        self.contexts
            .get(context)
            .is_some_and(|p| p.provider == provider)
    }

    /// Record `context` on `provider_id`, taking it off any other provider.
    fn place(&mut self, context: &str, provider_id: &str, state: PlacementState) {
        if let Some(old) = self.contexts.get(context) {
            if old.provider != provider_id {
                let old = old.provider.clone();
                tracing::debug!(context, from = %old, to = provider_id, "context record moves");
                if let Some(q) = self.providers.get_mut(&old) {
                    q.contexts.remove(context);
                    q.pending.remove(context);
                }
            }
        }
        if let Some(p) = self.providers.get_mut(provider_id) {
            p.contexts.insert(context.to_owned());
        }
        self.contexts.insert(
            context.to_owned(),
            Placement {
                provider: provider_id.to_owned(),
                state,
            },
        );
    }

    fn unplace(&mut self, context: &str) {
        if let Some(pl) = self.contexts.remove(context) {
            if let Some(p) = self.providers.get_mut(&pl.provider) {
                p.contexts.remove(context);
                p.pending.remove(context);
            }
        }
    }

    /// Forget a provider with its contexts and users. Returns how many of
    /// each were forgotten. `lost` marks an unplanned loss (logged at warn).
    fn forget_provider(&mut self, id: &str, why: &str, lost: bool) -> (usize, usize) {
        let Some(p) = self.providers.remove(id) else {
            return (0, 0);
        };
        let mut contexts = 0;
        for c in p.contexts {
            if self.contexts.get(&c).is_some_and(|pl| pl.provider == id) {
                self.contexts.remove(&c);
                contexts += 1;
            }
        }
        let mut users = 0;
        for (c, members) in p.members {
            for u in members {
                if self
                    .users
                    .get(&u)
                    .is_some_and(|l| &*l.provider == id && l.context == c)
                {
                    self.users.remove(&u);
                    users += 1;
                }
            }
        }
        if lost {
            self.stats.providers_lost += 1;
            tracing::warn!(
                provider = id,
                contexts,
                users,
                "provider lost ({why}): forgot its contexts and users; they will be activated elsewhere on the next entry"
            );
        } else {
            tracing::info!(provider = id, contexts, users, "provider forgotten ({why})");
        }
        (contexts, users)
    }

    // ---- outputs ------------------------------------------------------------------

    fn push_send(&mut self, conn: C, msg: Message) {
        self.out.push_back(Output::Send { conn, msg });
    }

    fn push_close(&mut self, conn: C, code: ErrorCode, detail: String) {
        self.out.push_back(Output::Close { conn, code, detail });
    }

    /// Close a link whose state the caller consumed, and forget what it carried.
    fn close_link(&mut self, conn: C, link: Link, code: ErrorCode, detail: String) -> Option<Link> {
        tracing::debug!(?conn, ?code, %detail, "closing link");
        self.push_close(conn, code, detail);
        self.link_gone(conn, link, "closed by the director");
        None
    }

    fn link_gone(&mut self, conn: C, link: Link, why: &str) {
        if let Link::Registered { provider_id } = link {
            if self
                .providers
                .get(&provider_id)
                .is_some_and(|p| p.conn == conn)
            {
                self.forget_provider(&provider_id, why, true);
            }
        }
    }
}
