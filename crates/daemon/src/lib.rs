//! blockvault-daemon: the gRPC control plane (`blockvaultd`).
//!
//! ```text
//! gRPC (tonic) --auth interceptor--> api (messages <-> rows) --spawn_blocking--> control
//!   control: volumes, backups, jobs; rules of the Cinder Backups API; job scheduler;
//!            rows in the control RocksDB (<data_dir>/control)
//!   jobs (one thread each) --> blockvault-engine (backup / restore) --> chunk store
//! ```
//! The data plane is the same library the `blockvault local` CLI uses; the daemon adds names,
//! projects, statuses, queued jobs and the network API around it.
pub mod adopt;
pub mod api;
pub mod auth;
pub mod config;
pub mod control;
pub mod export;
pub mod hostpath;
pub mod lockjob;
pub mod model;
pub mod objectlock;
pub mod page;
pub mod policy;
pub mod server;
pub mod usage;
pub mod vault;
pub mod verify;

pub use config::Config;
pub use server::{start, Daemon, Running};
