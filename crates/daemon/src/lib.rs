//! blockvault-daemon: the gRPC control plane (`blockvaultd`).
//!
//! ```text
//! gRPC (tonic) --auth interceptor--> api (messages <-> rows) --spawn_blocking--> control
//!   control: one view per resource (volumes, backups, jobs, vaults, policies) over the
//!            rows (state: memory + the control RocksDB in <data_dir>/control), the vault
//!            ledger (usage) and the scheduler (jobs); errors are error::Error
//!   jobs (one thread each) --> blockvault-engine (backup / restore) --> chunk store
//! ```
//! The data plane is the same library the `blockvault local` CLI uses; the daemon adds names,
//! projects, statuses, queued jobs and the network API around it.
pub mod adopt;
pub mod api;
pub mod auth;
pub mod backups;
pub mod check;
pub mod cinder;
pub mod config;
pub mod control;
pub mod error;
pub mod export;
pub mod grpc_metrics;
pub mod hostpath;
pub mod jobs;
pub mod lockjob;
pub mod metrics;
pub mod model;
pub mod objectlock;
pub mod page;
pub mod policy;
pub mod runner;
pub mod scrape;
pub mod server;
pub mod state;
pub mod usage;
pub mod vault;
pub mod verify;
pub mod volumes;

pub use config::Config;
pub use server::{start, Daemon, Running};
