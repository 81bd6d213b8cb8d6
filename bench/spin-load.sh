#!/usr/bin/env bash
# Spins beside deposits: SPINS concurrent commands of the spin fixture (its
# `handle` never returns) with a plugin time limit of LIMIT_MS, while one
# client sends deposits to `bank_account` until every spin is answered.
# Prints the spins' status codes and answer times, and the deposits' times.
#
#   bench/spin-load.sh KILN_BINARY SPINS LIMIT_MS    (EXTRA="--plugin-concurrency 8" to tune)
#
# Run from the repository root after `cargo build -p kiln` (the fixtures are
# built into target/plugins by the build).
set -u
kiln=$1; spins=$2; limit=$3
dir=$(mktemp -d); mkdir $dir/plugins
cp target/plugins/bank_account.wasm target/plugins/fixtures/fixture_spin.wasm $dir/plugins/
port=$((20000 + RANDOM % 20000)); base=http://127.0.0.1:$port
$kiln serve --db sqlite://$dir/k.db --listen 127.0.0.1:$port --plugins $dir/plugins --command-timeout-ms $limit ${EXTRA:-} >$dir/log 2>&1 &
pid=$!
until curl -sf $base/healthz >/dev/null; do sleep 0.2; done
curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"type":"Open","data":{"owner":"o"}}' $base/commands/bank_account/d1
seq $spins | xargs -P $spins -I{} curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST -H 'content-type: application/json' -d '{"type":"Spin","data":{}}' $base/commands/fixture_spin/s{} > $dir/spins &
spinner=$!
sleep 0.3
: > $dir/deps
while kill -0 $spinner 2>/dev/null; do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST -H 'content-type: application/json' -d '{"type":"Deposit","data":{"amount":1}}' $base/commands/bank_account/d1 >> $dir/deps
done
echo "spins: $(cut -d' ' -f1 $dir/spins | sort | uniq -c | tr '\n' ' ') time min/max: $(cut -d' ' -f2 $dir/spins | sort -n | sed -n '1p;$p' | tr '\n' ' ')"
echo "deposits: $(wc -l < $dir/deps), codes $(cut -d' ' -f1 $dir/deps | sort | uniq -c | tr '\n' ' '), p50/p99/max: $(cut -d' ' -f2 $dir/deps | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99)+1; if (i>NR) i=NR; print a[int(NR*0.5)+1], a[i], a[NR]}')"
kill $pid; wait $pid 2>/dev/null; rm -rf $dir
