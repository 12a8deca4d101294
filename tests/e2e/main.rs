//! The end-to-end tests, one binary: real distribution, Envoy 1.40 and the `registry-gateway`
//! binary on loopback, driven through `registry-gateway-testkit` (`crates/testkit`). One module
//! per concern; a new scenario is a new `#[tokio::test]` in the module it belongs to, or a new
//! module declared here, using the kit's [`support::Stack`] and friends (CONTRIBUTING.md).

use registry_gateway_testkit as support;

/// No bypass, no lockout, no leak (probes through Envoy in both modes).
mod bypass;
/// docker, podman and buildah pushing through the stack: what each shows when refused.
mod clients;
/// Exact tag limits under concurrent pushes.
mod concurrency;
/// The shipped Envoy config alone, with a recording stand-in processor.
mod envoy;
/// ext_authz mode against ext_proc mode: one table, the same answers.
mod ext_authz;
/// Processes killed and restarted, configurations rewritten, during pushes.
mod faults;
/// The shipped Envoy config under load, against slow clients and request trailers.
mod hardening;
/// dry-run, warn and warn_at through both filter modes.
mod rollout;
/// Replicas sharing their tag books in a real Redis.
mod shared;
/// The sidecar behind Envoy: limits, manifests, auth flows, reload, shutdown.
mod sidecar;
