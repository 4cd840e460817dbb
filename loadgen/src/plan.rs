//! Before a run: what it needs from this machine (descriptors per process,
//! memory), so that a run the machine cannot do is refused up front with the
//! limit that stops it, instead of failing half-way through its ramp (a
//! context server refusing the crowd it has no descriptors for) or waking the
//! kernel's OOM killer.

use crate::generator::TargetKind;
use crate::scenario::{gen_fds_needed, Scenario};

/// Clients a peer server started here may take: Redis is started with
/// `--maxclients` this, and both peers are one process under the same
/// descriptor limit as everything else.
pub const PEER_MAX_CLIENTS: usize = 19_000;

/// Memory one client costs when the servers run on this machine too: two
/// kernel TCP sockets (about 6.3 KiB between them, measured as unreclaimable
/// slab at 19 000 clients), the generator's and the server's user-space
/// state (about 2 KiB). Measured 8.4 KiB a client in all; planned with a
/// margin.
pub const BYTES_PER_CLIENT: u64 = 12 * 1024;

/// Memory one client costs when only the generator runs here (a cluster
/// reached with `--director` or `--target-addr`): one socket and the
/// generator's state.
pub const BYTES_PER_CLIENT_GENERATOR_ONLY: u64 = 6 * 1024;

/// Where a run's servers are, as far as planning cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    /// Started by the generator on this machine.
    Started(TargetKind),
    /// Already running, maybe elsewhere.
    Existing,
}

/// What this machine offers a run.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// The descriptor limit of each process.
    pub fd_limit: u64,
    /// Free memory in bytes (`None`: unknown, not checked).
    pub mem_available: Option<u64>,
    pub cores: usize,
}

/// Check `s` against what `machine` offers for every target in `servers`;
/// on success, `s.contextds`, `s.workers` and `s.gen_procs` hold what the
/// run will start.
pub fn plan(s: &mut Scenario, servers: &[Servers], machine: Machine) -> Result<(), String> {
    let Machine {
        fd_limit,
        mem_available,
        cores,
    } = machine;
    if let Some(at) = s.stop_contextd_at {
        if !servers.contains(&Servers::Started(TargetKind::Elko)) {
            return Err(
                "--stop-contextd-at stops a context server this run starts; against a \
                        running cluster (--director), stop one yourself"
                    .into(),
            );
        }
        if at >= s.duration {
            return Err(format!(
                "--stop-contextd-at {} s is not within the {} s steady state",
                at.as_secs_f64(),
                s.duration.as_secs_f64()
            ));
        }
        // Somewhere for its clients to go.
        s.contextds = s.contextds.max(2);
    }
    s.gen_procs = s.processes_within(fd_limit);
    let (largest, _) = s.share_bound(s.gen_procs);
    if gen_fds_needed(largest) > fd_limit {
        return Err(format!(
            "a room of {} clients does not fit one generator process: a room is driven by one \
             process, which needs {} descriptors for it and may open {fd_limit} (hard \
             RLIMIT_NOFILE); use smaller rooms (--rooms, --fanout)",
            s.clients.div_ceil(s.rooms.max(1)),
            gen_fds_needed(largest),
        ));
    }
    if servers.contains(&Servers::Started(TargetKind::Elko)) {
        s.contextds = s.contextds_within(fd_limit)?;
        if s.workers == 0 {
            s.workers = s.workers_beside_generator(cores);
        }
    } else {
        // No context server of ours: the knob sizes nothing.
        s.workers = 0;
    }
    for kind in [TargetKind::Redis, TargetKind::Nats, TargetKind::Minimal] {
        let most = PEER_MAX_CLIENTS.min(fd_limit.saturating_sub(64) as usize);
        if servers.contains(&Servers::Started(kind)) && s.clients > most {
            return Err(format!(
                "{} clients are more than the {most} one {} process takes here (its descriptor \
                 limit is {fd_limit}, hard RLIMIT_NOFILE): run fewer clients, or point \
                 --target-addr at a server set up for more",
                s.clients,
                kind.name(),
            ));
        }
    }
    let per_client = if servers.iter().any(|t| matches!(t, Servers::Started(_))) {
        BYTES_PER_CLIENT
    } else {
        BYTES_PER_CLIENT_GENERATOR_ONLY
    };
    let need = s.clients as u64 * per_client;
    match mem_available {
        Some(have) if need > have => Err(format!(
            "{} clients need about {} of memory ({} KiB each: kernel sockets, generator and \
             server state), and this machine has {} available (MemAvailable): run fewer \
             clients",
            s.clients,
            gib(need),
            per_client / 1024,
            gib(have),
        )),
        _ => Ok(()),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Preset;

    const GIB: u64 = 1 << 30;

    /// This machine: 20 000 descriptors, 2 cores.
    fn here(mem_available: Option<u64>) -> Machine {
        Machine {
            fd_limit: 20_000,
            mem_available,
            cores: 2,
        }
    }

    /// sun2002 with `clients` in `rooms`.
    fn sized(clients: usize, rooms: usize) -> Scenario {
        Scenario {
            clients,
            rooms,
            ..Scenario::preset(Preset::Sun2002)
        }
    }

    #[test]
    fn the_2002_run_fits_as_it_is() {
        let mut s = Scenario::preset(Preset::Sun2002);
        let all = [
            Servers::Started(TargetKind::Elko),
            Servers::Started(TargetKind::Redis),
            Servers::Started(TargetKind::Nats),
        ];
        plan(&mut s, &all, here(Some(20 * GIB))).expect("fits");
        assert_eq!((s.contextds, s.gen_procs), (1, 1));
    }

    #[test]
    fn the_servers_and_generators_a_run_needs_are_planned() {
        let mut s = sized(30_000, 750);
        plan(&mut s, &[Servers::Started(TargetKind::Elko)], here(None)).expect("fits");
        assert_eq!((s.contextds, s.gen_procs), (2, 2));
        // A cluster already running: its size is not ours to choose.
        let mut e = sized(30_000, 750);
        plan(&mut e, &[Servers::Existing], here(None)).expect("fits");
        assert_eq!(e.contextds, 1);
    }

    #[test]
    fn started_context_servers_get_the_cores_the_generator_leaves() {
        let elko = [Servers::Started(TargetKind::Elko)];
        let on = |cores: usize, s: &mut Scenario| {
            let machine = Machine {
                cores,
                ..here(None)
            };
            plan(s, &elko, machine).expect("fits");
            s.workers
        };
        // Here: the generator's loop on one core, the context server on the other.
        assert_eq!(on(2, &mut Scenario::preset(Preset::Sun2002)), 1);
        assert_eq!(
            on(1, &mut Scenario::preset(Preset::Sun2002)),
            1,
            "at least one"
        );
        assert_eq!(on(8, &mut Scenario::preset(Preset::Sun2002)), 7);
        let mut two = Scenario {
            contextds: 2,
            gen_loops: 2,
            ..Scenario::preset(Preset::Sun2002)
        };
        assert_eq!(on(8, &mut two), 3, "(8 - 2) / 2");
        let mut asked = Scenario {
            workers: 4,
            ..Scenario::preset(Preset::Sun2002)
        };
        assert_eq!(on(2, &mut asked), 4, "--workers is kept");
        // A cluster already running: not ours to size.
        let mut e = Scenario::preset(Preset::Scale);
        plan(&mut e, &[Servers::Existing], here(None)).expect("fits");
        assert_eq!(e.workers, 0);
    }

    #[test]
    fn stopping_a_context_server_needs_one_started_and_another_to_go_to() {
        let mut s = Scenario {
            stop_contextd_at: Some(std::time::Duration::from_secs(30)),
            ..sized(8000, 200)
        };
        plan(&mut s, &[Servers::Started(TargetKind::Elko)], here(None)).expect("fits");
        assert_eq!(s.contextds, 2);
        let why = plan(&mut s, &[Servers::Existing], here(None)).expect_err("--director");
        assert!(why.contains("stop one yourself"), "{why}");
        s.stop_contextd_at = Some(std::time::Duration::from_secs(60));
        let why = plan(&mut s, &[Servers::Started(TargetKind::Elko)], here(None))
            .expect_err("at the end");
        assert!(why.contains("not within the 60 s steady state"), "{why}");
    }

    #[test]
    fn a_run_this_machine_cannot_do_is_refused_with_the_limit() {
        let mut s = sized(5_000_000, 125_000);
        let why = plan(
            &mut s,
            &[Servers::Started(TargetKind::Elko)],
            here(Some(23 * GIB)),
        )
        .expect_err("5M clients in 23 GiB");
        assert!(why.contains("5000000 clients need about 57.2 GiB"), "{why}");
        assert!(why.contains("23.0 GiB available (MemAvailable)"), "{why}");
        // Driving a remote cluster costs this machine half as much.
        s.clients = 3_000_000;
        assert!(plan(&mut s, &[Servers::Existing], here(Some(23 * GIB))).is_ok());
        assert!(plan(
            &mut s,
            &[Servers::Started(TargetKind::Elko)],
            here(Some(23 * GIB))
        )
        .is_err());

        let mut peers = sized(20_000, 500);
        let why = plan(
            &mut peers,
            &[Servers::Started(TargetKind::Redis)],
            here(None),
        )
        .expect_err("one redis-server");
        assert!(
            why.contains("20000 clients are more than the 19000 one redis process takes"),
            "{why}"
        );
        assert!(plan(&mut peers, &[Servers::Existing], here(None)).is_ok());

        // Rooms are dealt whole, to one generator process each.
        let mut one_room = sized(30_000, 1);
        let why = plan(&mut one_room, &[Servers::Existing], here(None)).expect_err("one room");
        assert!(
            why.contains("a room of 30000 clients does not fit one generator process"),
            "{why}"
        );
    }
}
