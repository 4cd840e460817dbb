//! The operator's HTTP endpoint of `elko-director` and `elko-contextd`:
//! metrics for Prometheus, state as JSON, and commands.
//!
//! Blocking threads outside the event loops (tiny_http's, which accept and
//! read requests, and one of ours that answers them one at a time): a scrape
//! never costs a loop a pass, and a slow or hostile admin client cannot
//! stall client traffic. Each handler call gets a parsed [`Request`] and
//! returns a [`Response`].
//! Commands that change state (`POST`) are accepted only from a loopback
//! peer: whoever can reach the port may read metrics, but draining a server
//! takes a shell on the host.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the serving thread looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Largest request body read (commands carry their arguments in the query).
const MAX_BODY: u64 = 4096;

/// HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// One admin request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without the query (`/metrics`).
    pub path: String,
    /// Query parameters, percent-decoded; the last of a repeated key wins.
    pub query: BTreeMap<String, String>,
    /// The peer's address, if the socket reported one.
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// Parse a method and a request target (`/path?a=1&b=x%20y`).
    pub fn parse(method: Method, target: &str, peer: Option<SocketAddr>) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method,
            path: path.to_string(),
            query: form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
            peer,
        }
    }

    /// True if the peer is on this host (a loopback address).
    pub fn from_loopback(&self) -> bool {
        self.peer.is_some_and(|p| p.ip().is_loopback())
    }
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// Plain text (`text/plain`), with a trailing newline added if missing.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    /// A JSON document.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn prometheus(body: String) -> Response {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body,
        }
    }

    /// 404 naming the endpoints there are.
    pub fn not_found(req: &Request, endpoints: &str) -> Response {
        Response::text(
            404,
            format!(
                "no endpoint {} {}; endpoints: {endpoints}",
                method_name(req.method),
                req.path
            ),
        )
    }

    /// 405 for a known path asked with the wrong method.
    pub fn wrong_method(req: &Request, allowed: &str) -> Response {
        Response::text(
            405,
            format!(
                "{} takes {allowed}, not {}",
                req.path,
                method_name(req.method)
            ),
        )
    }

    /// 403 for a command from a peer that is not on this host.
    pub fn loopback_only(req: &Request) -> Response {
        Response::text(
            403,
            format!(
                "{} {} is accepted only from this host (a loopback address); peer {}",
                method_name(req.method),
                req.path,
                req.peer.map_or("unknown".to_string(), |p| p.to_string())
            ),
        )
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Other => "(other method)",
    }
}

/// The running endpoint. Dropping it stops the thread.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Listen on `addr` (port 0 picks one) and serve every request with
    /// `handler` on a thread named `name`.
    pub fn start<F>(addr: SocketAddr, name: &str, mut handler: F) -> io::Result<AdminServer>
    where
        F: FnMut(&Request) -> Response + Send + 'static,
    {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match server.recv_timeout(STOP_POLL) {
                        Ok(Some(req)) => serve(req, &mut handler),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "admin endpoint: receive failed");
                            std::thread::sleep(STOP_POLL);
                        }
                    }
                }
            })?;
        Ok(AdminServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve<F: FnMut(&Request) -> Response>(mut req: tiny_http::Request, handler: &mut F) {
    let method = match req.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => Method::Get,
        tiny_http::Method::Post => Method::Post,
        _ => Method::Other,
    };
    // Drain a (small) body so the connection can be reused; commands carry
    // their arguments in the query.
    let _ = io::copy(
        &mut io::Read::take(req.as_reader(), MAX_BODY),
        &mut io::sink(),
    );
    let parsed = Request::parse(method, req.url(), req.remote_addr().copied());
    let resp = handler(&parsed);
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], resp.content_type.as_bytes())
        .expect("a static, valid header");
    let out = tiny_http::Response::from_string(resp.body)
        .with_status_code(resp.status)
        .with_header(header);
    if let Err(e) = req.respond(out) {
        tracing::debug!(error = %e, "admin endpoint: response not delivered");
    }
}

/// A Prometheus label value, escaped (backslash, double quote, newline).
pub fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A minimal blocking HTTP/1.0 client for tests and tools: one request,
/// the status and body back (5 s to connect, and per read).
pub fn http_request(addr: SocketAddr, method: &str, target: &str) -> io::Result<(u16, String)> {
    http_request_within(addr, method, target, Duration::from_secs(5))
}

/// [`http_request`] with `timeout` to connect, and for each write and read.
pub fn http_request_within(
    addr: SocketAddr,
    method: &str,
    target: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line in {head:?}"),
            )
        })?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_into_path_and_decoded_query() {
        let r = Request::parse(
            Method::Post,
            "/drain?provider=cd%201&x=&provider=cd-2",
            None,
        );
        assert_eq!(r.path, "/drain");
        assert_eq!(r.query.get("provider").map(String::as_str), Some("cd-2"));
        assert_eq!(r.query.get("x").map(String::as_str), Some(""));
        let r = Request::parse(Method::Get, "/metrics", None);
        assert_eq!(r.path, "/metrics");
        assert!(r.query.is_empty());
        assert!(!r.from_loopback());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("cd-1"), "cd-1");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn serves_requests_and_refuses_what_it_does_not_know() {
        let server = AdminServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            "admin-test",
            |req| match (req.method, req.path.as_str()) {
                (Method::Get, "/hello") => {
                    Response::text(200, format!("hi {:?}", req.query.get("who")))
                }
                (Method::Post, "/cmd") if !req.from_loopback() => Response::loopback_only(req),
                (Method::Post, "/cmd") => Response::json(200, "{\"ok\":true}".into()),
                (_, "/cmd") => Response::wrong_method(req, "POST"),
                _ => Response::not_found(req, "GET /hello, POST /cmd"),
            },
        )
        .expect("admin server starts");
        let addr = server.local_addr();
        assert_eq!(
            http_request(addr, "GET", "/hello?who=op%21").expect("GET"),
            (200, "hi Some(\"op!\")\n".to_string())
        );
        assert_eq!(
            http_request(addr, "POST", "/cmd").expect("POST"),
            (200, "{\"ok\":true}".to_string())
        );
        let (status, body) = http_request(addr, "GET", "/cmd").expect("GET /cmd");
        assert_eq!(status, 405, "{body}");
        let (status, body) = http_request(addr, "GET", "/nope").expect("GET /nope");
        assert_eq!(status, 404);
        assert!(body.contains("endpoints: GET /hello"), "{body}");
        drop(server);
        assert!(
            http_request(addr, "GET", "/hello").is_err(),
            "stopped with its owner"
        );
    }
}
