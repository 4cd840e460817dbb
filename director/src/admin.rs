//! The director's operator endpoint (`--admin-listen`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: the directory (providers, contexts, users, enters, redirects, denials by code, activations, lost providers; per provider its load, users, connections, busiest loop, capacity, draining), the event loop's counters, and the process's CPU time, memory, descriptors and threads (the standard `process_*` names) |
//! | `GET /providers` | JSON: every registered context server as the directory sees it |
//! | `POST /drain?provider=ID` | send `Drain` to that context server and place nothing more on it (loopback peers only) |
//! | `GET /health` | `ok` while the event loop answers |
//!
//! The directory lives on the event loop's thread; the endpoint's thread asks
//! it by mailbox ([`AdminMail`]) and waits at most [`LOOP_ANSWER`] for the
//! answer, so a scrape sees one consistent moment of the directory.

use crate::directory::{ProviderView, Summary};
use elko_cluster::admin::{label_value, Method, Request, Response};
use elko_engine::{write_metric_family, LoopStats, Poster};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How long the endpoint waits for the event loop to answer.
pub const LOOP_ANSWER: Duration = Duration::from_secs(2);

const ENDPOINTS: &str = "GET /metrics, GET /providers, POST /drain?provider=ID, GET /health";

/// A question from the admin thread to the event loop.
#[derive(Debug)]
pub enum AdminMail {
    /// The directory's size, counters and providers.
    State(mpsc::Sender<(Summary, Vec<ProviderView>)>),
    /// Drain a provider; answers whether it was registered.
    Drain(String, mpsc::Sender<bool>),
}

/// The request handler for [`elko_cluster::admin::AdminServer`].
pub fn handler(
    poster: Poster<AdminMail>,
    loops: Vec<Arc<LoopStats>>,
) -> impl FnMut(&Request) -> Response + Send + 'static {
    move |req| match (req.method, req.path.as_str()) {
        (Method::Get, "/metrics") => match state(&poster) {
            Ok((summary, providers)) => {
                let mut out = render_metrics(&summary, &providers);
                elko_engine::write_prometheus(&mut out, "elko_director", &loops);
                elko_engine::write_process_metrics(&mut out);
                Response::prometheus(out)
            }
            Err(r) => r,
        },
        (Method::Get, "/providers") => match state(&poster) {
            Ok((_, providers)) => Response::json(200, render_providers(&providers)),
            Err(r) => r,
        },
        (Method::Get, "/health") => match state(&poster) {
            Ok(_) => Response::text(200, "ok"),
            Err(r) => r,
        },
        (Method::Post, "/drain") if !req.from_loopback() => Response::loopback_only(req),
        (Method::Post, "/drain") => {
            let Some(id) = req.query.get("provider").filter(|p| !p.is_empty()) else {
                return Response::text(400, "POST /drain needs ?provider=ID (see GET /providers)");
            };
            let (tx, rx) = mpsc::channel();
            if poster.post(0, AdminMail::Drain(id.clone(), tx)).is_err() {
                return loop_unavailable();
            }
            match rx.recv_timeout(LOOP_ANSWER) {
                Ok(true) => {
                    tracing::info!(provider = %id, "drain ordered by the admin endpoint");
                    Response::text(200, format!("draining {id}: it takes no new activations and sends its clients back through the director"))
                }
                Ok(false) => Response::text(
                    404,
                    format!("no context server {id:?} is registered (see GET /providers)"),
                ),
                Err(_) => loop_unavailable(),
            }
        }
        (_, "/metrics" | "/providers" | "/health") => Response::wrong_method(req, "GET"),
        (_, "/drain") => Response::wrong_method(req, "POST"),
        _ => Response::not_found(req, ENDPOINTS),
    }
}

fn loop_unavailable() -> Response {
    Response::text(
        503,
        "the director's event loop did not answer (stopping or overloaded)",
    )
}

fn state(poster: &Poster<AdminMail>) -> Result<(Summary, Vec<ProviderView>), Response> {
    let (tx, rx) = mpsc::channel();
    poster
        .post(0, AdminMail::State(tx))
        .map_err(|_| loop_unavailable())?;
    rx.recv_timeout(LOOP_ANSWER).map_err(|_| loop_unavailable())
}

/// The directory's metrics in the Prometheus text format.
pub fn render_metrics(s: &Summary, providers: &[ProviderView]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let name = format!("elko_director_{name}");
        write_metric_family(&mut out, &name, kind, help, samples.iter().cloned());
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    family(
        "providers",
        "gauge",
        "Context servers registered.",
        &one(s.providers as u64),
    );
    family(
        "contexts_active",
        "gauge",
        "Contexts active on some context server.",
        &one(s.contexts_active as u64),
    );
    family(
        "contexts_activating",
        "gauge",
        "Activations ordered and not yet confirmed.",
        &one(s.contexts_activating as u64),
    );
    family(
        "users",
        "gauge",
        "Users the context servers report present.",
        &one(s.users as u64),
    );
    family(
        "enters_total",
        "counter",
        "Enter requests (by context and by user).",
        &one(s.stats.enters),
    );
    family(
        "redirects_total",
        "counter",
        "Enter requests answered with a Redirect.",
        &one(s.stats.redirects),
    );
    family(
        "activations_total",
        "counter",
        "Activate commands sent.",
        &one(s.stats.activations),
    );
    family(
        "providers_lost_total",
        "counter",
        "Context servers declared dead.",
        &one(s.stats.providers_lost),
    );
    let denials: Vec<(String, f64)> = s
        .stats
        .denials
        .iter()
        .map(|(code, n)| {
            let name = elko_protocol::ErrorCode(*code).name().unwrap_or("unknown");
            (format!("{{code=\"{name}\"}}"), *n as f64)
        })
        .collect();
    family(
        "denied_total",
        "counter",
        "Enter requests answered with Denied, by code.",
        &denials,
    );
    let per = |f: fn(&ProviderView) -> f64| -> Vec<(String, f64)> {
        providers
            .iter()
            .map(|p| (format!("{{provider=\"{}\"}}", label_value(&p.id)), f(p)))
            .collect()
    };
    family(
        "provider_load",
        "gauge",
        "Load used for placement (contexts plus fresh activations).",
        &per(|p| p.load as f64),
    );
    family(
        "provider_activating",
        "gauge",
        "Activations ordered on the context server, unanswered.",
        &per(|p| p.activating as f64),
    );
    family(
        "provider_users",
        "gauge",
        "Users present, from the last load report.",
        &per(|p| p.users as f64),
    );
    family(
        "provider_connections",
        "gauge",
        "Client connections, from the last load report.",
        &per(|p| p.connections as f64),
    );
    family(
        "provider_busy_ratio_max",
        "gauge",
        "Busiest event loop's busy share, from the last load report.",
        &per(|p| f64::from(p.busy_permille_max) / 1000.0),
    );
    family(
        "provider_capacity",
        "gauge",
        "Contexts the context server accepts (0: no limit).",
        &per(|p| f64::from(p.capacity)),
    );
    family(
        "provider_draining",
        "gauge",
        "1 while the context server is draining.",
        &per(|p| if p.draining { 1.0 } else { 0.0 }),
    );
    family(
        "provider_refusing",
        "gauge",
        "1 while the context server is skipped for refusing an activation (NO_CAPACITY).",
        &per(|p| if p.refusing { 1.0 } else { 0.0 }),
    );
    out
}

/// Every provider as a JSON array.
pub fn render_providers(providers: &[ProviderView]) -> String {
    let list: Vec<serde_json::Value> = providers
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p.id,
                "epoch": p.epoch,
                "client_addr": p.client_addr,
                "workers": p.workers,
                "capacity": p.capacity,
                "draining": p.draining,
                "refusing": p.refusing,
                "load": p.load,
                "activating": p.activating,
                "users": p.users,
                "connections": p.connections,
                "busy_permille_max": p.busy_permille_max,
                "last_report_seq": p.last_seq,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::DirectoryStats;

    fn view(id: &str, draining: bool) -> ProviderView {
        ProviderView {
            id: id.into(),
            epoch: 7,
            client_addr: "127.0.0.1:7800".into(),
            workers: 2,
            capacity: 0,
            draining,
            refusing: false,
            load: 12,
            activating: 1,
            users: 40,
            connections: 41,
            busy_permille_max: 250,
            last_seq: Some(3),
        }
    }

    #[test]
    fn metrics_carry_the_directory_and_each_provider() {
        let mut stats = DirectoryStats {
            enters: 10,
            redirects: 8,
            activations: 2,
            ..DirectoryStats::default()
        };
        stats
            .denials
            .insert(elko_protocol::ErrorCode::NO_CAPACITY.0, 2);
        let s = Summary {
            providers: 2,
            contexts_active: 3,
            contexts_activating: 1,
            users: 40,
            stats,
        };
        let text = render_metrics(&s, &[view("cd-a", false), view("cd\"b", true)]);
        for line in [
            "elko_director_providers 2",
            "elko_director_enters_total 10",
            "elko_director_denied_total{code=\"NO_CAPACITY\"} 2",
            "elko_director_provider_users{provider=\"cd-a\"} 40",
            "elko_director_provider_busy_ratio_max{provider=\"cd-a\"} 0.25",
            "elko_director_provider_draining{provider=\"cd\\\"b\"} 1",
            "# TYPE elko_director_redirects_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn providers_are_a_json_array() {
        let json = render_providers(&[view("cd-a", true)]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v[0]["id"], "cd-a");
        assert_eq!(v[0]["draining"], true);
        assert_eq!(v[0]["last_report_seq"], 3);
    }
}
