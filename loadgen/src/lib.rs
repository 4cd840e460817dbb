//! `elko-loadgen`: the 2002 chat benchmark, reproduced and pushed further,
//! measured honestly (open loop, coordinated-omission-corrected latency,
//! every delivery accounted, server and generator CPU side by side).

pub mod driver;
pub mod metrics;
pub mod procs;
pub mod report;
pub mod run;
pub mod scenario;
pub mod threshold;
