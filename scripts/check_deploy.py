#!/usr/bin/env python3
"""The checks behind scripts/check-deploy (run that script, which installs the tools first).

Validates every shipped deployment file without a Docker engine or a cluster:
  - Envoy: `envoy --mode validate` on envoy/*.yaml (as shipped, and as the end-to-end tests run
    them: rendered by the test kit's own rewrite, the `render-envoy` binary), the in-pod copies
    of deploy/kubernetes, and bootstraps assembled from the Envoy fragments of envoy/istio/*.yaml;
    the copies and the ext_authz variant must not drift from envoy/envoy.yaml; the knobs the
    design relies on; the hardening (circuit breakers sized on the connection ceiling, deadlines
    on the manifest routes only, HTTP/2 limits, the overload manager on the heap).
  - docker-compose.yml: `docker-compose config` passes; Envoy mounts envoy/envoy.yaml itself;
    the sidecar's config is a file inside a mounted directory; host names match envoy.yaml.
  - docker-compose.yml `ha` profile: one Valkey/Redis 7+, two gateway+Envoy pairs with the same
    `--state redis://<store>`, each Envoy on its own port reaching its own sidecar; the default
    profile stays one pair in memory mode.
  - Kubernetes: `kubectl kustomize` of the base, the Harbor, Valkey and mesh overlays render,
    parse, and name what they must (containers, probes, resources, non-root,
    ConfigMap, Secret); the sidecar's gRPC port on loopback (overlays/mesh: open to named
    namespaces only) and the NetworkPolicies; Envoy's heap budget within its memory limit; high
    availability: replicas >= 3, RollingUpdate with maxUnavailable 0, a
    PodDisruptionBudget selecting the pods, topology spread over nodes and zones, the termination
    timeline (Envoy drains, the sidecar outlives it, the grace period covers both), the state URL
    from Secret registry-gateway-state with no password in it or in the pod spec; the Valkey
    overlay's one-pod StatefulSet, its Service named by the state URL, its password from the same
    Secret.
  - Istio: the providers, the CUSTOM policies' rules (every PUT/DELETE, POST /api/*), partial
    bodies within the buffer, the patches, the ambient waypoint; live Envoy probes (no 413 on
    blob PUTs; the ext_proc matcher runs for the right requests only).
  - Envoy Gateway: envoy/gateway-api renders; extProc Buffered on the write routes only, route
    regexes, escaped slashes rejected, a route buffer of at least 5 MiB, no timeout on the rest.
  - Every ext_proc config forwards only the headers the sidecar reads, never `cookie`.
Every failure is printed; the exit status is 1 if there was any.

Needs PyYAML. Tools come from the environment: ENVOY_BIN, DOCKER_COMPOSE_BIN, KUBECTL_BIN, and
optionally REGISTRY_GATEWAY_BIN (a built sidecar, for `check-config` on the shipped limits).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FAILURES: list[str] = []
MIB5 = 5 * 1024 * 1024
MIB1 = 1024 * 1024
SIDECAR_GRPC_PORT = 50051
SIDECAR_ADMIN_PORT = 9091


# --- helpers -------------------------------------------------------------------------------------


def step(title: str) -> None:
    print(f"\n--> {title}", flush=True)


def ok(what: str) -> None:
    print(f"    ok: {what}", flush=True)


def fail(what: str) -> None:
    FAILURES.append(what)
    print(f"    FAIL: {what}", flush=True)


def check(cond: bool, what: str) -> bool:
    if cond:
        ok(what)
    else:
        fail(what)
    return cond


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all(text: str) -> list:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def run(cmd: list[str], what: str, cwd: Path = ROOT, timeout: int = 120) -> str | None:
    """Runs a command; returns stdout, or records a failure with its output and returns None."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        fail(f"{what}: could not run {cmd[0]}: {e}")
        return None
    if proc.returncode != 0:
        out = (proc.stderr + proc.stdout).strip()
        fail(f"{what}: `{' '.join(cmd)}` exited {proc.returncode}\n{indent(out)}")
        return None
    return proc.stdout


def indent(text: str, lines: int = 40) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join("        " + line for line in kept)


def tool(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        print(f"check_deploy: {name} is not set (run scripts/check-deploy, which sets it)", file=sys.stderr)
        sys.exit(2)
    return value


def envoy_validate(config: dict | Path, what: str) -> None:
    """`envoy --mode validate` on a file or on an in-memory config (written as JSON)."""
    envoy = tool("ENVOY_BIN")
    if isinstance(config, Path):
        out = run([envoy, "--mode", "validate", "--log-level", "warn", "-c", str(config)], f"envoy validate {what}")
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(config, f)
            path = f.name
        try:
            out = run([envoy, "--mode", "validate", "--log-level", "warn", "-c", path], f"envoy validate {what}")
        finally:
            os.unlink(path)
    if out is not None:
        ok(f"envoy --mode validate: {what}")


def envoy_probe(config: dict, requests: list[tuple[str, str, int, bool]], what: str) -> list[str] | None:
    """Runs Envoy on `config` (its first listener moved to 127.0.0.1:0, admin on loopback) and sends
    each (method, path, body bytes, chunked) with curl; returns the HTTP statuses, or None (with a
    failure recorded) when Envoy does not start. Upstreams need not exist: what is probed is
    Envoy's own answer."""
    envoy = tool("ENVOY_BIN")
    curl = shutil.which("curl")
    if not curl:
        print(f"    skip: {what} (no curl on this machine)")
        return None
    c = copy.deepcopy(config)
    c["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    c["static_resources"]["listeners"][0]["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, admin_path, body = Path(tmp, "envoy.json"), Path(tmp, "admin"), Path(tmp, "body")
        cfg.write_text(json.dumps(c), encoding="utf-8")
        proc = subprocess.Popen([envoy, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1",
                                 "--log-level", "warn", "--admin-address-path", str(admin_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            deadline = time.monotonic() + 20
            while port is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                if not admin_path.exists() or not admin_path.read_text().strip():
                    continue
                try:
                    with urllib.request.urlopen(f"http://{admin_path.read_text().strip()}/listeners?format=json", timeout=2) as r:
                        listeners = json.load(r).get("listener_statuses", [])
                    port = dig(listeners, 0, "local_address", "socket_address", "port_value")
                except OSError:
                    pass
            if port is None:
                err = proc.stderr.read() if proc.poll() is not None else ""
                fail(f"{what}: Envoy did not start\n{indent(err)}")
                return None
            statuses = []
            for method, path, size, chunked in requests:
                with open(body, "wb") as f:
                    f.write(os.urandom(size))
                cmd = [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", "-X", method,
                       "-H", "content-type: application/octet-stream", "--data-binary", f"@{body}"]
                if chunked:
                    cmd += ["-H", "transfer-encoding: chunked"]
                out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
                statuses.append(out.stdout.strip() or "000")
            return statuses
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def dig(obj, *keys, default=None):
    for key in keys:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


def diff_paths(a, b, path: str = "") -> list[str]:
    """Where two parsed YAML trees differ (at most a handful, for the message)."""
    if type(a) is not type(b):
        return [f"{path or '/'}: {a!r} != {b!r}"]
    if isinstance(a, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a:
                out.append(f"{path}/{key}: only in the second")
            elif key not in b:
                out.append(f"{path}/{key}: only in the first")
            else:
                out += diff_paths(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)} items"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff_paths(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def duration_seconds(text) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", str(text))
    if not m:
        return None
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


# --- Envoy: the shipped files --------------------------------------------------------------------


def hcm_of(listener: dict) -> dict:
    for chain in listener.get("filter_chains", []):
        for f in chain.get("filters", []):
            if f.get("name") == "envoy.filters.network.http_connection_manager":
                return f["typed_config"]
    return {}


def routes_of(hcm: dict) -> dict:
    routes = {}
    for vhost in dig(hcm, "route_config", "virtual_hosts", default=[]):
        for route in vhost.get("routes", []):
            routes[route.get("name", "")] = route
    return routes


def endpoint(cluster: dict) -> tuple[str, int] | None:
    sa = dig(cluster, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address")
    if not sa:
        return None
    return sa.get("address"), sa.get("port_value")


def check_harness_shape(path: Path, config: dict) -> None:
    """The spellings the in-pod copies' generator anchors on (render_pod_copy), and the shape the
    kit's rewrite needs (render-envoy then fails on its own with what is missing)."""
    text = path.read_text(encoding="utf-8")
    name = rel(path)
    for literal in ["address: registry", "address: gateway", "port_value: 5000", "port_value: 50051", "port_value: 9901"]:
        check(literal in text, f"{name} spells `{literal}` (the test harness substitutes it)")
    check(dig(config, "admin", "address", "socket_address") is not None, f"{name}: admin.address.socket_address")
    listeners = dig(config, "static_resources", "listeners", default=[])
    check(len(listeners) == 1, f"{name}: exactly one listener (the harness expects one)")
    clusters = {c["name"]: c for c in dig(config, "static_resources", "clusters", default=[])}
    check(endpoint(clusters.get("registry", {})) == ("registry", 5000), f"{name}: cluster `registry` -> registry:5000")
    check(endpoint(clusters.get("registry-gateway", {})) == ("gateway", 50051), f"{name}: cluster `registry-gateway` -> gateway:50051")


def render_envoy(path: Path) -> dict | None:
    """The config the end-to-end tests run: the kit's one rewrite of a shipped file (admin and
    listener on 127.0.0.1:0, clusters on loopback), through its `render-envoy` binary
    (RENDER_ENVOY_BIN, which scripts/check-deploy builds; else `cargo run`). None, with a failure
    recorded, when the file cannot be rendered."""
    binary = os.environ.get("RENDER_ENVOY_BIN", "")
    cmd = [binary] if binary else ["cargo", "run", "-q", "-p", "registry-gateway-testkit", "--bin", "render-envoy", "--"]
    out = run(cmd + ["--json", str(path)], f"render-envoy {rel(path)}", timeout=600)
    if out is None:
        return None
    try:
        return json.loads(out)
    except json.JSONDecodeError as e:
        fail(f"render-envoy {rel(path)}: not JSON: {e}")
        return None


def ext_proc_filter(config: dict) -> dict:
    hcm = hcm_of(dig(config, "static_resources", "listeners", 0, default={}))
    f = next((f for f in hcm.get("http_filters", []) if f.get("name") == "envoy.filters.http.ext_proc"), {})
    return f.get("typed_config", {})


def check_common_knobs(name: str, config: dict) -> None:
    listener = dig(config, "static_resources", "listeners", 0, default={})
    hcm = hcm_of(listener)
    check(hcm.get("normalize_path") is True and hcm.get("merge_slashes") is True
          and hcm.get("path_with_escaped_slashes_action") == "REJECT_REQUEST",
          f"{name}: path normalisation (normalize_path, merge_slashes, escaped slashes rejected)")
    routes = routes_of(hcm)
    mw, pt = routes.get("manifest-write", {}), routes.get("pass-through", {})
    check(mw.get("request_body_buffer_limit") == MIB5, f"{name}: manifest route request_body_buffer_limit 5 MiB")
    check(dig(pt, "route", "timeout") == "0s", f"{name}: pass-through route timeout 0s (long blob uploads)")
    check(not pt.get("typed_per_filter_config") and not pt.get("request_body_buffer_limit"),
          f"{name}: pass-through route neither buffers nor calls the sidecar")
    check(list(routes)[-1:] == ["pass-through"], f"{name}: pass-through is the last route (it matches everything)")
    check_route_regexes(name, mw, routes.get("harbor-api-write", {}))
    check_hardening(name, config)


# Requests that must reach the sidecar (True) or must not (False), as (method, path with query).
MANIFEST_CASES = {
    ("PUT", "/v2/a/manifests/v1"): True,
    ("PUT", "/v2/a/b/c/d/e/f/g/h/i/j/manifests/v1?tag=x&tag=y"): True,
    ("DELETE", "/v2/project-1/app/manifests/sha256:" + "0" * 64): True,
    ("GET", "/v2/a/manifests/v1"): False,
    ("HEAD", "/v2/a/manifests/v1"): False,
    ("put", "/v2/a/manifests/v1"): False,
    ("PUT", "/v2/a/blobs/uploads/uuid?digest=sha256:" + "1" * 64): False,
    ("PATCH", "/v2/a/blobs/uploads/uuid"): False,
    ("POST", "/v2/a/blobs/uploads/"): False,
    ("PUT", "/v2/a/manifests/blobs/uploads/uuid"): False,
    ("PUT", "/v2/manifests/blobs/uploads/uuid"): False,
    ("GET", "/v2/a/tags/list"): False,
    ("DELETE", "/v2/a/blobs/sha256:" + "2" * 64): False,
}
HARBOR_API_CASES = {
    ("POST", "/api/v2.0/projects/p/repositories/app/artifacts/v1/tags"): True,
    ("POST", "/api/v2.0/projects/p/repositories/a%252Fb/artifacts/sha256:00/tags"): True,
    ("POST", "/api/v2.0/projects/p/repositories/app/artifacts?from=q/src:v1"): True,
    ("POST", "/api/v2.0/projects/p/repositories/app/artifacts/"): True,
    ("POST", "/API/v2.0/Projects/p/repositories/app/Artifacts/v1/TAGS"): True,
    ("GET", "/api/v2.0/projects/p/repositories/app/artifacts/v1/tags"): False,
    ("DELETE", "/api/v2.0/projects/p/repositories/app/artifacts/v1/tags/v1"): False,
    ("POST", "/api/v2.0/projects/p/repositories/app/artifacts/v1/labels"): False,
    ("POST", "/api/v2.0/projects"): False,
    ("POST", "/c/login"): False,
    ("POST", "/v2/a/blobs/uploads/"): False,
}


def re2_to_python(regex: str) -> re.Pattern:
    """The RE2 subset used here ((?i), classes, groups) means the same in Python's re."""
    return re.compile(regex)


def route_selects(route: dict, method: str, path: str) -> bool:
    """Whether an Envoy route with a safe_regex path and a :method header matcher selects a
    request (the path is matched without its query string, whole, as Envoy does)."""
    regex = dig(route, "match", "safe_regex", "regex")
    if not regex:
        return False
    if not re2_to_python(regex).fullmatch(path.split("?", 1)[0]):
        return False
    for h in dig(route, "match", "headers", default=[]):
        if h.get("name") == ":method":
            sm = h.get("string_match", {})
            if "exact" in sm and sm["exact"] != method:
                return False
            if "safe_regex" in sm and not re2_to_python(sm["safe_regex"]["regex"]).fullmatch(method):
                return False
    return True


def check_route_regexes(name: str, manifest_route: dict, harbor_route: dict) -> None:
    wrong = [c for c, want in MANIFEST_CASES.items() if route_selects(manifest_route, *c) != want]
    check(not wrong, f"{name}: manifest-write selects PUT/DELETE on /v2/<name>/manifests/<ref> and nothing else"
          + ("" if not wrong else f" (wrong for {wrong})"))
    check(bool(harbor_route), f"{name}: has the harbor-api-write route (Harbor's REST calls that create tags)")
    regex = dig(harbor_route, "match", "safe_regex", "regex", default="")
    check(regex.startswith("(?i)"), f"{name}: harbor-api-write matches the path case-insensitively ((?i))")
    wrong = [c for c, want in HARBOR_API_CASES.items() if route_selects(harbor_route, *c) != want]
    check(not wrong, f"{name}: harbor-api-write selects POST tag creation and artifact copy only"
          + ("" if not wrong else f" (wrong for {wrong})"))
    check(harbor_route.get("request_body_buffer_limit") == MIB5 and dig(harbor_route, "route", "timeout") == "30s",
          f"{name}: harbor-api-write buffers like manifest-write (5 MiB) with a 30s timeout")
    for filter_name in ("envoy.filters.http.ext_proc", "envoy.filters.http.ext_authz"):
        on_mw = dig(manifest_route, "typed_per_filter_config", filter_name)
        if on_mw is not None:
            check(dig(harbor_route, "typed_per_filter_config", filter_name) == on_mw,
                  f"{name}: harbor-api-write enables {filter_name.rsplit('.', 1)[-1]} exactly as manifest-write does")
    for route in (manifest_route, harbor_route):
        check(not route.get("direct_response"), f"{name}: {route.get('name')} never answers from Envoy (every "
              "client-visible message is the sidecar's)")


# --- Envoy: hardening ------------------------------------------------------------------------------

HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"
CX_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"


def heap_budget(config: dict) -> int | None:
    monitors = {m.get("name"): m.get("typed_config", {}) for m in dig(config, "overload_manager", "resource_monitors", default=[])}
    return dig(monitors, HEAP_MONITOR, "max_heap_size_bytes")


def check_hardening(name: str, config: dict) -> None:
    """Bursts, slow clients and memory (docs/RELIABILITY.md): circuit breakers sized on the
    connection ceiling, deadlines scoped to the manifest routes, HTTP/2 limits per connection, an
    overload manager on the heap."""
    om = config.get("overload_manager", {})
    monitors = {m.get("name"): m.get("typed_config", {}) for m in om.get("resource_monitors", [])}
    max_cx = dig(monitors, CX_MONITOR, "max_active_downstream_connections")
    check(isinstance(max_cx, int) and max_cx > 0, f"{name}: overload manager caps client connections ({max_cx})")
    max_cx = max_cx if isinstance(max_cx, int) else 0
    heap = heap_budget(config)
    check(isinstance(heap, int) and heap >= 256 * MIB1, f"{name}: fixed_heap monitor with a heap budget of at least 256 MiB ({heap})")
    actions = {a.get("name"): a for a in om.get("actions", [])}

    def level(action: str, key: str = "value") -> float | None:
        trigger = dig(actions, f"envoy.overload_actions.{action}", "triggers", 0, default={})
        if trigger.get("name") != HEAP_MONITOR:
            return None
        return dig(trigger, "threshold", key) if "threshold" in trigger else dig(trigger, "scaled", "saturation_threshold")

    shrink, keepalive, stop = level("shrink_heap"), level("disable_http_keepalive"), level("stop_accepting_requests")
    check(None not in (shrink, keepalive, stop) and shrink <= keepalive < stop < 1,
          f"{name}: on the heap, shrink_heap ({shrink}) <= disable_http_keepalive ({keepalive}) < "
          f"stop_accepting_requests ({stop}) < 1")
    reset = level("reset_high_memory_stream")
    check(reset is not None and reset <= (stop or 0) and dig(om, "buffer_factory_config", "minimum_account_to_track_power_of_two"),
          f"{name}: reset_high_memory_stream saturates ({reset}) before requests are refused, with buffer accounts tracked")

    clusters = {c.get("name"): c for c in dig(config, "static_resources", "clusters", default=[])}
    for cname, keys in (("registry", ("max_connections", "max_pending_requests", "max_requests")),
                        ("registry-gateway", ("max_pending_requests", "max_requests"))):
        t = next((t for t in dig(clusters, cname, "circuit_breakers", "thresholds", default=[])
                  if t.get("priority", "DEFAULT") == "DEFAULT"), {})
        check(all(isinstance(t.get(k), int) and t[k] >= max_cx for k in keys) and isinstance(t.get("max_retries"), int),
              f"{name}: cluster {cname} circuit breakers {', '.join(keys)} >= the {max_cx} client connections, "
              f"max_retries set ({ {k: t.get(k) for k in keys + ('max_retries',)} })")
    gw = clusters.get("registry-gateway", {})
    t = next(iter(dig(gw, "circuit_breakers", "thresholds", default=[{}])), {})
    streams = dig(gw, "typed_extension_protocol_options", "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                  "explicit_http_config", "http2_protocol_options", "max_concurrent_streams")
    check(isinstance(streams, int) and isinstance(t.get("max_connections"), int)
          and streams * t["max_connections"] >= (t.get("max_requests") or 0),
          f"{name}: the sidecar's HTTP/2 connections ({t.get('max_connections')} x {streams} streams) hold max_requests "
          f"({t.get('max_requests')})")

    listener = dig(config, "static_resources", "listeners", 0, default={})
    check(listener.get("per_connection_buffer_limit_bytes", MIB1) <= MIB1,
          f"{name}: per-connection buffer at most 1 MiB ({listener.get('per_connection_buffer_limit_bytes')})")
    hcm = hcm_of(listener)
    headers = duration_seconds(hcm.get("request_headers_timeout"))
    check(headers is not None and 0 < headers <= 60, f"{name}: request_headers_timeout set, at most 60s ({headers})")
    idle = duration_seconds(hcm.get("stream_idle_timeout"))
    check(idle is not None and 0 < idle <= 600, f"{name}: stream_idle_timeout set ({idle})")
    check(duration_seconds(hcm.get("request_timeout", "0s")) == 0
          and not dig(hcm, "common_http_protocol_options", "max_stream_duration"),
          f"{name}: no request_timeout and no connection-wide max_stream_duration (they would cut long blob uploads)")
    h2 = hcm.get("http2_protocol_options", {})
    check(0 < h2.get("max_concurrent_streams", 2**31) <= 1000
          and h2.get("initial_stream_window_size", 2**28) <= listener.get("per_connection_buffer_limit_bytes", MIB1)
          and h2.get("initial_connection_window_size", 2**28) <= 16 * MIB1,
          f"{name}: HTTP/2 clients: at most 1000 streams per connection, stream window within the connection buffer, "
          f"connection window at most 16 MiB ({h2})")
    routes = routes_of(hcm)
    for rname in ("manifest-write", "harbor-api-write"):
        route = dig(routes, rname, "route", default={})
        deadline = duration_seconds(dig(route, "max_stream_duration", "max_stream_duration"))
        timeout = duration_seconds(route.get("timeout")) or 0
        check(deadline is not None and timeout < deadline <= 300,
              f"{name}: {rname} has a whole-stream deadline (max_stream_duration {deadline}s) above its timeout ({timeout}s)")
    check(not dig(routes, "pass-through", "route", "max_stream_duration"),
          f"{name}: pass-through has no whole-stream deadline (blob uploads can take hours)")


# What the sidecar reads: request :method, :path, content-type, authorization; response :status
# and oci-tag. Nothing else may reach it, cookies least of all.
EXT_PROC_HEADERS = {":method", ":path", "content-type", "authorization", ":status", "oci-tag"}


def check_forward_rules(name: str, ext_proc_config: dict) -> None:
    """forward_rules of an ext_proc filter: exactly the headers the sidecar needs, never a cookie."""
    rules = ext_proc_config.get("forward_rules")
    if not check(rules is not None, f"{name}: ext_proc has forward_rules (without them Envoy sends every header)"):
        return
    allowed = dig(rules, "allowed_headers", "patterns", default=[])
    exact = {p.get("exact") for p in allowed}
    good = all(set(p) == {"exact"} for p in allowed) and exact == EXT_PROC_HEADERS
    check(good, f"{name}: forward_rules.allowed_headers are exactly {sorted(EXT_PROC_HEADERS)} (pseudo-headers "
          "are filtered too, so they are listed)" + ("" if good else f"; got {sorted(str(e) for e in exact)}"))
    disallowed = {p.get("exact") for p in dig(rules, "disallowed_headers", "patterns", default=[])}
    check("cookie" not in exact and "cookie" in disallowed,
          f"{name}: `cookie` is never forwarded (not allowed, and explicitly disallowed)")


def check_ext_authz(config: dict, ext_proc: dict) -> None:
    name = "envoy/ext-authz.yaml"
    listener = dig(config, "static_resources", "listeners", 0, default={})
    hcm = hcm_of(listener)
    filters = hcm.get("http_filters", [])
    authz = next((f for f in filters if f.get("name") == "envoy.filters.http.ext_authz"), None)
    if not check(authz is not None, f"{name}: has the envoy.filters.http.ext_authz filter"):
        return
    tc = authz.get("typed_config", {})
    check(authz.get("disabled") is True, f"{name}: ext_authz disabled by default (enabled on the manifest route only)")
    check(tc.get("transport_api_version") == "V3", f"{name}: transport_api_version V3")
    check(dig(tc, "grpc_service", "envoy_grpc", "cluster_name") == "registry-gateway", f"{name}: calls cluster registry-gateway")
    check(duration_seconds(dig(tc, "grpc_service", "timeout")) == 5.0, f"{name}: grpc_service timeout 5s")
    check(tc.get("failure_mode_allow") is False, f"{name}: failure_mode_allow false (fail closed)")
    check(dig(tc, "status_on_error", "code") in ("ServiceUnavailable", 503), f"{name}: status_on_error 503")
    body = tc.get("with_request_body", {})
    check(body.get("max_request_bytes") == MIB5 and body.get("allow_partial_message") is False
          and body.get("pack_as_bytes") is True,
          f"{name}: with_request_body {{max_request_bytes: 5242880, allow_partial_message: false, pack_as_bytes: true}}")
    exprs = [dig(m, "filter", "extension_filter", "typed_config", "expression", default="")
             for m in dig(hcm, "local_reply_config", "mappers", default=[])]
    check(bool(exprs) and all("ext_authz_error" in e and "ext_authz_denied" not in e for e in exprs),
          f"{name}: the 503 local reply maps ext_authz errors only, never the sidecar's denials")
    mw = routes_of(hcm).get("manifest-write", {})
    per_route = dig(mw, "typed_per_filter_config", "envoy.filters.http.ext_authz", default={})
    check(per_route.get("disabled") is False and "check_settings" in dig(per_route, "config", default={}),
          f"{name}: the manifest route enables ext_authz (FilterConfig{{disabled: false}})")
    check_common_knobs(name, config)

    # Everything but the filter itself and its per-route switch mirrors envoy/envoy.yaml.
    def strip(c: dict, filter_name: str) -> dict:
        c = copy.deepcopy(c)
        # Runtime flags of the ext_proc filter mean nothing to ext_authz.
        for layer in dig(c, "layered_runtime", "layers", default=[]):
            static = layer.get("static_layer", {})
            for key in [k for k in static if k.startswith("envoy.reloadable_features.ext_proc")]:
                del static[key]
        layers = [l for l in dig(c, "layered_runtime", "layers", default=[]) if l.get("static_layer") != {}]
        if layers:
            c["layered_runtime"]["layers"] = layers
        else:
            c.pop("layered_runtime", None)
        h = hcm_of(c["static_resources"]["listeners"][0])
        # The local reply for "sidecar unavailable" matches each filter's own response details.
        for mapper in dig(h, "local_reply_config", "mappers", default=[]):
            tc = dig(mapper, "filter", "extension_filter", "typed_config", default={})
            if "expression" in tc:
                tc["expression"] = re.sub(r"ext_authz_error|ext_proc_error|ext_proc", "<filter>", tc["expression"])
        h["http_filters"] = [f for f in h["http_filters"] if f.get("name") != filter_name]
        for route in routes_of(h).values():
            route.get("typed_per_filter_config", {}).pop(filter_name, None)
            if route.get("typed_per_filter_config") == {}:
                route.pop("typed_per_filter_config")
        return c

    diffs = diff_paths(strip(ext_proc, "envoy.filters.http.ext_proc"), strip(config, "envoy.filters.http.ext_authz"))
    check(not diffs, f"{name}: identical to envoy/envoy.yaml apart from the filter"
          + ("" if not diffs else ":\n" + indent("\n".join(diffs[:10]))))


# The in-pod copies of envoy/envoy.yaml are generated from it (`scripts/check-deploy --sync`) and
# must equal what the generator makes from the current envoy/envoy.yaml, byte for byte.
POD_COPIES = {
    "deploy/kubernetes/base/envoy/envoy.yaml": {
        "registry": ("registry", 5000),
        "registry_comment": "The registry's Service in the pod's namespace (the DNS search path completes the\n"
                            "# name). Change it to your registry's `<service>.<namespace>.svc` and port.",
        "header": """\
# Envoy inside the registry-gateway pod (deploy/kubernetes/base), put into the ConfigMap
# `registry-gateway-envoy` by base/kustomization.yaml.
#
#   client --Service registry-gateway:5000--> Envoy --> registry:5000    (pulls, blob uploads, tags)
#                                               |
#                                               +--gRPC--> 127.0.0.1:50051 (the sidecar container,
#                                                          only PUT/DELETE /v2/<name>/manifests/<ref>)
""",
    },
    "deploy/kubernetes/overlays/harbor/envoy.yaml": {
        "registry": ("harbor-core", 80),
        "registry_comment": "harbor-core's Service (Helm release `harbor`: `harbor-core`, port 80, in this\n"
                            "# pod's namespace). It serves Harbor's /v2/ API and its token service.",
        "header": """\
# Envoy inside the registry-gateway pod at Harbor's front door (deploy/kubernetes/overlays/harbor,
# docs/harbor.md); replaces the base's ConfigMap `registry-gateway-envoy`.
#
#   docker/CI --> Harbor's ingress --/v2/, /api/--> Envoy --> harbor-core:80  (registry API, REST API)
#                      |                              |
#                      |                              +--gRPC--> 127.0.0.1:50051  (manifest writes,
#                      |                                         REST calls that create tags)
#                      +-- /service/token, /c/, the UI --> Harbor, as before
#
# Envoy sits where Harbor's ingress used to send `/v2/` and `/api/`, so it sees the client's own
# manifest PUT, with its tag, before harbor-core rewrites it (Harbor 2.15 and later push digests
# to their backend registry), and refuses the REST calls that would create a tag or copy an
# artifact around the push limits (overlays/harbor/ingress.yaml).
""",
    },
}

POD_COPY_NOTE = """\
#
# GENERATED from envoy/envoy.yaml (the file the end-to-end tests run) by
# `scripts/check-deploy --sync`; do not edit by hand: edit envoy/envoy.yaml, then sync.
# scripts/check-deploy fails while this file is out of date. Differences from envoy/envoy.yaml:
#   - the `registry` cluster's address (above);
#   - the `registry-gateway` cluster's address: 127.0.0.1:50051, the other container of the pod
#     (STRICT_DNS resolves an IP literal to itself);
#   - the `envoy-ready` listener and `envoy-admin` cluster: the kubelet probes GET /ready there,
#     while the admin interface itself stays on loopback.
# Comments below are envoy/envoy.yaml's; where they speak of compose, read "the pod".

"""

READY_LISTENER = """
  # Readiness for the kubelet: GET /ready, forwarded to the admin interface (which stays on
  # loopback: it can stop Envoy and dump its config). Nothing else is answered here.
  - name: envoy-ready
    address:
      socket_address: { address: 0.0.0.0, port_value: 9902 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: envoy_ready
          route_config:
            name: envoy-ready
            virtual_hosts:
            - name: envoy-ready
              domains: ["*"]
              routes:
              - match:
                  path: /ready
                  headers:
                  - name: ":method"
                    string_match: { exact: GET }
                route: { cluster: envoy-admin, timeout: 2s }
              - match: { prefix: "/" }
                direct_response: { status: 404 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

ADMIN_CLUSTER = """
  # Envoy's own admin interface, for the envoy-ready listener only.
  - name: envoy-admin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: envoy-admin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 9901 }
"""


def render_pod_copy(source: str, spec: dict) -> str:
    """envoy/envoy.yaml rewritten for the pod: anchored on the spellings the test harness relies
    on too, so that a change of shape fails here loudly instead of producing a wrong copy."""
    lines = source.splitlines(keepends=True)
    # Drop envoy.yaml's own header: the leading comment block up to the first blank line.
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    if i == 0 or i >= len(lines) or lines[i].strip():
        raise ValueError("envoy/envoy.yaml no longer starts with a comment block and a blank line")
    body = "".join(lines[i + 1:])

    def replace_once(text: str, old: str, new: str) -> str:
        if text.count(old) != 1:
            raise ValueError(f"envoy/envoy.yaml: expected exactly one `{old.strip()}`")
        return text.replace(old, new)

    reg = "              socket_address: { address: registry, port_value: 5000 }\n"
    host, port = spec["registry"]
    body = replace_once(body, reg, "              # " + spec["registry_comment"].replace("\n# ", "\n              # ")
                        + f"\n              socket_address: {{ address: {host}, port_value: {port} }}\n")
    gw = "              socket_address: { address: gateway, port_value: 50051 }\n"
    body = replace_once(body, gw, "              # The sidecar container of this pod.\n"
                        "              socket_address: { address: 127.0.0.1, port_value: 50051 }\n")
    body = replace_once(body, "\n  clusters:\n", READY_LISTENER + "\n  clusters:\n")
    return spec["header"] + POD_COPY_NOTE + body.rstrip("\n") + "\n" + ADMIN_CLUSTER


def check_pod_copies(sync: bool) -> None:
    step("In-pod Envoy copies (deploy/kubernetes)")
    source = (ROOT / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    for name, spec in POD_COPIES.items():
        path = ROOT / name
        try:
            wanted = render_pod_copy(source, spec)
        except ValueError as e:
            fail(f"{name}: cannot be generated: {e}")
            continue
        if sync and (not path.exists() or path.read_text(encoding="utf-8") != wanted):
            path.write_text(wanted, encoding="utf-8")
            print(f"    synced: {name}")
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if not check(current == wanted, f"{name}: up to date with envoy/envoy.yaml"
                     + ("" if current == wanted else " (run `scripts/check-deploy --sync`)")):
            continue
        envoy_validate(path, name)
        config = load_yaml(path)
        clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
        check(endpoint(clusters.get("registry-gateway", {})) == ("127.0.0.1", SIDECAR_GRPC_PORT),
              f"{name}: the sidecar is reached on 127.0.0.1:{SIDECAR_GRPC_PORT} (same pod)")
        check(endpoint(clusters.get("registry", {})) == spec["registry"],
              f"{name}: upstream is {spec['registry'][0]}:{spec['registry'][1]}")
        check(dig(config, "admin", "address", "socket_address", "address") == "127.0.0.1",
              f"{name}: admin interface on loopback only")
        check_forward_rules(name, ext_proc_filter(config))
        check_hardening(name, config)


def validate_envoy_file(path: Path, label: str, config: dict) -> None:
    # Host names are not resolved in validate mode, so `registry`/`gateway` are fine as they are.
    envoy_validate(path, label)
    check_harness_shape(path, config)
    rendered = render_envoy(path)
    if rendered is not None:
        envoy_validate(rendered, f"{label} as the test kit renders it (render-envoy, loopback addresses)")


def check_envoy_files() -> dict:
    step("Envoy configurations (envoy/*.yaml)")
    ext_proc_path = ROOT / "envoy" / "envoy.yaml"
    ext_authz_path = ROOT / "envoy" / "ext-authz.yaml"
    ext_proc = load_yaml(ext_proc_path)
    validate_envoy_file(ext_proc_path, "envoy/envoy.yaml", ext_proc)
    check_common_knobs("envoy/envoy.yaml", ext_proc)
    check_forward_rules("envoy/envoy.yaml", ext_proc_filter(ext_proc))
    if ext_authz_path.exists():
        ext_authz = load_yaml(ext_authz_path)
        validate_envoy_file(ext_authz_path, "envoy/ext-authz.yaml", ext_authz)
        check_ext_authz(ext_authz, ext_proc)
    else:
        fail("envoy/ext-authz.yaml is missing")
    return ext_proc


# --- docker-compose ------------------------------------------------------------------------------


def compose_volumes(service: dict) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes", []) or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v.get("target", ""))))
        else:
            parts = str(v).split(":")
            if len(parts) >= 2:
                out.append((parts[0], parts[1]))
    return out


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` in an argument list."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def as_args(command) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return command.split()
    return [str(c) for c in command]


def check_compose(ext_proc: dict) -> None:
    step("docker-compose.yml (docker-compose config)")
    compose = tool("DOCKER_COMPOSE_BIN")
    out = run([compose, "-f", "docker-compose.yml", "config"], "docker-compose config")
    if out is None:
        return
    ok("docker-compose -f docker-compose.yml config")
    cfg = yaml.safe_load(out)
    services = cfg.get("services", {})
    for svc in ("registry", "gateway", "envoy"):
        check(svc in services, f"service `{svc}` exists")
    registry, gateway, envoy = (services.get(s, {}) for s in ("registry", "gateway", "envoy"))

    # registry
    check(str(registry.get("image", "")).startswith("registry:2"), "registry: image registry:2")
    env = registry.get("environment", {}) or {}
    check(str(env.get("REGISTRY_STORAGE_DELETE_ENABLED", "")).lower() == "true", "registry: REGISTRY_STORAGE_DELETE_ENABLED=true")
    check(not registry.get("ports"), "registry: not published on the host (only through Envoy)")

    # gateway
    build = gateway.get("build", {})
    context = build.get("context") if isinstance(build, dict) else build
    check(context is not None and Path(context).resolve() == ROOT, "gateway: built from the repository (build: .)")
    check((ROOT / "Dockerfile").is_file(), "Dockerfile exists")
    args = as_args(gateway.get("command"))
    check(args[:1] == ["serve"], "gateway: command `serve ...`")
    config_path = flag(args, "--config")
    check(flag(args, "--grpc-listen") == f"0.0.0.0:{SIDECAR_GRPC_PORT}", f"gateway: --grpc-listen 0.0.0.0:{SIDECAR_GRPC_PORT}")
    check(flag(args, "--admin-listen") == f"0.0.0.0:{SIDECAR_ADMIN_PORT}", f"gateway: --admin-listen 0.0.0.0:{SIDECAR_ADMIN_PORT}")
    check(flag(args, "--registry-url") == "http://registry:5000", "gateway: --registry-url http://registry:5000")
    check("--registry-insecure" in args, "gateway: --registry-insecure (plain-http registry)")
    mounted_dir = None
    for host, target in compose_volumes(gateway):
        if config_path and config_path.startswith(target.rstrip("/") + "/"):
            mounted_dir = (Path(host), target)
    if check(mounted_dir is not None, f"gateway: --config {config_path} lies inside a mounted directory"):
        host, target = mounted_dir
        inside = host / config_path[len(target.rstrip("/")) + 1:]
        check(host.is_dir(), f"gateway: the mount source {rel(host)} is a directory (rename-over edits are seen)")
        check(inside.is_file(), f"gateway: {rel(inside)} exists on the host")
        seed = load_yaml(ROOT / "tests" / "fixtures" / "policy" / "valid" / "seed.yaml")
        if inside.is_file():
            check(load_yaml(inside) == seed, f"{rel(inside)} holds the seed's example limits (tests/fixtures/policy/valid/seed.yaml)")
            check_config_with_binary(inside, rel(inside))

    # envoy
    check(str(envoy.get("image", "")).startswith("envoyproxy/envoy:v1.40"), "envoy: official image envoyproxy/envoy:v1.40.x")
    eargs = as_args(envoy.get("command"))
    envoy_config = flag(eargs, "-c") or flag(eargs, "--config-path") or "/etc/envoy/envoy.yaml"
    mounts = {target: Path(host) for host, target in compose_volumes(envoy)}
    src = mounts.get(envoy_config)
    check(src is not None and src.resolve() == (ROOT / "envoy" / "envoy.yaml").resolve(),
          f"envoy: runs {envoy_config}, which is ./envoy/envoy.yaml itself (the file the tests run)")
    ports = envoy.get("ports", []) or []
    check(any(str(p.get("published")) == "5000" and str(p.get("target")) == "5000" for p in ports if isinstance(p, dict))
          or "5000:5000" in [str(p) for p in ports], "envoy: publishes 5000:5000")
    # envoy.yaml's upstream host names must be these services, on these ports.
    clusters = {c["name"]: c for c in ext_proc["static_resources"]["clusters"]}
    reg_host, reg_port = endpoint(clusters["registry"]) or (None, None)
    gw_host, gw_port = endpoint(clusters["registry-gateway"]) or (None, None)
    monitors = {m.get("name"): m.get("typed_config", {}) for m in dig(ext_proc, "overload_manager", "resource_monitors", default=[])}
    max_cx = dig(monitors, CX_MONITOR, "max_active_downstream_connections", default=0)
    heap = heap_budget(ext_proc) or 0
    for svc_name, svc in services.items():
        if not str(svc.get("image", "")).startswith("envoyproxy/envoy:"):
            continue
        nofile = dig(svc, "ulimits", "nofile", "soft")
        limit = quantity_bytes(str(svc.get("mem_limit", "0")).replace("g", "Gi").replace("m", "Mi")) or 0
        check(isinstance(nofile, int) and nofile >= 2 * max_cx + 1024,
              f"{svc_name}: nofile {nofile} covers {max_cx} client connections and as many to the registry")
        check(0 < heap <= 0.8 * limit, f"{svc_name}: mem_limit ({svc.get('mem_limit')}) is above the overload "
              f"manager's heap budget ({heap} bytes) by at least 25%")
    check(reg_host in services and reg_port == 5000, f"envoy.yaml's registry host `{reg_host}:{reg_port}` is the compose service (registry:2 listens on 5000)")
    check(gw_host in services and gw_port == SIDECAR_GRPC_PORT, f"envoy.yaml's sidecar host `{gw_host}:{gw_port}` is the compose service `gateway`")

    check_compose_ha(services)

    # optional ext_authz Envoy
    extra = services.get("envoy-ext-authz")
    if extra is not None:
        mounts = {target: Path(host) for host, target in compose_volumes(extra)}
        src = mounts.get("/etc/envoy/envoy.yaml")
        check(src is not None and src.resolve() == (ROOT / "envoy" / "ext-authz.yaml").resolve(),
              "envoy-ext-authz: runs ./envoy/ext-authz.yaml itself")


def check_compose_ha(services: dict) -> None:
    """The `ha` profile: a Valkey or Redis and two gateway+Envoy pairs sharing it, each Envoy on its
    own port and reaching its own sidecar; the default profile stays one pair in memory mode."""
    compose = tool("DOCKER_COMPOSE_BIN")
    if run([compose, "-f", "docker-compose.yml", "--profile", "ha", "config", "-q"],
           "docker-compose --profile ha config") is not None:
        ok("docker-compose -f docker-compose.yml --profile ha config")
    default = {n for n, svc in services.items() if not svc.get("profiles")}
    check(default == {"registry", "gateway", "envoy"}, f"default profile: registry, gateway, envoy only ({sorted(default)})")
    check(flag(as_args(services.get("gateway", {}).get("command")), "--state") in (None, "memory"),
          "default profile: the gateway keeps memory mode (one replica)")
    ha = {n: svc for n, svc in services.items() if "ha" in (svc.get("profiles") or [])}

    def nets(svc: dict) -> dict:
        n = svc.get("networks") or {"default": None}
        return {k: (v or {}) for k, v in n.items()} if isinstance(n, dict) else {k: {} for k in n}

    stores = {n: svc for n, svc in ha.items()
              if str(svc.get("image", "")).startswith("valkey/valkey:") or re.match(r"redis:(7|[89])", str(svc.get("image", "")))}
    if not check(len(stores) == 1, f"ha profile: one Valkey or Redis 7+ service ({sorted(stores)})"):
        return
    store_name, store = next(iter(stores.items()))
    check(not store.get("ports"), f"ha profile: {store_name} is not published on the host")
    gateways = {n: svc for n, svc in ha.items() if as_args(svc.get("command"))[:1] == ["serve"]}
    urls = {n: flag(as_args(svc.get("command")), "--state") or "" for n, svc in gateways.items()}
    check(len(gateways) == 2 and all(u.startswith("redis://") for u in urls.values()) and len(set(urls.values())) == 1,
          f"ha profile: two gateways with one and the same --state redis://... ({urls})")
    for u in set(urls.values()):
        hosts = state_url_hosts(u) if u.startswith("redis://") else []
        check(len(hosts) == 1 and hosts[0][0] == store_name and (hosts[0][1] or 6379) == 6379,
              f"ha profile: --state {u} names the service {store_name}")
    main_image = services.get("gateway", {}).get("image")
    check(all(svc.get("image") == main_image and svc.get("build") for svc in gateways.values()),
          f"ha profile: the gateways are built from the repository as {main_image}")
    envoys = {n: svc for n, svc in ha.items() if str(svc.get("image", "")).startswith("envoyproxy/envoy:v1.40")}
    check(len(envoys) == 2, f"ha profile: two Envoys ({sorted(envoys)})")
    published = []
    paired = set()
    for n, svc in envoys.items():
        mounts = {target: Path(host) for host, target in compose_volumes(svc)}
        src = mounts.get("/etc/envoy/envoy.yaml")
        check(src is not None and src.resolve() == (ROOT / "envoy" / "envoy.yaml").resolve(),
              f"ha profile: {n} runs ./envoy/envoy.yaml itself")
        for p in svc.get("ports", []) or []:
            if isinstance(p, dict) and str(p.get("target")) == "5000":
                published.append(str(p.get("published")))
        # On each of the Envoy's networks, `gateway` must be exactly one sidecar, a shared-state one.
        answering = {g for net in nets(svc) for g, gsvc in services.items()
                     if net in nets(gsvc) and (g == "gateway" or "gateway" in (nets(gsvc)[net].get("aliases") or []))}
        check(len(answering) == 1 and next(iter(answering)) in gateways,
              f"ha profile: on {n}'s networks the name `gateway` is one sidecar of the pair ({sorted(answering)})")
        paired |= answering
        check(all(net in nets(services.get("registry", {})) for net in nets(svc)),
              f"ha profile: {n} reaches the registry")
    check(paired == set(gateways), f"ha profile: each gateway serves its own Envoy ({sorted(paired)})")
    check(len(published) == 2 and len(set(published)) == 2 and "5000" not in published and "5001" not in published,
          f"ha profile: each Envoy on its own published port ({published})")
    for n, svc in gateways.items():
        check(any(net in nets(store) for net in nets(svc)) and any(net in nets(services["registry"]) for net in nets(svc)),
              f"ha profile: {n} reaches {store_name} and the registry")


def check_config_with_binary(path: Path, what: str) -> None:
    binary = os.environ.get("REGISTRY_GATEWAY_BIN", "")
    if not binary:
        print(f"    skip: `registry-gateway check-config {what}` (no built binary; run cargo build first)")
        return
    if run([binary, "check-config", str(path)], f"registry-gateway check-config {what}") is not None:
        ok(f"registry-gateway check-config accepts {what}")


def check_dockerfile() -> None:
    """No engine here to build it: check what can be read."""
    step("Dockerfile (static checks; no Docker engine to build it)")
    path = ROOT / "Dockerfile"
    if not check(path.is_file(), "Dockerfile exists"):
        return
    lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines()]
    # Join continuation lines.
    joined, cur = [], ""
    for l in lines:
        if l.startswith("#") and not cur:
            continue
        cur += " " + l.rstrip("\\")
        if not l.endswith("\\"):
            joined.append(cur.strip())
            cur = ""
    stages = [i for i, l in enumerate(joined) if l.upper().startswith("FROM ")]
    check(len(stages) >= 2, "multi-stage (a build stage and a runtime stage)")
    check(any("cargo build" in l and "--release" in l and "--locked" in l for l in joined),
          "the build runs `cargo build --release --locked` (exactly Cargo.lock's versions)")
    final = joined[stages[-1]:] if stages else []
    users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), f"the runtime stage runs as a non-root USER ({users[-1] if users else 'none'})")
    exposed = " ".join(l for l in final if l.upper().startswith("EXPOSE "))
    check(str(SIDECAR_GRPC_PORT) in exposed and str(SIDECAR_ADMIN_PORT) in exposed, f"EXPOSE {SIDECAR_GRPC_PORT} {SIDECAR_ADMIN_PORT}")
    check(any(l.upper().startswith("ENTRYPOINT") and "registry-gateway" in l for l in final), "ENTRYPOINT runs registry-gateway")
    cmd = [l for l in final if l.upper().startswith("CMD")]
    check(bool(cmd) and "serve" in cmd[-1], "the default command is `serve`")
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if l.strip() and not l.startswith("#")] if (ROOT / ".dockerignore").is_file() else []
    copied = [tok for l in joined if l.upper().startswith("COPY ") and "--from" not in l for tok in l.split()[1:-1]]
    missing = [c for c in copied if not (ROOT / c).exists()]
    excluded = [c for c in copied if c.strip("./") in [i.strip("/") for i in ignored]]
    check(bool(copied) and not missing and not excluded,
          f"COPY sources {copied} exist and are not in .dockerignore" + (f" (missing {missing}, ignored {excluded})" if missing or excluded else ""))
    check({"target", ".git", ".venv"} <= set(i.strip("/") for i in ignored), ".dockerignore leaves out target/, .git/, .venv/")


# --- Kubernetes ----------------------------------------------------------------------------------


def by_kind(docs: list) -> dict[tuple[str, str], dict]:
    return {(d.get("kind"), dig(d, "metadata", "name")): d for d in docs}


def container_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_kustomize(directory: str, ext_proc: dict, harbor: bool, valkey: bool = False, mesh: bool = False) -> None:
    step(f"kubectl kustomize {directory}")
    kubectl = tool("KUBECTL_BIN")
    out = run([kubectl, "kustomize", directory], f"kubectl kustomize {directory}")
    if out is None:
        return
    ok(f"kubectl kustomize {directory} renders")
    try:
        docs = load_all(out)
    except yaml.YAMLError as e:
        fail(f"{directory}: the rendered output is not YAML: {e}")
        return
    ok(f"{directory}: {len(docs)} objects parse as YAML")
    objects = by_kind(docs)
    name = directory

    dep = objects.get(("Deployment", "registry-gateway"))
    if not check(dep is not None, f"{name}: Deployment registry-gateway"):
        return
    pod = dig(dep, "spec", "template", "spec", default={})
    containers = {c["name"]: c for c in pod.get("containers", [])}
    check(set(containers) >= {"envoy", "registry-gateway"}, f"{name}: containers envoy and registry-gateway in one pod")
    pod_sc = pod.get("securityContext", {})
    for cname, c in containers.items():
        sc = c.get("securityContext", {})
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        check(non_root and uid not in (0, None), f"{name}: {cname} runs as non-root (runAsNonRoot, runAsUser {uid})")
        check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
              and "ALL" in dig(sc, "capabilities", "drop", default=[]),
              f"{name}: {cname} no privilege escalation, read-only root, capabilities drop ALL")
        res = c.get("resources", {})
        check(bool(dig(res, "requests", "cpu")) and bool(dig(res, "requests", "memory")) and bool(dig(res, "limits", "memory")),
              f"{name}: {cname} has resource requests and a memory limit")
        check(bool(c.get("readinessProbe")) and bool(c.get("livenessProbe")), f"{name}: {cname} has readiness and liveness probes")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    # The sidecar.
    side = containers.get("registry-gateway", {})
    args = as_args(side.get("command", [])) + as_args(side.get("args", []))
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = dig(side, probe, "httpGet", default={})
        check(get.get("path") == path and container_port(side, get.get("port")) == SIDECAR_ADMIN_PORT,
              f"{name}: registry-gateway {probe} GET {path} on {SIDECAR_ADMIN_PORT}")
    check("serve" in args, f"{name}: registry-gateway runs `serve`")
    grpc_listen = flag(args, "--grpc-listen") or ""
    if mesh:
        check(grpc_listen == f"0.0.0.0:{SIDECAR_GRPC_PORT}",
              f"{name}: --grpc-listen 0.0.0.0:{SIDECAR_GRPC_PORT} (the mesh's proxies call it from other pods)")
    else:
        check(grpc_listen == f"127.0.0.1:{SIDECAR_GRPC_PORT}",
              f"{name}: --grpc-listen 127.0.0.1:{SIDECAR_GRPC_PORT} (Envoy is in the same pod; nothing else reaches it)")
    check((flag(args, "--admin-listen") or "").startswith("0.0.0.0:"), f"{name}: admin port reachable by the kubelet (0.0.0.0)")
    mounts = {m["name"]: m for m in side.get("volumeMounts", [])}

    cm = objects.get(("ConfigMap", "registry-gateway-config"))
    if check(cm is not None, f"{name}: ConfigMap registry-gateway-config"):
        data = cm.get("data", {})
        check(set(data) == {"max_image_size", "tag_count_limit", "rules"},
              f"{name}: ConfigMap keys max_image_size, tag_count_limit, rules (the seed's format)")
        rules = yaml.safe_load(data.get("rules", "")) if isinstance(data.get("rules"), str) else None
        check(isinstance(rules, list) and all("path" in r and "limit" in r for r in rules),
              f"{name}: ConfigMap `rules` is a YAML list of {{path, limit}}")
        seed = load_yaml(ROOT / "tests" / "fixtures" / "policy" / "valid" / "seed.yaml")
        check(str(data.get("max_image_size")) == str(seed["max_image_size"])
              and str(data.get("tag_count_limit")) == str(seed["tag_count_limit"]) and rules == seed["rules"],
              f"{name}: ConfigMap holds the seed's example limits")
        cm_vol = next((v for v in volumes.values() if dig(v, "configMap", "name") == "registry-gateway-config"), None)
        mount = mounts.get(cm_vol["name"]) if cm_vol else None
        check(mount is not None and "subPath" not in mount and "subPathExpr" not in mount
              and "items" not in cm_vol.get("configMap", {}),
              f"{name}: the ConfigMap is mounted into registry-gateway as a whole directory (no subPath, no items)")
        if mount is not None:
            check(flag(args, "--config") == mount["mountPath"], f"{name}: --config is the ConfigMap's directory {mount['mountPath']}")
        if isinstance(data.get("rules"), str):
            with tempfile.TemporaryDirectory() as tmp:
                for key, value in data.items():
                    Path(tmp, key).write_text(str(value), encoding="utf-8")
                check_config_with_binary(Path(tmp), f"the ConfigMap of {name} (as a mounted directory)")

    secret = objects.get(("Secret", "registry-gateway-external-registry-secret"))
    if check(secret is not None, f"{name}: Secret registry-gateway-external-registry-secret"):
        keys = set(secret.get("data", {}) or {}) | set(secret.get("stringData", {}) or {})
        check(keys == {"username", "password", "insecure"}, f"{name}: Secret keys username, password, insecure")
        vol = next((v for v in volumes.values() if dig(v, "secret", "secretName") == "registry-gateway-external-registry-secret"), None)
        mount = mounts.get(vol["name"]) if vol else None
        check(mount is not None and "subPath" not in mount and flag(args, "--registry-credentials-dir") == mount["mountPath"],
              f"{name}: the Secret is mounted as the --registry-credentials-dir directory")

    # Envoy.
    envoy = containers.get("envoy", {})
    check(str(envoy.get("image", "")).startswith("envoyproxy/envoy:v1.40"), f"{name}: envoy image envoyproxy/envoy:v1.40.x")
    check(dig(envoy, "readinessProbe", "httpGet", "path") == "/ready", f"{name}: envoy readiness probe GET /ready")
    eargs = as_args(envoy.get("command", [])) + as_args(envoy.get("args", []))
    econfig = flag(eargs, "--config-path") or flag(eargs, "-c") or "/etc/envoy/envoy.yaml"
    emounts = {m["mountPath"]: m["name"] for m in envoy.get("volumeMounts", [])}
    evol = volumes.get(emounts.get(str(Path(econfig).parent), ""), {})
    ecm = objects.get(("ConfigMap", dig(evol, "configMap", "name")))
    if check(ecm is not None and "envoy.yaml" in ecm.get("data", {}),
             f"{name}: envoy's {econfig} comes from a ConfigMap with key envoy.yaml"):
        shipped = ROOT / "deploy" / "kubernetes" / ("overlays/harbor/envoy.yaml" if harbor else "base/envoy/envoy.yaml")
        check(yaml.safe_load(ecm["data"]["envoy.yaml"]) == load_yaml(shipped),
              f"{name}: that ConfigMap is {rel(shipped)}")
        rendered = yaml.safe_load(ecm["data"]["envoy.yaml"])
        ready_port = dig(next((l for l in rendered["static_resources"]["listeners"] if l["name"] == "envoy-ready"), {}),
                         "address", "socket_address", "port_value")
        check(container_port(envoy, dig(envoy, "readinessProbe", "httpGet", "port")) == ready_port,
              f"{name}: envoy's probe port is the envoy-ready listener ({ready_port})")
        heap = heap_budget(rendered)
        limit = quantity_bytes(dig(envoy, "resources", "limits", "memory", default="0")) or 0
        check(isinstance(heap, int) and 0 < heap <= 0.8 * limit,
              f"{name}: Envoy's heap budget (overload manager, {heap} bytes) is at most 80% of its memory limit "
              f"({limit} bytes): it sheds load before the kernel kills it")

    # Services.
    # The gateway's Services (not those of an overlay's own store).
    others = [dig(d, "spec", "template", "metadata", "labels", default={}) for d in docs
              if d.get("kind") in ("StatefulSet", "Deployment") and d is not dep]
    services = [d for d in docs if d.get("kind") == "Service"
                and not any(selects({"matchLabels": dig(d, "spec", "selector", default={})}, o) for o in others)]
    ports = [p for s in services for p in dig(s, "spec", "ports", default=[])]
    grpc = [p for p in ports if str(p.get("name", "")).startswith("grpc-")]
    to_sidecar = [p for p in ports if container_port(side, p.get("targetPort")) == SIDECAR_GRPC_PORT]
    if mesh:
        check(bool(grpc) and all(container_port(side, p.get("targetPort")) == SIDECAR_GRPC_PORT for p in grpc),
              f"{name}: a Service port named grpc-... targets the sidecar's gRPC port (mesh protocol detection)")
    else:
        check(not to_sidecar, f"{name}: no Service port reaches the sidecar's gRPC port (loopback only)")
    check_network_policies(name, docs, dep, side, envoy, mesh)
    front = [p for p in ports if p.get("name") == "http-registry" and p.get("port") == 5000]
    check(bool(front) and all(container_port(envoy, p.get("targetPort")) == 5000 for p in front),
          f"{name}: Service port 5000 `http-registry` targets Envoy")
    selector_ok = all(
        all(dig(dep, "spec", "template", "metadata", "labels", k) == v for k, v in dig(s, "spec", "selector", default={}).items())
        for s in services)
    check(selector_ok, f"{name}: Service selectors match the pod's labels")

    check_high_availability(name, docs, dep, containers)
    if valkey:
        check_valkey_overlay(name, docs, dep)

    if harbor:
        url = flag(args, "--registry-url") or ""
        check(url.startswith("https://") and "registry:5000" not in url,
              f"{name}: --registry-url is Harbor's external URL ({url})")
        check(secret is not None and str(dig(secret, "stringData", "username", default="")).startswith("robot$"),
              f"{name}: the Secret holds a Harbor robot account (robot$...)")
        check_harbor_ingress(name, docs, url)
    else:
        check(flag(args, "--registry-url") == "http://registry:5000", f"{name}: --registry-url http://registry:5000")

def policy_port(container: dict, port) -> int | None:
    return container_port(container, port) if not isinstance(port, int) else port


def check_network_policies(name: str, docs: list, dep: dict, side: dict, envoy: dict, mesh: bool) -> None:
    """Who may reach the pods: the registry port from anywhere, the metrics port from named
    namespaces only, the sidecar's gRPC port from no one (mesh: from named namespaces only)."""
    labels = dig(dep, "spec", "template", "metadata", "labels", default={})
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy" and selects(dig(d, "spec", "podSelector", default={}), labels)]
    if not check(bool(policies) and all("Ingress" in dig(p, "spec", "policyTypes", default=[]) for p in policies),
                 f"{name}: a NetworkPolicy selects the gateway's pods and restricts Ingress ({len(policies)})"):
        return
    check(all(dig(p, "metadata", "namespace") == dig(dep, "metadata", "namespace") for p in policies),
          f"{name}: the NetworkPolicies are in the Deployment's namespace")
    # (port, open to all?) for every rule; a rule without ports admits every port.
    admitted: dict[int | None, list[bool]] = {}
    for p in policies:
        for rule in dig(p, "spec", "ingress", default=[]):
            sources = rule.get("from") or []
            anyone = not sources
            for port in rule.get("ports") or [{"port": None}]:
                number = policy_port(side, port.get("port")) or policy_port(envoy, port.get("port")) \
                    if port.get("port") is not None else None
                admitted.setdefault(number, []).append(anyone)
    check(None not in admitted, f"{name}: every NetworkPolicy rule names its ports")
    check(admitted.get(5000) == [True] * len(admitted.get(5000, [])) and 5000 in admitted,
          f"{name}: port 5000 (Envoy) is open to clients")
    check(SIDECAR_ADMIN_PORT in admitted and not any(admitted[SIDECAR_ADMIN_PORT]),
          f"{name}: the metrics port {SIDECAR_ADMIN_PORT} only from named sources (monitoring)")
    if mesh:
        check(SIDECAR_GRPC_PORT in admitted and not any(admitted[SIDECAR_GRPC_PORT]),
              f"{name}: the sidecar's gRPC port {SIDECAR_GRPC_PORT} only from named sources (the mesh's proxies)")
    else:
        check(SIDECAR_GRPC_PORT not in admitted, f"{name}: no NetworkPolicy rule opens the sidecar's gRPC port")
    check(set(admitted) <= {5000, SIDECAR_ADMIN_PORT, SIDECAR_GRPC_PORT},
          f"{name}: nothing but 5000, {SIDECAR_ADMIN_PORT}" + (f" and {SIDECAR_GRPC_PORT}" if mesh else "")
          + f" is admitted ({sorted(admitted)})")


STATE_SECRET = "registry-gateway-state"
STATE_SCHEMES = ("redis://", "rediss://", "redis-cluster://")


def secret_data(secret: dict) -> dict[str, str]:
    """A Secret's values, `data` decoded and `stringData` as written."""
    import base64
    out = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}
    out.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return out


def state_url_hosts(url: str) -> list[tuple[str, int | None, str | None]]:
    """(host, port, password) of every node a --state URL names."""
    from urllib.parse import urlsplit
    if url.startswith("redis-cluster://"):
        rest = url[len("redis-cluster://"):]
        userinfo, _, hosts = rest.rpartition("@")
        prefix = f"redis://{userinfo}@" if userinfo else "redis://"
        parts = [urlsplit(prefix + h.strip()) for h in hosts.rstrip("/").split(",") if h.strip()]
    else:
        parts = [urlsplit(url)]
    return [(p.hostname or "", p.port, p.password) for p in parts]


def sleep_seconds(handler: dict | None) -> int | None:
    """How long a preStop handler waits: the kubelet's sleep action, or `sleep N` in an exec."""
    if not handler:
        return None
    if "sleep" in handler:
        return int(dig(handler, "sleep", "seconds", default=0))
    found = re.findall(r"\bsleep\s+([0-9]+)", " ".join(as_args(dig(handler, "exec", "command"))))
    return int(found[-1]) if found else None


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items()) and not selector.get("matchExpressions")


def check_high_availability(name: str, docs: list, dep: dict, containers: dict) -> None:
    """Several replicas sharing one store, rollouts and drains that never take the front door
    down, the state URL from a Secret (docs/high-availability.md)."""
    spec = dep.get("spec", {})
    pod = dig(spec, "template", "spec", default={})
    labels = dig(spec, "template", "metadata", "labels", default={})
    replicas = spec.get("replicas", 1)
    check(isinstance(replicas, int) and replicas >= 3, f"{name}: replicas >= 3 ({replicas})")
    strategy = spec.get("strategy", {})
    ru = strategy.get("rollingUpdate", {}) or {}
    check(strategy.get("type") == "RollingUpdate" and str(ru.get("maxUnavailable")) in ("0", "0%")
          and str(ru.get("maxSurge", "25%")) not in ("0", "0%"),
          f"{name}: strategy RollingUpdate, maxUnavailable 0, maxSurge > 0 ({strategy})")

    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"
            and selects(dig(d, "spec", "selector", default={}), labels)]
    if check(len(pdbs) == 1, f"{name}: one PodDisruptionBudget selects the gateway's pods"):
        pspec = pdbs[0]["spec"]
        min_av, max_un = pspec.get("minAvailable"), pspec.get("maxUnavailable")
        check((isinstance(min_av, int) and 2 <= min_av < replicas)
              or (isinstance(max_un, int) and max_un >= 1 and replicas - max_un >= 2),
              f"{name}: the PodDisruptionBudget keeps at least 2 pods and lets one go "
              f"(minAvailable {min_av}, maxUnavailable {max_un}, replicas {replicas})")
        check(dig(pdbs[0], "metadata", "namespace") == dig(dep, "metadata", "namespace"),
              f"{name}: the PodDisruptionBudget is in the Deployment's namespace")

    spread = pod.get("topologySpreadConstraints", []) or []
    keys = {t.get("topologyKey"): t for t in spread if selects(t.get("labelSelector", {}), labels)}
    check("kubernetes.io/hostname" in keys and "topology.kubernetes.io/zone" in keys,
          f"{name}: topologySpreadConstraints over nodes and zones, selecting the gateway's pods ({sorted(keys)})")
    check(dig(keys, "kubernetes.io/hostname", "whenUnsatisfiable") == "DoNotSchedule",
          f"{name}: two replicas never share a node (hostname spread DoNotSchedule)")

    side, envoy = containers.get("registry-gateway", {}), containers.get("envoy", {})
    for cname, c in (("registry-gateway", side), ("envoy", envoy)):
        check(bool(dig(c, "readinessProbe", "httpGet")), f"{name}: {cname} has an HTTP readiness probe")

    # The termination timeline: Envoy drains, the sidecar outlives it, the kubelet waits for both.
    args = as_args(side.get("command", [])) + as_args(side.get("args", []))
    eargs = as_args(envoy.get("command", [])) + as_args(envoy.get("args", []))
    grace = duration_seconds(flag(args, "--shutdown-grace") or "10s") or 10
    envoy_wait = sleep_seconds(dig(envoy, "lifecycle", "preStop"))
    side_wait = sleep_seconds(dig(side, "lifecycle", "preStop"))
    drain = flag(eargs, "--drain-time-s")
    envoy_pre = " ".join(as_args(dig(envoy, "lifecycle", "preStop", "exec", "command")))
    check("/drain_listeners?graceful" in envoy_pre and "127.0.0.1/9901" in envoy_pre,
          f"{name}: Envoy's preStop starts a graceful drain through its loopback admin interface")
    check(flag(eargs, "--drain-strategy") == "immediate" and drain is not None and envoy_wait is not None
          and 0 < int(drain) < envoy_wait,
          f"{name}: Envoy drains immediately and closes its listeners ({drain}s) before its preStop ends ({envoy_wait}s)")
    check(envoy_wait is not None and side_wait is not None and side_wait > envoy_wait,
          f"{name}: the sidecar's preStop ({side_wait}s) outlasts Envoy's ({envoy_wait}s): Envoy never calls a stopped sidecar")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    check(side_wait is not None and tgps >= side_wait + grace,
          f"{name}: terminationGracePeriodSeconds ({tgps}) covers the sidecar's preStop ({side_wait}s) "
          f"plus --shutdown-grace ({grace:g}s)")

    # A live push settles before its lease runs out: the lease outlasts Envoy's manifest-write
    # route timeout plus the message timeout of the response phase.
    envoy_cfg = next((yaml.safe_load(d["data"]["envoy.yaml"]) for d in docs if d.get("kind") == "ConfigMap"
                      and "envoy.yaml" in (d.get("data") or {})), None)
    route_timeout = message_timeout = None
    if envoy_cfg:
        hcm = hcm_of(next(l for l in envoy_cfg["static_resources"]["listeners"] if l["name"] != "envoy-ready"))
        route_timeout = duration_seconds(dig(routes_of(hcm).get("manifest-write", {}), "route", "timeout"))
        message_timeout = duration_seconds(ext_proc_filter(envoy_cfg).get("message_timeout"))
    lease = duration_seconds(flag(args, "--state-lease") or "30s")
    check(None not in (lease, route_timeout, message_timeout) and lease > route_timeout + message_timeout,
          f"{name}: --state-lease ({lease}s) outlasts the manifest-write route timeout ({route_timeout}s) plus the "
          f"ext_proc message timeout ({message_timeout}s)")

    # The state URL: from a Secret, never a literal, never with a password in it.
    envs = {e.get("name"): e for e in side.get("env", []) or []}
    state = envs.get("REGISTRY_GATEWAY_STATE", {})
    ref = dig(state, "valueFrom", "secretKeyRef", default={})
    check(flag(args, "--state") is None and "value" not in state and ref.get("name") == STATE_SECRET
          and ref.get("key") == "url",
          f"{name}: REGISTRY_GATEWAY_STATE comes from secretKeyRef {STATE_SECRET}/url (no --state flag, no literal)")
    literal = [e["name"] for e in envs.values() if "value" in e and re.search(r"PASSWORD|SECRET|TOKEN", e["name"])
               and not e["name"].endswith("_FILE")]
    check(not literal and not any(a.startswith(("--state-password=", "--registry-password")) for a in args),
          f"{name}: no password is written in the sidecar's env or args ({literal})")
    secrets = {dig(d, "metadata", "name"): d for d in docs if d.get("kind") == "Secret"}
    data = secret_data(secrets.get(STATE_SECRET, {}))
    url = data.get("url", "")
    if check(url.startswith(STATE_SCHEMES), f"{name}: Secret {STATE_SECRET} holds a redis://, rediss:// or "
             f"redis-cluster:// url ({url.split('@')[-1] or 'missing'})"):
        check(all(pw is None for _, _, pw in state_url_hosts(url)),
              f"{name}: the state url carries no password (it goes in the key `password`, as a file)")
    pw_file = envs.get("REGISTRY_GATEWAY_STATE_PASSWORD_FILE", {}).get("value") or flag(args, "--state-password-file")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = None
    for m in side.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        if pw_file and dig(vol, "secret", "secretName") == STATE_SECRET and pw_file.startswith(m["mountPath"].rstrip("/") + "/"):
            key = pw_file[len(m["mountPath"].rstrip("/")) + 1:]
            items = dig(vol, "secret", "items")
            mounted = next((i["key"] for i in items if i.get("path") == key), None) if items else key
    check(mounted == "password" and "password" in data,
          f"{name}: --state-password-file ({pw_file}) is the key `password` of Secret {STATE_SECRET}, mounted")


def check_valkey_overlay(name: str, docs: list, dep: dict) -> None:
    """The overlay's own Valkey: one pod, a Service, the password from the Secret the gateway reads,
    and the gateway's state URL pointing at that Service."""
    sets = [d for d in docs if d.get("kind") in ("StatefulSet", "Deployment") and d is not dep]
    store = sets[0] if len(sets) == 1 else {}
    c = dig(store, "spec", "template", "spec", "containers", 0, default={})
    image = str(c.get("image", ""))
    check(store.get("kind") == "StatefulSet" and dig(store, "spec", "replicas") == 1,
          f"{name}: the store is a StatefulSet of one (never two stores side by side)")
    check(image.startswith("valkey/valkey:8") or re.match(r"redis:(7|[89])", image) is not None,
          f"{name}: store image valkey/valkey:8 or redis:7+ ({image}; SET NX GET needs 7.0)")
    labels = dig(store, "spec", "template", "metadata", "labels", default={})
    services = [d for d in docs if d.get("kind") == "Service"
                and dig(d, "spec", "selector") and all(labels.get(k) == v for k, v in d["spec"]["selector"].items())]
    svc = services[0] if len(services) == 1 else {}
    check(bool(svc), f"{name}: a Service selects the store's pod")
    check(dig(store, "metadata", "namespace") == dig(dep, "metadata", "namespace") == dig(svc, "metadata", "namespace"),
          f"{name}: the store, its Service and the gateway share a namespace")
    secrets = {dig(d, "metadata", "name"): d for d in docs if d.get("kind") == "Secret"}
    data = secret_data(secrets.get(STATE_SECRET, {}))
    hosts = state_url_hosts(data.get("url", "")) if data.get("url", "").startswith(STATE_SCHEMES) else []
    svc_ports = {p.get("port") for p in dig(svc, "spec", "ports", default=[])}
    check(len(hosts) == 1 and hosts[0][0] == dig(svc, "metadata", "name") and (hosts[0][1] or 6379) in svc_ports,
          f"{name}: the gateway's state url points at the store's Service ({data.get('url')})")
    envs = {e.get("name"): e for e in c.get("env", []) or []}
    refs = [dig(e, "valueFrom", "secretKeyRef", default={}) for e in envs.values()]
    check(any(r.get("name") == STATE_SECRET and r.get("key") == "password" for r in refs)
          and not any("value" in e and "PASS" in e["name"] for e in envs.values()),
          f"{name}: the store's password comes from Secret {STATE_SECRET}/password, the one the gateway reads")
    text = " ".join(as_args(c.get("command")) + as_args(c.get("args")))
    password = data.get("password", "")
    check("requirepass" in text and (not password or password not in text),
          f"{name}: the store requires a password and no password is written in its command")
    check("REPLACE-" in text and password.startswith("REPLACE-"),
          f"{name}: the store refuses to start with the shipped placeholder password")
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and dig(store, "spec", "template", "spec", "securityContext", "runAsNonRoot") is True,
          f"{name}: the store runs as non-root with a read-only root filesystem")
    check(bool(c.get("readinessProbe")) and bool(dig(c, "resources", "limits", "memory")),
          f"{name}: the store has a readiness probe and a memory limit")
    mm = re.search(r"--maxmemory\s+([0-9]+)mb", text)
    limit = quantity_bytes(dig(c, "resources", "limits", "memory", default="0")) or 0
    check(mm is not None and int(mm.group(1)) * MIB1 < limit and "noeviction" in text,
          f"{name}: --maxmemory below the memory limit, noeviction (a reservation is never evicted)")


def check_harbor_ingress(name: str, docs: list, registry_url: str) -> None:
    """Harbor's front door: the registry API and the REST API through Envoy, nothing else."""
    ingresses = [d for d in docs if d.get("kind") == "Ingress"]
    if not check(len(ingresses) == 1, f"{name}: one Ingress, Harbor's front door"):
        return
    ing = ingresses[0]
    rules = dig(ing, "spec", "rules", default=[])
    paths = {p.get("path"): (dig(p, "backend", "service", "name"), dig(p, "backend", "service", "port", "number"))
             for r in rules for p in dig(r, "http", "paths", default=[])}
    gateway = ("registry-gateway", 5000)
    check(paths.get("/v2/") == gateway, f"{name}: the Ingress sends /v2/ to registry-gateway:5000 (Envoy)")
    check(paths.get("/api/") == gateway,
          f"{name}: the Ingress sends /api/ to registry-gateway:5000 (Harbor's REST API can create tags and copy "
          "artifacts without a /v2/ manifest write)")
    check({p for p, b in paths.items() if b == gateway} == {"/v2/", "/api/"},
          f"{name}: nothing but /v2/ and /api/ goes through Envoy (the token service and the UI go to Harbor)")
    check(paths.get("/service/", ("", 0))[0] == "harbor-core" and "/" in paths,
          f"{name}: the token service (/service/) goes to harbor-core, the UI (/) to Harbor")
    check(all(p.get("pathType") == "Prefix" for r in rules for p in dig(r, "http", "paths", default=[])),
          f"{name}: every Ingress path is a Prefix")
    hosts = {r.get("host") for r in rules}
    check(len(hosts) == 1 and registry_url.startswith("https://") and registry_url[len("https://"):].rstrip("/") in hosts,
          f"{name}: the Ingress host is the host of --registry-url ({sorted(map(str, hosts))})")
    check(str(dig(ing, "metadata", "annotations", "nginx.ingress.kubernetes.io/proxy-body-size")) == "0",
          f"{name}: the Ingress sets no body size limit (layers of any size)")


# --- Istio ---------------------------------------------------------------------------------------


def bootstrap(http_filters: list, clusters: list) -> dict:
    """A minimal static config holding Istio-generated-like pieces, for `envoy --mode validate`."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "virtualInbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound_0.0.0.0_5000",
                        "route_config": {"name": "inbound|5000||", "virtual_hosts": [{
                            "name": "inbound|http|5000", "domains": ["*"],
                            "routes": [{"name": "default", "match": {"prefix": "/"},
                                        "route": {"cluster": "inbound|5000||", "timeout": "0s"}}]}]},
                        "http_filters": http_filters + [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "inbound|5000||", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "inbound|5000||", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 5000}}}}]}]},
            }] + clusters,
        }
    }


def merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def apply_listener_patches(config: dict, patches: list, what: str) -> None:
    listener = config["static_resources"]["listeners"][0]
    hcm_filter = listener["filter_chains"][0]["filters"][0]
    for p in patches:
        match = p.get("match", {})
        value = dig(p, "patch", "value", default={})
        op = dig(p, "patch", "operation")
        if p.get("applyTo") == "LISTENER" and op == "MERGE":
            check(dig(match, "listener", "name") == "virtualInbound" or dig(match, "context") == "GATEWAY",
                  f"{what}: the LISTENER patch targets `virtualInbound` (inbound listener patches match the "
                  "listener's own port, 15006, not 5000)")
            check(isinstance(value.get("per_connection_buffer_limit_bytes"), int)
                  and value["per_connection_buffer_limit_bytes"] >= MIB5,
                  f"{what}: the LISTENER patch raises per_connection_buffer_limit_bytes to at least 5 MiB "
                  "(Istio keeps 1 MiB)")
            merge(listener, value)
        elif p.get("applyTo") == "NETWORK_FILTER" and op == "MERGE":
            check(value.get("name") == "envoy.filters.network.http_connection_manager",
                  f"{what}: the NETWORK_FILTER patch merges into the HTTP connection manager")
            tc = value.get("typed_config", {})
            check(tc.get("normalize_path") is True and tc.get("merge_slashes") is True
                  and tc.get("path_with_escaped_slashes_action") == "REJECT_REQUEST",
                  f"{what}: the connection manager patch normalises paths like envoy/envoy.yaml")
            merge(hcm_filter["typed_config"], tc)


def check_envoyfilter_ext_proc(path: Path) -> None:
    name = rel(path)
    docs = load_all(path.read_text(encoding="utf-8"))
    ef = next((d for d in docs if d.get("kind") == "EnvoyFilter"), None)
    if not check(ef is not None, f"{name}: an EnvoyFilter"):
        return
    check(bool(dig(ef, "spec", "workloadSelector", "labels")), f"{name}: scoped with a workloadSelector")
    patches = dig(ef, "spec", "configPatches", default=[])
    by = {}
    for p in patches:
        by.setdefault(p.get("applyTo"), []).append(p)
    clusters = [dig(p, "patch", "value") for p in by.get("CLUSTER", []) if dig(p, "patch", "operation") == "ADD"]
    check(len(clusters) == 1, f"{name}: one CLUSTER ADD patch (the same-pod sidecar)")
    check(all(dig(c, "typed_extension_protocol_options", "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                  "explicit_http_config", "http2_protocol_options") is not None for c in clusters),
          f"{name}: the sidecar cluster speaks HTTP/2 (gRPC)")
    hf = [p for p in by.get("HTTP_FILTER", [])]
    check(len(hf) == 1 and dig(hf[0], "patch", "operation") == "INSERT_BEFORE"
          and dig(hf[0], "match", "listener", "filterChain", "filter", "subFilter", "name") == "envoy.filters.http.router",
          f"{name}: the filter is inserted before the router")
    check(all(dig(p, "match", "context") in ("SIDECAR_INBOUND", "GATEWAY") for p in patches),
          f"{name}: every patch is for SIDECAR_INBOUND or GATEWAY")
    if not hf:
        return
    value = dig(hf[0], "patch", "value")
    inner = dig(value, "typed_config", "extension_config", "typed_config", default={})
    mode = inner.get("processing_mode", {})
    check(inner.get("failure_mode_allow") is False and mode.get("request_body_mode") == "BUFFERED"
          and mode.get("response_header_mode") == "SEND",
          f"{name}: ext_proc fails closed, buffers the manifest and sees the registry's status")
    cluster_names = {c.get("name") for c in clusters}
    check(dig(inner, "grpc_service", "envoy_grpc", "cluster_name") in cluster_names,
          f"{name}: ext_proc calls the added cluster")
    check_forward_rules(name, inner)
    # The matcher must skip the filter for everything but manifest writes and Harbor API POSTs.
    matchers = dig(value, "typed_config", "xds_matcher", "matcher_list", "matchers", default=[])
    action = dig(matchers, 0, "on_match", "action", "typed_config", "@type", default="")
    check(len(matchers) == 1 and action.endswith("SkipFilter"),
          f"{name}: one matcher, whose action is SkipFilter")
    predicate = dig(matchers, 0, "predicate", default={})

    def runs(method: str, path: str) -> bool:
        return not predicate_matches(predicate, {":method": method, ":path": path})

    cases = {**MANIFEST_CASES, **HARBOR_API_CASES}
    try:
        wrong = [c for c, want in cases.items() if runs(*c) != want]
    except ValueError as e:
        wrong = [str(e)]
    check(not wrong, f"{name}: the filter runs for manifest writes and Harbor API tag-create/copy POSTs only, "
          "never for blob uploads or pulls" + ("" if not wrong else f" (wrong for {wrong})"))
    config = bootstrap([value], clusters)
    apply_listener_patches(config, by.get("LISTENER", []) + by.get("NETWORK_FILTER", []), name)
    check(bool(by.get("LISTENER")), f"{name}: has the LISTENER buffer-limit patch")
    envoy_validate(config, f"{name} (its patches applied to an inbound listener)")
    # The same, live: with no sidecar and no registry listening, a request the filter runs for
    # fails closed in ext_proc (500), any other one reaches the router (503, no upstream).
    probes = [("PUT", "/v2/a/b/c/d/e/f/g/h/i/j/manifests/v1?tag=x", 64, False),
              ("POST", "/API/v2.0/Projects/p/repositories/app/Artifacts/v1/TAGS", 16, False),
              ("POST", "/api/v2.0/projects/p/repositories/app/artifacts?from=q/src:v1", 16, False),
              ("PUT", "/v2/a/blobs/uploads/uuid?digest=sha256:" + "1" * 64, 2 * 1024 * 1024, False),
              ("PATCH", "/v2/a/blobs/uploads/uuid", 2 * 1024 * 1024, True),
              ("POST", "/api/v2.0/projects", 16, False)]
    live = copy.deepcopy(config)
    with socket.socket() as sock:  # a port nothing listens on, whatever runs on this machine
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    for cl in live["static_resources"]["clusters"]:
        if cl["name"] == "inbound|5000||":
            cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = closed_port
    statuses = envoy_probe(live, probes, f"{name}: live Envoy probe")
    if statuses is not None:
        want = ["500", "500", "500", "503", "503", "503"]
        check(statuses == want, f"{name}: with a real Envoy, manifest writes and Harbor tag POSTs reach ext_proc, "
              f"blob uploads and other calls do not (got {statuses}, want {want})")


def predicate_matches(pred: dict, headers: dict[str, str]) -> bool:
    """Evaluates an xDS matcher predicate on request headers (the forms used in envoy/istio)."""
    if "single_predicate" in pred:
        sp = pred["single_predicate"]
        if not dig(sp, "input", "typed_config", "@type", default="").endswith("HttpRequestHeaderMatchInput"):
            raise ValueError(f"unmodelled input {dig(sp, 'input', 'typed_config', '@type')}")
        value = headers.get(dig(sp, "input", "typed_config", "header_name"), "")
        vm = sp.get("value_match", {})
        if "exact" in vm:
            return value == vm["exact"]
        if "safe_regex" in vm:
            return re2_to_python(vm["safe_regex"]["regex"]).fullmatch(value) is not None
        raise ValueError(f"unmodelled value_match {vm}")
    if "and_matcher" in pred:
        return all(predicate_matches(p, headers) for p in pred["and_matcher"]["predicate"])
    if "or_matcher" in pred:
        return any(predicate_matches(p, headers) for p in pred["or_matcher"]["predicate"])
    if "not_matcher" in pred:
        return not predicate_matches(pred["not_matcher"], headers)
    raise ValueError(f"unmodelled predicate {sorted(pred)}")


def istio_template_valid(path: str) -> bool:
    """Istio's rules for path templates (AuthorizationPolicy `paths` with {*} or {**})."""
    if "{*}" not in path and "{**}" not in path:
        return True
    segments = path.split("/")
    ops = [s for s in segments if "{" in s or "}" in s or "*" in s]
    if any(s not in ("{*}", "{**}") for s in ops):
        return False  # `*` outside an operator, or other characters in an operator's segment
    if "{**}" in ops and ops.index("{**}") != len(ops) - 1:
        return False  # {**} must be the last operator
    return True


def istio_template_match(template: str, path: str) -> bool:
    path = path.split("?", 1)[0]
    parts = []
    for seg in template.split("/"):
        parts.append({"{*}": "[^/]+", "{**}": ".*"}.get(seg, re.escape(seg)))
    return re.fullmatch("/".join(parts), path) is not None


def istio_path_match(pattern: str, path: str) -> bool:
    """An AuthorizationPolicy `paths` entry against a request path (query excluded): exact,
    prefix (`/a/*`), suffix (`*/a`), presence (`*`), or a {*}/{**} template."""
    path = path.split("?", 1)[0]
    if "{*}" in pattern or "{**}" in pattern:
        return istio_template_match(pattern, path)
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def custom_rules_call(spec: dict, method: str, path: str, content_type: str = "") -> bool:
    """Whether a CUSTOM policy's rules send a request to the provider (rules are ORed; within a
    rule every field must match)."""
    for rule in spec.get("rules", []) or [{}]:
        ops = [dig(t, "operation", default={}) for t in rule.get("to", [])] or [{}]
        matched = False
        for o in ops:
            if o.get("methods") and method not in o["methods"]:
                continue
            if o.get("notMethods") and method in o["notMethods"]:
                continue
            if o.get("paths") and not any(istio_path_match(t, path) for t in o["paths"]):
                continue
            if o.get("notPaths") and any(istio_path_match(t, path) for t in o["notPaths"]):
                continue
            matched = True
        if not matched:
            continue
        when_ok = True
        for w in rule.get("when", []):
            if w.get("key") == "request.headers[content-type]":
                when_ok &= any(istio_path_match(v, content_type) for v in w.get("values", []))
            else:
                when_ok = False  # any other condition narrows the rule in ways not modelled here
        if when_ok:
            return True
    return False


OCI = "application/vnd.oci.image.manifest.v1+json"
# (method, path, content-type): must the CUSTOM rules call the sidecar?
CUSTOM_CASES = {
    ("PUT", "/v2/project-1/app/manifests/v1", OCI): True,
    ("PUT", "/v2/a/b/c/d/e/f/g/h/i/j/k/manifests/v1?tag=x", OCI): True,
    ("PUT", "/v2/project-1/app/manifests/v1", "Application/VND.OCI.Image.Manifest.v1+JSON"): True,
    ("PUT", "/v2/project-1/app/manifests/v1", ""): True,
    ("DELETE", "/v2/a/b/c/d/e/f/g/h/i/j/k/manifests/sha256:" + "0" * 64, ""): True,
    ("POST", "/api/v2.0/projects/p/repositories/app/artifacts/v1/tags", "application/json"): True,
    ("POST", "/api/v2.0/projects/p/repositories/a%252Fb/artifacts?from=q/src:v1", "application/json"): True,
    # A monolithic blob PUT matches by design (its body arrives partial; the sidecar allows it).
    ("PUT", "/v2/project-1/app/blobs/uploads/uuid?digest=sha256:" + "1" * 64, "application/octet-stream"): True,
    ("PATCH", "/v2/project-1/app/blobs/uploads/uuid", "application/octet-stream"): False,
    ("POST", "/v2/project-1/app/blobs/uploads/", ""): False,
    ("POST", "/v2/project-1/app/blobs/uploads/?digest=sha256:" + "1" * 64, "application/octet-stream"): False,
    ("GET", "/v2/project-1/app/manifests/v1", ""): False,
    ("HEAD", "/v2/project-1/app/blobs/sha256:" + "2" * 64, ""): False,
    ("GET", "/api/v2.0/projects/p/repositories/app/artifacts", ""): False,
}


def check_custom_policy(name: str, spec: dict, provider_name: str | None) -> None:
    """The CUSTOM policy of options B and ambient: PUT/DELETE everywhere, POST under /api/."""
    check(spec.get("action") == "CUSTOM", f"{name}: action CUSTOM")
    check(dig(spec, "provider", "name") == provider_name,
          f"{name}: the policy's provider is the one defined ({provider_name}); a wrong name turns into deny rules")
    rules = spec.get("rules", [])
    def shape(rule: dict) -> tuple:
        ops = [dig(t, "operation", default={}) for t in rule.get("to", [])]
        extra = set(rule) - {"to"}
        return (tuple(sorted(extra)), tuple(tuple(sorted((k, tuple(v)) for k, v in o.items())) for o in ops))
    shapes = {shape(r) for r in rules}
    put_delete = ((), ((("methods", ("PUT", "DELETE")),),))
    put_delete_swapped = ((), ((("methods", ("DELETE", "PUT")),),))
    post_api = ((), ((("methods", ("POST",)), ("paths", ("/api/*",))),))
    check(len(rules) == 2 and bool({put_delete, put_delete_swapped} & shapes),
          f"{name}: a rule for methods PUT and DELETE with no path, host, source or condition (any depth, any "
          "Content-Type)")
    check(post_api in shapes, f"{name}: a rule for method POST on paths `/api/*` only (Harbor's REST API)")
    wrong = [c for c, want in CUSTOM_CASES.items() if custom_rules_call(spec, *c) != want]
    check(not wrong, f"{name}: the rules call the sidecar for every manifest write and Harbor API POST, never for "
          "PATCH uploads, /v2/ POSTs or pulls" + ("" if not wrong else f" (wrong for {wrong})"))


def check_provider_fields(name: str, g: dict, waypoint: bool = False) -> dict:
    body = g.get("includeRequestBodyInCheck", {})
    max_bytes = body.get("maxRequestBytes")
    if waypoint:
        # No EnvoyFilter on a waypoint: its buffer stays at Envoy's 1 MiB, and a body limit above
        # the buffer turns every larger PUT into a 413.
        check(isinstance(max_bytes, int) and 0 < max_bytes <= MIB1,
              f"{name}: includeRequestBodyInCheck.maxRequestBytes <= 1 MiB ({max_bytes}): within the waypoint's "
              "buffer, which no EnvoyFilter can raise")
    else:
        check(isinstance(max_bytes, int) and max_bytes >= MIB5,
              f"{name}: includeRequestBodyInCheck.maxRequestBytes >= 5 MiB ({max_bytes}): every "
              "manifest a registry accepts arrives whole")
    check(body.get("allowPartialMessage") is True,
          f"{name}: includeRequestBodyInCheck.allowPartialMessage true (blob PUTs are matched: never a 413)")
    check(body.get("packAsBytes") is True, f"{name}: includeRequestBodyInCheck.packAsBytes true (raw_body)")
    check(g.get("failOpen") is False, f"{name}: failOpen false")
    check(g.get("statusOnError") == "503", f'{name}: statusOnError "503" (a string)')
    check(duration_seconds(g.get("timeout")) is not None and duration_seconds(g.get("timeout")) <= 10,
          f"{name}: an explicit timeout ({g.get('timeout')}; Istio's default is 600s)")
    check(g.get("port") == SIDECAR_GRPC_PORT, f"{name}: provider port {SIDECAR_GRPC_PORT}")
    return body


def istio_ext_authz_bootstrap(g: dict, body: dict) -> dict:
    """The ext_authz filter and cluster Istio generates from an envoyExtAuthzGrpc provider, in a
    minimal inbound listener."""
    authz = {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": f"outbound|{g.get('port')}||{g.get('service')}"},
                             "timeout": g.get("timeout")},
            "failure_mode_allow": g.get("failOpen"),
            "status_on_error": {"code": int(g.get("statusOnError", "403"))},
            "with_request_body": {"max_request_bytes": body.get("maxRequestBytes"),
                                  "allow_partial_message": body.get("allowPartialMessage", False),
                                  "pack_as_bytes": body.get("packAsBytes", False)},
        },
    }
    cluster = {
        "name": f"outbound|{g.get('port')}||{g.get('service')}", "type": "STRICT_DNS", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "x", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": g.get("service"), "port_value": g.get("port")}}}}]}]},
    }
    return bootstrap([authz], [cluster])


def check_ext_authz_provider(path: Path) -> None:
    name = rel(path)
    docs = load_all(path.read_text(encoding="utf-8"))
    kinds = {d.get("kind") for d in docs}
    check({"IstioOperator", "AuthorizationPolicy", "EnvoyFilter"} <= kinds,
          f"{name}: the mesh provider (IstioOperator meshConfig), the AuthorizationPolicy and the buffer EnvoyFilter")
    op = next((d for d in docs if d.get("kind") == "IstioOperator"), {})
    providers = dig(op, "spec", "meshConfig", "extensionProviders", default=[])
    provider = next((p for p in providers if "envoyExtAuthzGrpc" in p), None)
    if not check(provider is not None, f"{name}: an envoyExtAuthzGrpc extension provider"):
        return
    g = provider["envoyExtAuthzGrpc"]
    body = check_provider_fields(name, g)

    policies = [d for d in docs if d.get("kind") == "AuthorizationPolicy"]
    check(len(policies) == 1, f"{name}: one AuthorizationPolicy")
    for pol in policies:
        spec = pol.get("spec", {})
        check(bool(dig(spec, "selector", "matchLabels")), f"{name}: the policy selects the registry's pods")
        check_custom_policy(name, spec, provider.get("name"))

    # What Istio generates from the provider, plus the EnvoyFilter's patches, validated by Envoy.
    config = istio_ext_authz_bootstrap(g, body)
    efs = [d for d in docs if d.get("kind") == "EnvoyFilter"]
    patches = [p for ef in efs for p in dig(ef, "spec", "configPatches", default=[])]
    check(any(p.get("applyTo") == "LISTENER" for p in patches), f"{name}: has the LISTENER buffer-limit patch")
    unpatched = copy.deepcopy(config)
    apply_listener_patches(config, patches, name)
    envoy_validate(config, f"{name} (the ext_authz filter Istio generates, with the patches applied)")
    listener_buffer = dig(config, "static_resources", "listeners", 0, "per_connection_buffer_limit_bytes", default=0)
    check(listener_buffer >= body.get("maxRequestBytes", 0),
          f"{name}: the listener buffer ({listener_buffer}) holds maxRequestBytes ({body.get('maxRequestBytes')}); "
          "a smaller one answers 413 to every larger body")
    probe_partial_body(name, config, unpatched)


def probe_partial_body(name: str, config: dict, unpatched: dict | None) -> None:
    """A real Envoy with this ext_authz filter: a 20 MiB blob PUT (sized and chunked) must reach
    the check (no sidecar here: 503 from status_on_error), never a 413 from Envoy."""
    big = 20 * 1024 * 1024
    reqs = [("PUT", "/v2/project-1/app/blobs/uploads/uuid?digest=sha256:" + "1" * 64, big, False),
            ("PUT", "/v2/project-1/app/blobs/uploads/uuid?digest=sha256:" + "1" * 64, big, True),
            ("PUT", "/v2/project-1/app/manifests/v1", 3 * 1024 * 1024, False)]
    statuses = envoy_probe(config, reqs, f"{name}: live Envoy probe")
    if statuses is not None:
        check("413" not in statuses and all(st == "503" for st in statuses),
              f"{name}: with a real Envoy, 20 MiB blob PUTs (sized and chunked) and a 3 MiB manifest reach the check "
              f"(503: no sidecar here), never 413 (got {statuses})")
    if unpatched is not None:
        control = envoy_probe(unpatched, reqs[:1], f"{name}: live Envoy probe without the buffer patch")
        if control is not None:
            print(f"    note: without the LISTENER buffer patch the same 20 MiB PUT gets {control[0]} "
                  "(why the patch is needed)")


def check_ambient_waypoint(path: Path) -> None:
    name = rel(path)
    docs = load_all(path.read_text(encoding="utf-8"))
    op = next((d for d in docs if d.get("kind") == "IstioOperator"), {})
    mesh = dig(op, "spec", "meshConfig", default={})
    provider = next((p for p in mesh.get("extensionProviders", []) if "envoyExtAuthzGrpc" in p), None)
    if not check(provider is not None, f"{name}: an envoyExtAuthzGrpc extension provider in the mesh configuration"):
        return
    g = provider["envoyExtAuthzGrpc"]
    body = check_provider_fields(name, g, waypoint=True)
    check(dig(mesh, "pathNormalization", "normalization") in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"),
          f"{name}: mesh pathNormalization merges slashes (no EnvoyFilter can on a waypoint)")
    check(not any(d.get("kind") == "EnvoyFilter" for d in docs), f"{name}: no EnvoyFilter (waypoints ignore them)")

    gateways = [d for d in docs if d.get("kind") == "Gateway"]
    gw = gateways[0] if len(gateways) == 1 else {}
    gw_name, ns = dig(gw, "metadata", "name"), dig(gw, "metadata", "namespace")
    listener = dig(gw, "spec", "listeners", 0, default={})
    check(dig(gw, "spec", "gatewayClassName") == "istio-waypoint" and listener.get("protocol") == "HBONE"
          and listener.get("port") == 15008,
          f"{name}: one waypoint Gateway (class istio-waypoint, HBONE on 15008)")
    check(dig(gw, "metadata", "labels", "istio.io/waypoint-for") == "all",
          f"{name}: the waypoint takes traffic addressed to the Service and to the pods (waypoint-for: all)")

    policies = [d for d in docs if d.get("kind") == "AuthorizationPolicy"]
    custom = [d for d in policies if dig(d, "spec", "action") == "CUSTOM"]
    check(len(custom) == 1, f"{name}: one CUSTOM AuthorizationPolicy")
    for pol in custom:
        spec = pol.get("spec", {})
        refs = spec.get("targetRefs", [])
        check(bool(refs) and "selector" not in spec,
              f"{name}: the CUSTOM policy uses targetRefs and no selector (a selector would go to ztunnel, which "
              "cannot enforce HTTP rules)")
        check(all(r.get("kind") == "Gateway" and r.get("group") == "gateway.networking.k8s.io"
                  and r.get("name") == gw_name for r in refs) and dig(pol, "metadata", "namespace") == ns,
              f"{name}: targetRefs name the waypoint Gateway `{gw_name}` of the same namespace")
        check_custom_policy(name, spec, provider.get("name"))
    allow = [d for d in policies if dig(d, "spec", "action") == "ALLOW"]
    principals = [p for d in allow for r in dig(d, "spec", "rules", default=[])
                  for f in r.get("from", []) for p in dig(f, "source", "principals", default=[])]
    check(bool(allow) and all(dig(d, "spec", "selector", "matchLabels") for d in allow)
          and principals == [f"cluster.local/ns/{ns}/sa/{gw_name}"],
          f"{name}: an L4 ALLOW policy on the registry's pods admits the waypoint's identity only (no way around it)")

    # What Istio generates on the waypoint: the ext_authz filter with Envoy's default buffer.
    config = istio_ext_authz_bootstrap(g, body)
    envoy_validate(config, f"{name} (the ext_authz filter Istio generates on the waypoint)")
    probe_partial_body(name, config, None)


def check_istio() -> None:
    step("Istio (envoy/istio/*.yaml)")
    d = ROOT / "envoy" / "istio"
    for fname, fn in (("envoyfilter-ext-proc.yaml", check_envoyfilter_ext_proc),
                      ("ext-authz-provider.yaml", check_ext_authz_provider),
                      ("ambient-waypoint.yaml", check_ambient_waypoint)):
        if check((d / fname).is_file(), f"envoy/istio/{fname} exists"):
            fn(d / fname)


# --- Envoy Gateway (Gateway API) -----------------------------------------------------------------


def quantity_bytes(q) -> int | None:
    """A Kubernetes resource.Quantity as bytes (the forms Envoy Gateway accepts for buffers)."""
    m = re.fullmatch(r"([0-9]+)([KMGTPE]i|[kMGTPE])?", str(q))
    if not m:
        return None
    binary = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
    decimal = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
    n, unit = int(m.group(1)), m.group(2)
    if unit is None:
        return n
    return n * (1024 ** binary[unit] if unit in binary else 1000 ** decimal[unit])


def httproute_selects(rule: dict, method: str, path: str) -> bool:
    """Whether a Gateway API HTTPRoute rule matches a request (path without its query; Envoy
    Gateway's RegularExpression is Envoy's full-match safe_regex)."""
    path = path.split("?", 1)[0]
    for m in rule.get("matches", []) or [{}]:
        if m.get("method") and m["method"] != method:
            continue
        pm = m.get("path", {"type": "PathPrefix", "value": "/"})
        kind, value = pm.get("type", "PathPrefix"), pm.get("value", "/")
        if kind == "Exact" and path != value:
            continue
        if kind == "PathPrefix" and not (path == value or path.startswith(value.rstrip("/") + "/") or value == "/"):
            continue
        if kind == "RegularExpression" and not re2_to_python(value).fullmatch(path):
            continue
        return True
    return False


def check_gateway_api() -> None:
    directory = "envoy/gateway-api"
    step(f"Envoy Gateway ({directory}, kubectl kustomize)")
    out = run([tool("KUBECTL_BIN"), "kustomize", directory], f"kubectl kustomize {directory}")
    if out is None:
        return
    docs = load_all(out)
    ok(f"kubectl kustomize {directory} renders ({len(docs)} objects)")
    name = directory
    routes = {dig(d, "metadata", "name"): d for d in docs if d.get("kind") == "HTTPRoute"}
    writes, catch_all = routes.get("registry-writes", {}), routes.get("registry", {})
    if not check(bool(writes) and bool(catch_all), f"{name}: HTTPRoutes registry-writes and registry"):
        return
    rules = {r.get("name"): r for r in dig(writes, "spec", "rules", default=[])}
    mw, harbor = rules.get("manifest-write", {}), rules.get("harbor-api-write", {})
    check(set(rules) == {"manifest-write", "harbor-api-write"},
          f"{name}: registry-writes has exactly the rules manifest-write and harbor-api-write")
    regexes = {m.get("method"): dig(m, "path", "value") for m in mw.get("matches", [])
               if dig(m, "path", "type") == "RegularExpression"}
    check(regexes == {"PUT": "^/v2/.+/manifests/[^/]+$", "DELETE": "^/v2/.+/manifests/[^/]+$"},
          f"{name}: manifest-write matches PUT and DELETE on the RegularExpression ^/v2/.+/manifests/[^/]+$")
    wrong = [c for c, want in MANIFEST_CASES.items() if httproute_selects(mw, *c) != want]
    check(not wrong, f"{name}: manifest-write selects manifest writes and nothing else"
          + ("" if not wrong else f" (wrong for {wrong})"))
    hregex = [dig(m, "path", "value", default="") for m in harbor.get("matches", [])]
    check(len(hregex) == 1 and hregex[0].startswith("(?i)"), f"{name}: harbor-api-write matches case-insensitively")
    wrong = [c for c, want in HARBOR_API_CASES.items() if httproute_selects(harbor, *c) != want]
    check(not wrong, f"{name}: harbor-api-write selects POST tag creation and artifact copy only"
          + ("" if not wrong else f" (wrong for {wrong})"))
    ca_rules = dig(catch_all, "spec", "rules", default=[])
    check(len(ca_rules) == 1 and dig(ca_rules[0], "matches", 0, "path") == {"type": "PathPrefix", "value": "/"}
          and dig(ca_rules[0], "timeouts", "request") == "0s",
          f"{name}: the catch-all route (PathPrefix /) has no request timeout (timeouts.request 0s: blob uploads)")
    backends = {(b.get("name"), b.get("port")) for d in (writes, catch_all)
                for r in dig(d, "spec", "rules", default=[]) for b in r.get("backendRefs", [])}
    check(len(backends) == 1, f"{name}: both routes go to the same registry backend ({sorted(backends)})")

    def targets(d: dict) -> set:
        return {(t.get("kind"), t.get("name")) for t in dig(d, "spec", "targetRefs", default=[])}

    eeps = [d for d in docs if d.get("kind") == "EnvoyExtensionPolicy"]
    check(len(eeps) == 1 and targets(eeps[0]) == {("HTTPRoute", "registry-writes")},
          f"{name}: one EnvoyExtensionPolicy, targeting the HTTPRoute registry-writes only (never the catch-all)")
    for eep in eeps:
        procs = dig(eep, "spec", "extProc", default=[])
        proc = procs[0] if len(procs) == 1 else {}
        check(dig(proc, "processingMode", "request", "body") == "Buffered",
              f"{name}: extProc request body Buffered (the whole manifest in one message)")
        check(dig(proc, "processingMode", "response") is not None and
              dig(proc, "processingMode", "response", "body") is None,
              f"{name}: extProc sends the response headers (the registry's 201/202), not its body")
        check(proc.get("failOpen") is False, f"{name}: extProc failOpen false (fail closed)")
        check(duration_seconds(proc.get("messageTimeout")) is not None and 1 <= duration_seconds(proc["messageTimeout"]) <= 10,
              f"{name}: extProc messageTimeout between 1s and 10s ({proc.get('messageTimeout')}; default 200ms)")
        ref = dig(proc, "backendRefs", 0, default={})
        check(ref.get("name") == "registry-gateway" and ref.get("port") == SIDECAR_GRPC_PORT,
              f"{name}: extProc calls the Service registry-gateway on {SIDECAR_GRPC_PORT}")
        grant = next((d for d in docs if d.get("kind") == "ReferenceGrant"
                      and dig(d, "metadata", "namespace") == ref.get("namespace")), None)
        if ref.get("namespace") and ref.get("namespace") != dig(eep, "metadata", "namespace"):
            check(grant is not None and any(f.get("kind") == "EnvoyExtensionPolicy"
                                            and f.get("namespace") == dig(eep, "metadata", "namespace")
                                            for f in dig(grant, "spec", "from", default=[])),
                  f"{name}: a ReferenceGrant in {ref.get('namespace')} allows the cross-namespace backendRef")
    ctps = [d for d in docs if d.get("kind") == "ClientTrafficPolicy"]
    gateways = {("Gateway", dig(d, "metadata", "name")) for d in docs if d.get("kind") == "Gateway"}
    check(len(ctps) == 1 and dig(ctps[0], "spec", "path", "escapedSlashesAction") == "RejectRequest"
          and dig(ctps[0], "spec", "path", "disableMergeSlashes") is not True,
          f"{name}: ClientTrafficPolicy rejects escaped slashes and merges slashes")
    check(all(targets(d) and targets(d) <= gateways for d in ctps),
          f"{name}: the ClientTrafficPolicy targets the Gateway the routes attach to")
    btps = [d for d in docs if d.get("kind") == "BackendTrafficPolicy"]
    limits = [quantity_bytes(dig(d, "spec", "requestBuffer", "limit")) for d in btps
              if ("HTTPRoute", "registry-writes") in targets(d)]
    check(len(limits) == 1 and limits[0] is not None and limits[0] >= MIB5,
          f"{name}: a BackendTrafficPolicy on registry-writes sets requestBuffer.limit >= 5 MiB ({limits}; "
          "Envoy Gateway's default buffer is 32 KiB)")
    check(all(dig(d, "spec", "requestBuffer", "mode") == "LimitOnly" for d in btps if dig(d, "spec", "requestBuffer")),
          f"{name}: requestBuffer mode LimitOnly (ext_proc buffers; the gateway does not buffer on its own)")
    check(not any(("HTTPRoute", "registry") in targets(d) for d in eeps)
          and not any(("HTTPRoute", "registry") in targets(d) and dig(d, "spec", "requestBuffer") for d in btps),
          f"{name}: nothing buffers or calls the sidecar on the catch-all route")
    for route in ("registry-writes", "registry"):
        cbs = [dig(d, "spec", "circuitBreaker", default={}) for d in btps if ("HTTPRoute", route) in targets(d)]
        keys = ("maxConnections", "maxPendingRequests", "maxParallelRequests")
        check(len(cbs) == 1 and all(isinstance(cbs[0].get(k), int) and cbs[0][k] >= 10000 for k in keys),
              f"{name}: a BackendTrafficPolicy on {route} raises the circuit breakers to 10,000 ({cbs})")
    print("    note: Envoy Gateway's extProc has no forward_rules; every request header reaches the sidecar there "
          "(ext-proc.yaml says so)")


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    unknown = [a for a in sys.argv[1:] if a != "--sync"]
    if unknown:
        print(f"usage: scripts/check-deploy [--sync]   (unknown: {' '.join(unknown)})", file=sys.stderr)
        return 2
    sync = "--sync" in sys.argv[1:]
    ext_proc = check_envoy_files()
    check_pod_copies(sync)
    check_dockerfile()
    check_compose(ext_proc)
    check_kustomize("deploy/kubernetes", ext_proc, harbor=False)
    check_kustomize("deploy/kubernetes/overlays/harbor", ext_proc, harbor=True)
    check_kustomize("deploy/kubernetes/overlays/valkey", ext_proc, harbor=False, valkey=True)
    check_kustomize("deploy/kubernetes/overlays/mesh", ext_proc, harbor=False, mesh=True)
    check_istio()
    check_gateway_api()
    print()
    if FAILURES:
        print(f"check-deploy: {len(FAILURES)} check(s) FAILED:", file=sys.stderr)
        for f in FAILURES:
            print(f"  - {f.splitlines()[0]}", file=sys.stderr)
        return 1
    print("check-deploy: all deployment checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
