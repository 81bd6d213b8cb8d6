#!/usr/bin/env bash
# Resident memory of a kiln host as plugins are deployed: the host's VmRSS
# (from /proc/<pid>/status) after start, then after each upload. Each
# component is deployed under two names, so the second line of a component
# shows what one more deployment of the same bytes costs.
#
#   bench/plugin-memory.sh KILN_BINARY COMPONENT.wasm...
#
# A fresh database and compile cache every run: the first upload compiles.
set -euo pipefail
kiln=$1; shift
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
mkdir "$dir/plugins"
port=$((20000 + RANDOM % 20000))
base="http://127.0.0.1:$port"
"$kiln" serve --db "sqlite://$dir/kiln.db" --listen "127.0.0.1:$port" \
  --plugins "$dir/plugins" --admin-token t >"$dir/log" 2>&1 &
pid=$!
until curl -sf "$base/healthz" >/dev/null; do sleep 0.2; done
rss() {
  awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s %d MiB  ", $1, $2 / 1024}' "/proc/$pid/status"
  if [ -n "${KILN_MEMORY_MAPS:-}" ]; then
    echo; awk '/^[0-9a-f]+-/ {m=$0} /^Rss:/ && $2 > 8192 {print "   ", $2 / 1024, "MiB", m}' "/proc/$pid/smaps"
  fi
}
echo "started: $(rss)"
n=0
for wasm in "$@"; do
  for copy in 1 2; do
    n=$((n + 1))
    name="p${n}"
    start=$(date +%s.%N)
    code=$(curl -s -o "$dir/answer" -w '%{http_code}' -X PUT --data-binary "@$wasm" \
      -H 'authorization: Bearer t' -H 'content-type: application/wasm' "$base/plugins/$name")
    took=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
    sleep 3
    echo "$(basename "$wasm") as $name (copy $copy): HTTP $code in $took s, $(rss)"
  done
done
