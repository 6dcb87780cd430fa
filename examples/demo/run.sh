#!/usr/bin/env bash
# Builds Caddy with this module (cmd/caddy) and the example upstream into
# ./bin, then runs the demo Caddyfile in the foreground. Needs only Go.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p bin
echo "building bin/caddy and bin/upstream..." >&2
go build -o bin/caddy ./cmd/caddy
go build -o bin/upstream ./examples/upstream
export UPSTREAM="$PWD/bin/upstream"
# the demo's ports must be free: say which is not, and how to move it
for p in "DEMO_PORT:${DEMO_PORT:-8080}" "DEMO_UPSTREAM_PORT:${DEMO_UPSTREAM_PORT:-3000}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/${p#*:}") 2>/dev/null; then
		echo "port ${p#*:} is in use by another program: stop it, or run with ${p%%:*}=<another port>" >&2
		exit 1
	fi
done
cat >&2 <<MSG

Demo: http://localhost:${DEMO_PORT:-8080}/ is proxied to the supervised upstream.
Try, in another terminal:   curl "localhost:${DEMO_PORT:-8080}/sleep?d=5s"
and press Ctrl-C here while it runs: the request completes with 200, then
the upstream gets SIGTERM, then Caddy exits.

MSG
exec bin/caddy run --config examples/demo/Caddyfile --adapter caddyfile
