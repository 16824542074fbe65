#!/usr/bin/env bash
# Installs what the benchmarks need and this machine lacks, and nothing it already has:
#   h2load          Debian's nghttp2-client (apt-get, when root)            -- gate and `make bench`
#   bin/ratelimit   envoyproxy/ratelimit at a pinned commit, `go install`   -- `make bench` peer D
#   bin/opa-envoy-plugin  the Go OPA-Envoy peer, `go install`               -- `make bench` peer D
#     (when the Go module proxy refuses it, bin/opa-authz is built instead from bench/peers/opa-authz:
#      the same design on OPA's Go library; the report says which one ran)
# Usage: scripts/install_bench_tools.sh [--minimal]   (--minimal: h2load only, for the CI gate)
# A peer that cannot be installed is reported and skipped; `make bench` runs without it.
set -uo pipefail
cd "$(dirname "$0")/.."

RATELIMIT_MODULE="github.com/envoyproxy/ratelimit/src/service_cmd"
RATELIMIT_VERSION="v1.4.1-0.20260122083618-3fb702589d36"  # main @ 3fb702589d36, 2026-01-22
OPA_ENVOY_MODULE="github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin"
OPA_ENVOY_VERSION="v1.19.1-envoy"

say() { printf 'install_bench_tools: %s\n' "$*"; }
status=0

if ! command -v h2load >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install nghttp2-client (h2load)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null \
      || { say "apt-get install nghttp2-client failed"; status=1; }
  else
    say "please install h2load (Debian: sudo apt-get install nghttp2-client)"; status=1
  fi
fi
[ "${1:-}" = "--minimal" ] && exit $status

if ! command -v go >/dev/null 2>&1; then
  say "no Go toolchain: the Go peers (path D) are skipped"
  exit $status
fi
mkdir -p bin
export GOFLAGS=-buildvcs=false

# `go install` names the binary after its directory (service_cmd); keep a clear name and a stamp
# of the version it was built from, so a changed pin rebuilds.
if [ "$(cat bin/.ratelimit.version 2>/dev/null)" != "$RATELIMIT_VERSION" ] || [ ! -x bin/ratelimit ]; then
  say "go install envoyproxy/ratelimit@$RATELIMIT_VERSION"
  tmp=$(mktemp -d)
  if GOBIN="$tmp" go install "$RATELIMIT_MODULE@$RATELIMIT_VERSION"; then
    mv "$tmp/service_cmd" bin/ratelimit && echo "$RATELIMIT_VERSION" > bin/.ratelimit.version
  else
    say "envoyproxy/ratelimit could not be installed: peer D runs without it"
  fi
  rm -rf "$tmp"
fi

if [ ! -x bin/opa-envoy-plugin ] && [ ! -f bin/.opa-envoy-plugin.refused ]; then
  say "go install opa-envoy-plugin@$OPA_ENVOY_VERSION"
  if GOBIN="$PWD/bin" go install "$OPA_ENVOY_MODULE@$OPA_ENVOY_VERSION" 2>bin/.opa-envoy-plugin.log; then
    rm -f bin/.opa-envoy-plugin.log
  else
    # Remember the refusal (the reason goes into the report); delete the file to try again.
    tail -n 3 bin/.opa-envoy-plugin.log > bin/.opa-envoy-plugin.refused
    rm -f bin/.opa-envoy-plugin.log
    say "opa-envoy-plugin could not be installed: $(head -n 1 bin/.opa-envoy-plugin.refused)"
  fi
fi
if [ ! -x bin/opa-envoy-plugin ]; then
  src_sum=$(cat bench/peers/opa-authz/go.mod bench/peers/opa-authz/go.sum bench/peers/opa-authz/*.go \
    | sha256sum | cut -c1-16)
  if [ "$(cat bin/.opa-authz.stamp 2>/dev/null)" != "$src_sum" ] || [ ! -x bin/opa-authz ]; then
    say "building bin/opa-authz (opa-envoy-plugin's design on OPA's Go library; ~1 min)"
    if (cd bench/peers/opa-authz && go build -trimpath -o ../../../bin/opa-authz .); then
      echo "$src_sum" > bin/.opa-authz.stamp
    else
      say "bin/opa-authz could not be built: peer D runs without an OPA peer"
    fi
  fi
fi
exit $status
