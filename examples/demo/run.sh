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
cat >&2 <<MSG

Demo: http://localhost:${DEMO_PORT:-8080}/ is proxied to the supervised upstream.
Try, in another terminal:   curl "localhost:${DEMO_PORT:-8080}/sleep?d=5s"
and press Ctrl-C here while it runs: the request completes with 200, then
the upstream gets SIGTERM, then Caddy exits.

MSG
exec bin/caddy run --config examples/demo/Caddyfile --adapter caddyfile
