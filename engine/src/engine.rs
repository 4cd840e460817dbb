//! Starting, addressing and stopping the loops.

use crate::config::{AcceptMode, EngineConfig};
use crate::ctx::Ctx;
use crate::ctx::{FIRST_LISTENER_TOKEN, MAX_LISTENERS};
use crate::event_loop::{EventLoop, TIMER_TOKEN, WAKER_TOKEN};
use crate::handler::Handler;
use crate::listen::{bind_group, bind_listener};
use crate::mailbox::{Mail, Mailbox, PostError, Shared};
use crate::stats::LoopStats;
use crate::timer::Timers;
use mio::{Interest, Poll, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running engine: N event loops on N threads.
#[derive(Debug)]
pub struct Engine<M: Send + 'static> {
    shared: Arc<Shared<M>>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

/// Posts mail to an engine's loops from any thread.
#[derive(Debug)]
pub struct Poster<M: Send + 'static> {
    shared: Arc<Shared<M>>,
}

impl<M: Send + 'static> Clone for Poster<M> {
    fn clone(&self) -> Self {
        Poster {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Send + 'static> Poster<M> {
    /// Send mail to loop `to`. Fails, handing it back, if the mailbox is
    /// full (worth retrying later) or the loop has stopped (not worth it).
    pub fn post(&self, to: usize, mail: M) -> Result<(), PostError<M>> {
        self.shared.post(to, mail)
    }

    /// Number of loops.
    pub fn loop_count(&self) -> usize {
        self.shared.mailboxes.len()
    }
}

impl<M: Send + 'static> Engine<M> {
    /// Start the loops. With `listen`, accept connections there (port 0
    /// picks a free port: see [`Engine::local_addr`]). `factory(i)` builds
    /// loop `i`'s handler on that loop's own thread.
    pub fn start<H, F>(
        cfg: EngineConfig,
        listen: Option<SocketAddr>,
        factory: F,
    ) -> io::Result<Engine<M>>
    where
        H: Handler<Mail = M>,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        Self::start_multi(cfg, listen.as_slice(), factory)
    }

    /// Start the loops, accepting on every address in `listen` (at most
    /// [`MAX_LISTENERS`]). [`Ctx::listener_of`] tells a handler which one
    /// accepted a connection (a director listens for clients and for context
    /// servers on two addresses).
    pub fn start_multi<H, F>(
        cfg: EngineConfig,
        listen: &[SocketAddr],
        factory: F,
    ) -> io::Result<Engine<M>>
    where
        H: Handler<Mail = M>,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let n = cfg.loop_count();
        if n == 0 || n > usize::from(u16::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad loop count {n}"),
            ));
        }
        if listen.len() > MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} listen addresses; at most {MAX_LISTENERS}", listen.len()),
            ));
        }
        // Listeners first, so a bad address fails here, synchronously.
        // listeners[loop][listener index]
        let mut listeners: Vec<Vec<Option<std::net::TcpListener>>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::with_capacity(listen.len());
        for &addr in listen {
            match cfg.accept_mode {
                AcceptMode::ReusePort => {
                    let group = bind_group(addr, n)?;
                    local_addrs.push(group[0].local_addr()?);
                    for (per_loop, l) in listeners.iter_mut().zip(group) {
                        per_loop.push(Some(l));
                    }
                }
                AcceptMode::Single => {
                    let l = bind_listener(addr, false)?;
                    local_addrs.push(l.local_addr()?);
                    listeners[0].push(Some(l));
                    for per_loop in listeners.iter_mut().skip(1) {
                        per_loop.push(None);
                    }
                }
            }
        }

        let mut polls = Vec::with_capacity(n);
        let mut mailboxes = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
            let (mb, rx) = Mailbox::new(cfg.mailbox_capacity, waker);
            polls.push(poll);
            mailboxes.push(mb);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            mailboxes,
            stats: (0..n).map(|_| Arc::new(LoopStats::default())).collect(),
            fd_limit: crate::process::max_fds().unwrap_or(u64::MAX),
        });
        let cfg = Arc::new(cfg);
        let factory = Arc::new(factory);
        let cores = if cfg.pin_cpus {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        let mut threads = Vec::with_capacity(n);
        for (i, ((poll, rx), listener)) in
            polls.into_iter().zip(receivers).zip(listeners).enumerate()
        {
            let registry = poll.registry().try_clone()?;
            let timers = Timers::new()?;
            timers.register(poll.registry(), TIMER_TOKEN)?;
            let mut mio_listeners = Vec::with_capacity(listener.len());
            for (li, l) in listener.into_iter().enumerate() {
                mio_listeners.push(match l {
                    Some(l) => {
                        let mut l = mio::net::TcpListener::from_std(l);
                        let token = Token(FIRST_LISTENER_TOKEN + li);
                        poll.registry()
                            .register(&mut l, token, Interest::READABLE)?;
                        Some(l)
                    }
                    None => None,
                });
            }
            let cx = Ctx::new(i, registry, timers, shared.clone(), cfg.clone());
            let factory = factory.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let name = format!("{}-loop{i}", cfg.server_id);
            let batch = cfg.batch_sched;
            let t = std::thread::Builder::new().name(name).spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(loop_idx = i, "could not pin loop to core {core:?}");
                    }
                }
                if batch {
                    crate::batch_scheduling_for_loop(i);
                }
                let handler = factory(i);
                EventLoop::new(handler, cx, poll, rx, mio_listeners).run();
            })?;
            threads.push(t);
        }
        Ok(Engine {
            shared,
            threads,
            local_addrs,
        })
    }

    /// The address the engine listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs.first().copied()
    }

    /// Every listening address, in the order given to [`Engine::start_multi`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Number of loops.
    pub fn loop_count(&self) -> usize {
        self.shared.mailboxes.len()
    }

    /// Send mail to loop `to`. Fails, handing it back, if the mailbox is full
    /// (worth retrying later) or the loop has stopped (not worth it).
    pub fn post(&self, to: usize, mail: M) -> Result<(), PostError<M>> {
        self.shared.post(to, mail)
    }

    /// A cloneable handle that posts mail to the loops from any thread (for
    /// example a disk worker reporting back).
    pub fn poster(&self) -> Poster<M> {
        Poster {
            shared: self.shared.clone(),
        }
    }

    /// Every loop's counters.
    pub fn stats(&self) -> &[Arc<LoopStats>] {
        &self.shared.stats
    }

    /// Begin graceful shutdown without waiting: each loop closes its
    /// listener, calls `on_shutdown`, flushes what is queued for at most
    /// `grace`, then closes every connection and stops.
    pub fn begin_shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for mb in &self.shared.mailboxes {
            // A full mailbox still gets the message eventually; retry briefly.
            let mut mail = Mail::Shutdown(deadline);
            for _ in 0..1000 {
                match mb.send(mail) {
                    Ok(()) | Err(PostError::Stopped(_)) => break,
                    Err(PostError::Full(m)) => {
                        mail = m;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    /// Graceful shutdown: [`Engine::begin_shutdown`], then wait for every loop.
    pub fn shutdown(self, grace: Duration) -> bool {
        self.begin_shutdown(grace);
        self.join()
    }

    /// Wait for every loop to stop.
    /// Wait for every loop to stop. Returns false if a loop stopped by
    /// panicking (its handler's bug took its connections with it); the panic
    /// has been logged.
    pub fn join(self) -> bool {
        let mut clean = true;
        for t in self.threads {
            let name = t.thread().name().unwrap_or("loop").to_string();
            if t.join().is_err() {
                tracing::error!(thread = %name, "an event loop panicked; its connections were dropped");
                clean = false;
            }
        }
        clean
    }

    /// Whether every loop thread has stopped.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }
}
