//! netward: Kubernetes NetworkPolicy enforcement with eBPF.
//!
//! Data flow, one direction:
//!
//! ```text
//! source (manifests | Kubernetes watch) -> model -> compiler -> Plan -> map sync -> datapath
//!                                                       |                              |
//!                                            evaluators, CLI                 events, counters
//! ```
//!
//! * [`source`]: reads k8s-openapi objects and validates them into the [`model`].
//! * [`compiler`]: pure function `model + node -> Plan` (no I/O).
//! * [`eval`]: two independent evaluators, `spec` (reads the model) and `plan` (does the
//!   lookups the eBPF program does on the Plan); differential tests keep them equal.
//! * [`lint`]: pitfalls users hit when writing policies.
//! * [`cli`]: the `netward` command.
//! * [`k8s`]: kube-rs watchers of the API server feeding the agent.
//! * [`agent`]: the per-node daemon (control loop, metrics, status/monitor socket).
//! * [`testkit`]: concise construction of clusters for tests.
//! * [`synth`]: synthetic clusters for benchmarks and property tests.
//! * [`cpustat`]: how much of a benchmark run the hypervisor gave to other guests.
pub mod agent;
pub mod cli;
pub mod compiler;
pub mod cpustat;
pub mod datapath;
pub mod eval;
pub mod k8s;
pub mod lab;
pub mod lint;
pub mod model;
pub mod plan;
pub mod source;
pub mod synth;
pub mod testkit;
