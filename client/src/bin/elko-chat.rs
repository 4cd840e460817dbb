//! `elko-chat`: chat in an Elko context from a terminal or a pipe.
//!
//! Each line of standard input is an utterance (empty lines are skipped).
//! Events are printed to standard output one per line, in a stable,
//! greppable form:
//!
//! ```text
//! entered room/1 as alice (2 members)
//! history bob: earlier words
//! said bob: hello
//! joined carol
//! left carol
//! app 1 72757374
//! reentered room/1
//! closed SLOW_CONSUMER (10): outbound queue overflow
//! ```
//!
//! `history` lines are the snapshot's remembered utterances, oldest first.
//! `app` prints the op and the body in lowercase hex (nothing after the op
//! for an empty body). Control characters in names and text are printed as
//! Rust escapes (`\n`, `\u{1b}`), so one event is always one line. `closed`
//! is printed when the session ends other than by our own exit.
//!
//! Interactive (stdin a terminal): Ctrl-D leaves the context and quits.
//! Piped: after the input ends, events are still printed for `--linger`
//! seconds, then it leaves and exits 0.
//!
//! Structure: a thread reads stdin lines into a channel; the main thread owns
//! the session, sends the lines that have arrived, and waits for events in
//! short slices (so a typed line goes out within [`POLL`]).
//!
//! Exit status: 0 left normally; 1 refused or closed by the cluster (denied,
//! error from a server, re-entries exhausted); 2 usage (bad arguments or
//! ids); 3 connection problems (cannot connect, connection lost, timeout,
//! protocol violation). Logs go to stderr (`RUST_LOG`, default `warn`).

use clap::Parser;
use elko_client::{Client, ClientError, ClientOptions, CloseReason, Event, Session};
use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest wait for events before looking at stdin again.
const POLL: Duration = Duration::from_millis(20);

const STATUS_REFUSED: u8 = 1;
const STATUS_USAGE: u8 = 2;
const STATUS_CONNECTION: u8 = 3;

/// Chat in an Elko context. Each stdin line is said; events print one per line.
#[derive(Debug, Parser)]
#[command(
    name = "elko-chat",
    version,
    after_help = "Exit status: 0 left normally, 1 refused or closed by the cluster, \
                  2 usage, 3 connection problem."
)]
struct Args {
    /// The director's client address (host:port).
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
    /// When stdin is not a terminal: keep printing events this many seconds
    /// after its end, then leave.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    linger: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a duration ≥ 0"))
}

/// Why elko-chat stops with a non-zero status.
#[derive(Debug)]
enum Failure {
    Client(ClientError),
    Closed(CloseReason),
    Output(io::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Client(e) => e.fmt(f),
            Failure::Closed(reason) => write!(f, "the server ended the session: {reason}"),
            Failure::Output(e) => write!(f, "cannot write to stdout: {e}"),
        }
    }
}

impl Failure {
    fn status(&self) -> u8 {
        match self {
            Failure::Client(e) => match e {
                ClientError::Denied { .. }
                | ClientError::Server { .. }
                | ClientError::TooManyReEntries { .. } => STATUS_REFUSED,
                ClientError::Resolve { .. }
                | ClientError::InvalidId { .. }
                | ClientError::TooLarge { .. } => STATUS_USAGE,
                _ => STATUS_CONNECTION,
            },
            Failure::Closed(CloseReason::Server { .. }) => STATUS_REFUSED,
            Failure::Closed(_) | Failure::Output(_) => STATUS_CONNECTION,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("elko-chat: {failure}");
            ExitCode::from(failure.status())
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let client = Client::connect(args.director.as_str(), ClientOptions::default())?;
    let mut session = match (&args.context, &args.where_user) {
        (Some(context), _) => client.enter(&args.user, context)?,
        (None, Some(target)) => client.enter_where(&args.user, target)?,
        (None, None) => unreachable!("clap requires --context or --where-user"),
    };
    let mut out = io::stdout().lock();
    let snap = session.snapshot();
    writeln!(
        out,
        "entered {} as {} ({} members)",
        clean(&snap.context),
        clean(&args.user),
        snap.members.len()
    )?;
    for h in &snap.history {
        writeln!(out, "history {}: {}", clean(&h.from), clean(&h.text))?;
    }
    out.flush()?;

    let linger = if io::stdin().is_terminal() {
        Duration::ZERO
    } else {
        args.linger
    };
    let result = chat(&mut session, &mut out, &stdin_lines(), linger);
    if let Err(Failure::Client(e)) = &result {
        // The session ended under us: say so on stdout too.
        let _ = writeln!(out, "closed {e}");
        let _ = out.flush();
    }
    result?;
    session.exit()?;
    Ok(())
}

/// Send lines as they come and print events, until stdin has ended and
/// `linger` has passed, or the session ends.
fn chat(
    session: &mut Session,
    out: &mut impl Write,
    lines: &mpsc::Receiver<String>,
    linger: Duration,
) -> Result<(), Failure> {
    let mut leave_at: Option<Instant> = None;
    loop {
        let mut send_failed = None;
        loop {
            match lines.try_recv() {
                Ok(line) if line.is_empty() => {}
                Ok(line) => match session.say(&line) {
                    Ok(_) => {}
                    Err(e @ ClientError::TooLarge { .. }) => {
                        eprintln!("elko-chat: line not sent: {e}");
                    }
                    Err(e) => {
                        send_failed = Some(e);
                        break;
                    }
                },
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    leave_at.get_or_insert_with(|| Instant::now() + linger);
                    break;
                }
            }
        }
        if let Some(e) = send_failed {
            // The connection broke under the write; the server may have said
            // why before it closed, so prefer its reason if it is there.
            return match session.next_event(Some(Duration::ZERO)) {
                Ok(Some(Event::Closed { reason })) => {
                    print_event(
                        out,
                        &Event::Closed {
                            reason: reason.clone(),
                        },
                    )?;
                    Err(Failure::Closed(reason))
                }
                _ => Err(Failure::Client(e)),
            };
        }
        let wait = match leave_at {
            Some(t) => {
                let now = Instant::now();
                if now >= t {
                    return Ok(());
                }
                (t - now).min(POLL)
            }
            None => POLL,
        };
        match session.next_event(Some(wait))? {
            Some(Event::Closed { reason }) => {
                print_event(
                    out,
                    &Event::Closed {
                        reason: reason.clone(),
                    },
                )?;
                return Err(Failure::Closed(reason));
            }
            Some(event) => print_event(out, &event)?,
            None => {}
        }
    }
}

/// Lines of stdin, read on their own thread; the channel closes at EOF.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading stdin failed; treating it as its end");
                    return;
                }
            }
        }
    });
    rx
}

fn print_event(out: &mut impl Write, event: &Event) -> io::Result<()> {
    match event {
        Event::Said(s) => writeln!(out, "said {}: {}", clean(&s.from), clean(&s.text)),
        Event::Joined(user) => writeln!(out, "joined {}", clean(user)),
        Event::Left(user) => writeln!(out, "left {}", clean(user)),
        Event::App { op, body } if body.is_empty() => writeln!(out, "app {op}"),
        Event::App { op, body } => writeln!(out, "app {op} {}", hex(body)),
        Event::ReEntered { snapshot, .. } => {
            writeln!(out, "reentered {}", clean(&snapshot.context))
        }
        Event::Closed { reason } => writeln!(out, "closed {}", clean(&reason.to_string())),
    }?;
    out.flush()
}

/// `s` with control characters escaped, so that it prints on one line and
/// cannot drive the terminal.
fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            o.extend(c.escape_default());
        } else {
            o.push(c);
        }
    }
    Cow::Owned(o)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
