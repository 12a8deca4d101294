//! registry-gateway: push limits for any OCI registry, decided for Envoy.
//!
//! Envoy fronts the registry and asks this service about every manifest write (ext_proc, or
//! ext_authz in a mesh). Blob uploads never reach it. The crate is a pure policy core with thin
//! adapters around it; dependencies point inward.
//!
//! - [`policy`]: pure core. Configuration shapes and validation, sizes, rules, manifest
//!   measurement, tag bookkeeping with reservations, decisions. No I/O.
pub mod policy;
pub mod config;
pub mod check;
pub mod metrics;
pub mod cli;
pub mod commands;
pub mod reload;
