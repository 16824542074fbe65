#!/usr/bin/env bash
# Usage: check_opa_version.sh OPA_BIN VERSION (e.g. v1.22.0). Exit 0 if OPA_BIN is that version;
# otherwise print a warning and exit 1. The output is read whole before matching: `| grep -q`
# exits at the first match and, under pipefail, the writer's SIGPIPE made a match look like a miss.
set -euo pipefail
opa_bin=$1 want=${2#v}
out=$("$opa_bin" version 2>&1) || true
while IFS= read -r line; do
  [ "$line" = "Version: $want" ] && exit 0
done <<<"$out"
printf 'bootstrap: warning: %s is not OPA v%s (%s)\n' "$opa_bin" "$want" "$(head -n1 <<<"$out")"
exit 1
