//! The one Envoy config rewrite of the repository: a shipped file (`envoy/envoy.yaml`,
//! `envoy/ext-authz.yaml`) with only its addresses substituted, structurally (whatever the file's
//! formatting). The end-to-end tests run it, the benchmark measures it, and `scripts/check-deploy`
//! validates it through the `render-envoy` binary, so all three see the same configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

/// Where Envoy's upstreams are.
#[derive(Clone, Copy, Debug)]
pub struct EnvoyOptions {
    /// Replaces the `registry` cluster's endpoint (`registry:5000` in the shipped file).
    pub registry_addr: SocketAddr,
    /// Replaces the `registry-gateway` cluster's endpoint (`gateway:50051`). Nothing needs to
    /// listen there: Envoy then fails manifest writes closed.
    pub gateway_addr: SocketAddr,
}

/// Why a file could not be rendered: it is unreadable, not YAML, or no longer has the shape the
/// harness relies on (the message names the file and what is missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderError(String);

impl RenderError {
    fn new(path: &Path, what: impl fmt::Display) -> RenderError {
        RenderError(format!("{}: {what}", path.display()))
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RenderError {}

/// The Envoy config at `path` with the admin and the one listener on `127.0.0.1:0` (Envoy picks
/// the ports), the `registry` cluster's endpoints on `options.registry_addr` and the
/// `registry-gateway` cluster's on `options.gateway_addr`. Nothing else changes.
///
/// # Errors
/// The file is unreadable or not YAML, has no `admin.address.socket_address`, not exactly one
/// listener with `address.socket_address`, or lacks either cluster or its endpoint addresses.
pub fn render_envoy_config(path: &Path, options: &EnvoyOptions) -> Result<Value, RenderError> {
    let text = std::fs::read_to_string(path).map_err(|e| RenderError::new(path, e))?;
    let mut config: Value = serde_saphyr::from_str(&text)
        .map_err(|e| RenderError::new(path, format!("not valid YAML: {e}")))?;
    let loopback_any = json!({ "address": "127.0.0.1", "port_value": 0 });

    *config
        .pointer_mut("/admin/address/socket_address")
        .ok_or_else(|| RenderError::new(path, "no admin.address.socket_address"))? =
        loopback_any.clone();

    let listeners = config
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| RenderError::new(path, "no static_resources.listeners"))?;
    if listeners.len() != 1 {
        return Err(RenderError::new(
            path,
            "the harness expects exactly one listener (the registry front door)",
        ));
    }
    *listeners[0]
        .pointer_mut("/address/socket_address")
        .ok_or_else(|| RenderError::new(path, "listener without address.socket_address"))? =
        loopback_any;

    let clusters = config
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| RenderError::new(path, "no static_resources.clusters"))?;
    for (name, addr) in [
        ("registry", options.registry_addr),
        ("registry-gateway", options.gateway_addr),
    ] {
        let cluster = clusters
            .iter_mut()
            .find(|c| c["name"] == name)
            .ok_or_else(|| RenderError::new(path, format!("no cluster named {name:?}")))?;
        if set_endpoints(cluster, addr) == 0 {
            return Err(RenderError::new(
                path,
                format!("cluster {name:?} has no load_assignment endpoint address"),
            ));
        }
    }
    Ok(config)
}

/// Removes `typed_per_filter_config` from the route named `route` where it enables ext_proc, so
/// that route no longer calls a processor (the filter stays in the chain, `disabled: true`):
/// the benchmark's "Envoy alone". Returns how many routes changed; the benchmark insists on one.
pub fn disable_route_ext_proc(config: &mut Value, route: &str) -> usize {
    match config {
        Value::Object(map) => {
            let here = map.get("name").and_then(Value::as_str) == Some(route)
                && map
                    .get("typed_per_filter_config")
                    .and_then(|c| c.get("envoy.filters.http.ext_proc"))
                    .is_some();
            if here {
                map.remove("typed_per_filter_config");
                return 1;
            }
            map.values_mut()
                .map(|v| disable_route_ext_proc(v, route))
                .sum()
        }
        Value::Array(items) => items
            .iter_mut()
            .map(|v| disable_route_ext_proc(v, route))
            .sum(),
        _ => 0,
    }
}

/// Points every `load_assignment.endpoints[].lb_endpoints[].endpoint.address.socket_address` of
/// `cluster` at `addr`; returns how many were replaced.
fn set_endpoints(cluster: &mut Value, addr: SocketAddr) -> usize {
    let Some(endpoints) = cluster
        .pointer_mut("/load_assignment/endpoints")
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let mut replaced = 0;
    for locality in endpoints {
        let lb_endpoints = locality
            .get_mut("lb_endpoints")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten();
        for lb in lb_endpoints {
            if let Some(socket) = lb.pointer_mut("/endpoint/address/socket_address") {
                *socket = json!({ "address": addr.ip().to_string(), "port_value": addr.port() });
                replaced += 1;
            }
        }
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo_root;

    fn options() -> EnvoyOptions {
        EnvoyOptions {
            registry_addr: "127.0.0.1:5000".parse().expect("address"),
            gateway_addr: "127.0.0.1:50051".parse().expect("address"),
        }
    }

    #[test]
    fn both_shipped_files_render_with_loopback_addresses() {
        for file in ["envoy/envoy.yaml", "envoy/ext-authz.yaml"] {
            let config = render_envoy_config(&repo_root().join(file), &options())
                .unwrap_or_else(|e| panic!("{e}"));
            let text = config.to_string();
            assert!(!text.contains(r#""address":"registry""#), "{file}");
            assert!(!text.contains(r#""address":"gateway""#), "{file}");
            assert_eq!(
                config["admin"]["address"]["socket_address"]["port_value"], 0,
                "{file}"
            );
        }
    }

    #[test]
    fn a_file_without_the_clusters_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("envoy.yaml");
        std::fs::write(
            &path,
            "admin: {address: {socket_address: {address: 0.0.0.0, port_value: 9901}}}\n\
             static_resources:\n  listeners: [{address: {socket_address: {address: 0.0.0.0, port_value: 5000}}}]\n  clusters: []\n",
        )
        .expect("temp dir is writable");
        let err = render_envoy_config(&path, &options()).expect_err("no clusters");
        assert!(
            err.to_string().contains("no cluster named \"registry\""),
            "{err}"
        );
    }

    #[test]
    fn disabling_the_manifest_route_changes_exactly_one_route() {
        let mut config = render_envoy_config(&repo_root().join("envoy/envoy.yaml"), &options())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(disable_route_ext_proc(&mut config, "manifest-write"), 1);
        assert_eq!(disable_route_ext_proc(&mut config, "manifest-write"), 0);
    }
}
