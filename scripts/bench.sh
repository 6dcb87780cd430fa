#!/usr/bin/env bash
# Benchmarks with a real Caddy (built without the race detector) and print
# their figures; the README quotes them. About five minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -benchtime 1x -timeout 30m \
	-bench '^Benchmark(ShutdownUnderLoad|ProxyThroughput|Respawn|RSSPerProcess|ReloadsUnderLoad|BlueGreenReload|Socket)$' .
go test -run '^$' -benchtime 5x -bench '^BenchmarkOutputLines$' .
