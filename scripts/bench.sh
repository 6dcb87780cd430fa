#!/usr/bin/env bash
# Benchmarks with a real Caddy (built without the race detector) and print
# their figures; docs/benchmarks.md quotes them. Then the engine's
# simulation for 20 minutes (issue 29), and the long randomized transition
# soak (issue 18): 170 steps of each variant (680 in all) with the example
# upstream, and 60 of each with Debian's Puma. About 50 minutes on two
# cores. SUPERVISE_SOAK_SEED repeats a soak.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh bench
go test -run '^$' -benchtime 1x -timeout 30m \
	-bench '^Benchmark(ShutdownUnderLoad|ProxyThroughput|Respawn|RSSPerProcess|ReloadsUnderLoad|BlueGreenReload|Socket|StreamsThroughRestart|PoolThroughput|PoolRollingRestart|Canary)$' .
go test -run '^$' -benchtime 5x -bench '^BenchmarkOutputLines$' .
# the one line against hand-written configs and Go's proxy, with wrk (issue 20)
go test -run '^$' -benchtime 1x -timeout 30m -bench '^BenchmarkOneLine$' . | tr '\t' '\n' | sed 's/^ *//'
# the engine's simulation for 20 minutes on one core (issue 29)
GOMAXPROCS=1 SUPERVISE_SIM_DURATION=20m go test -count=1 -timeout 40m -run '^TestSimulation$' -v . | grep -E '^(simulation|first seed|---)|seed [0-9]+:'
soak() { go test -count=1 -timeout 60m -run '^TestSoak$' -v . | grep -vE '^\s+\{' ; }
SUPERVISE_SOAK_STEPS=170 soak
SUPERVISE_SOAK_APP=puma SUPERVISE_SOAK_STEPS=60 soak
