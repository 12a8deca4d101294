//! registry-gateway: push limits for any OCI registry, decided for Envoy.
//!
//! Envoy fronts the registry and asks this service about every manifest write (ext_proc, or
//! ext_authz in a mesh). Blob uploads never reach it. The crate is a pure policy core with thin
//! adapters around it; dependencies point inward (adapters → `check` → `policy`).
//!
//! - [`policy`]: the pure core, the `registry-gateway-policy` crate (`crates/policy`).
//!   Configuration shapes and validation, sizes, rules, manifest measurement, tag books with
//!   reservations, decisions, and every message a client reads. No I/O: its manifest lists
//!   parsing crates only.
//! - [`config`]: reads a configuration path (file or ConfigMap directory) into texts.
//! - [`reload`]: watches the configuration's directory and swaps policy snapshots.
//! - [`check`]: the request path. Evaluates, fetches tags through a [`check::TagSource`],
//!   decides and reserves, settles reservations from the registry's answer.
//! - [`registry`]: the tag-list client (pagination, Basic and Bearer auth, deadlines).
//! - [`extproc`], [`extauthz`]: the Envoy adapters.
//! - [`preflight`]: the `registry_gateway.v1.Policy` API: explain and evaluate without pushing.
//! - [`respond`]: the one table from outcomes to HTTP status, OCI code and gRPC code.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/status`.
//! - [`metrics`]: metric handles with bounded labels.
//! - [`cli`], [`commands`]: the command line, `check-config` and `explain`.
//! - [`audit`]: `audit`, a configuration applied to the registry as it stands.
//! - [`telemetry`]: log output.
//! - [`app`]: wiring for `serve`: load, bind, serve, drain.

pub mod admin;
pub mod app;
pub mod audit;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod extauthz;
pub mod extproc;
pub mod metrics;
pub use registry_gateway_policy as policy;
pub mod preflight;
pub mod registry;
pub mod reload;
pub mod respond;
pub mod shared;
pub mod snapshot;
pub mod telemetry;
