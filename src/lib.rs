//! histor: who changed what in a Kubernetes cluster, when, and exactly how.
//!
//! Data flows one way: [`capture`] receives AdmissionReviews, [`pipeline`] turns them into clean
//! [`pipeline::ChangeEvent`]s, [`store`] keeps them, [`query`] serves them to whoever cluster
//! RBAC lets see them; [`usage`] turns audit events into API usage reports; [`cmd`] wires the
//! parts into the binary's subcommands. [`crd`] holds the custom resource types.
#![forbid(unsafe_code)]

pub mod capture;
pub mod certs;
pub mod cli;
pub mod cmd;
pub mod controller;
pub mod crd;
pub mod events;
pub mod index;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod query;
pub mod render;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod witness;

mod error;
pub use error::{Error, Result};
