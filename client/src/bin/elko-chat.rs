//! `elko-chat`: chat in an Elko context from a terminal or a pipe.
//!
//! Each line of standard input is an utterance. Events are printed one per
//! line in a stable, greppable form:
//!
//! ```text
//! entered room/1 as alice (2 members)
//! history bob: earlier words
//! said bob: hello
//! joined carol
//! left carol
//! app 1 72757374
//! reentered room/1
//! closed <reason>
//! ```
//!
//! Interactive (stdin a terminal): Ctrl-D leaves. Piped: after the input
//! ends, events are still printed for `--linger` seconds, then it leaves and
//! exits 0. Exit status: 1 refused (denied, bad token...), 2 usage, 3
//! connection problems.

use clap::Parser;
use elko_client::{Client, ClientError, ClientOptions, Event};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Chat in an Elko context. Each stdin line is said; events print one per line.
#[derive(Debug, Parser)]
#[command(name = "elko-chat", version)]
struct Args {
    /// The director's client address.
    #[arg(long, default_value = "127.0.0.1:7700", env = "ELKO_DIRECTOR_ADDR")]
    director: String,
    /// Your user name.
    #[arg(long)]
    user: String,
    /// The context (room) to enter.
    #[arg(
        long,
        conflicts_with = "where_user",
        required_unless_present = "where_user"
    )]
    context: Option<String>,
    /// Enter the context where this user is, instead of --context.
    #[arg(long)]
    where_user: Option<String>,
    /// When stdin is not a terminal: keep printing events this long after its end (seconds).
    #[arg(long, default_value_t = 1.0)]
    linger: f64,
}

fn exit_code(e: &ClientError) -> i32 {
    match e {
        ClientError::Denied { .. }
        | ClientError::Server { .. }
        | ClientError::TooManyReEntries(_) => 1,
        _ => 3,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn print_event(out: &mut impl Write, e: &Event) -> std::io::Result<()> {
    match e {
        Event::Said(s) => writeln!(out, "said {}: {}", s.from, s.text),
        Event::Joined(u) => writeln!(out, "joined {u}"),
        Event::Left(u) => writeln!(out, "left {u}"),
        Event::App { op, body } => writeln!(out, "app {op} {}", hex(body)),
        Event::ReEntered(s) => writeln!(out, "reentered {}", s.context),
    }?;
    out.flush()
}

fn run(args: Args) -> Result<(), ClientError> {
    let mut client = Client::connect(args.director.as_str(), ClientOptions::default())?;
    let mut session = match (&args.context, &args.where_user) {
        (Some(c), _) => client.enter(&args.user, c)?,
        (None, Some(u)) => client.enter_where(&args.user, u)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let snap = session.snapshot().clone();
    let _ = writeln!(
        out,
        "entered {} as {} ({} members)",
        snap.context,
        args.user,
        snap.members.len()
    );
    for h in &snap.history {
        let _ = writeln!(out, "history {}: {}", h.from, h.text);
    }
    let _ = out.flush();

    let interactive = std::io::stdin().is_terminal();
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut leave_at: Option<Instant> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok(Some(line)) => {
                    if !line.is_empty() {
                        session.say(&line)?;
                    }
                }
                Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                    if leave_at.is_none() {
                        let linger = if interactive {
                            0.0
                        } else {
                            args.linger.max(0.0)
                        };
                        leave_at = Some(Instant::now() + Duration::from_secs_f64(linger));
                    }
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if leave_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        match session.next_event(Some(Duration::from_millis(20))) {
            Ok(Some(e)) => {
                let _ = print_event(&mut out, &e);
            }
            Ok(None) => {}
            Err(e) => {
                let _ = writeln!(out, "closed {e}");
                return Err(e);
            }
        }
    }
    session.exit()
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("elko-chat: {e}");
        std::process::exit(exit_code(&e));
    }
}
