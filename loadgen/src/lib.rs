//! `elko-loadgen`: the 2002 chat benchmark, reproduced and pushed further,
//! measured honestly (open loop, coordinated-omission-corrected latency,
//! every delivery accounted, server and generator CPU side by side), against
//! Elko and, on the same workload, Redis pub/sub and NATS.
//!
//! The pieces: [`scenario`] (knobs and presets), [`schedule`] (Poisson
//! utterance times), [`payload`] (what an utterance carries), [`driver`]
//! (Elko clients on the engine), [`fanout`] (first copy and fanout
//! spread per utterance), [`peer`] (Redis and NATS clients on raw
//! mio loops), [`metrics`] (per-loop counters and histograms),
//! [`generator`] (loops in this process or in worker processes), [`run`]
//! (the controller), [`stepper`] (the `max` preset's rate search),
//! [`plan`] (what a run needs from this machine, checked before it starts),
//! [`procs`] (server processes and /proc), [`report`],
//! [`hlog`] (HdrHistogram interval logs) and [`threshold`].

pub mod clock;
pub mod driver;
pub mod fanout;
pub mod generator;
pub mod hlog;
pub mod metrics;
pub mod payload;
pub mod peer;
pub mod plan;
pub mod procs;
pub mod repeat;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stepper;
pub mod threshold;
