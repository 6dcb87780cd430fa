#!/usr/bin/env bash
# The test suite: what the README's test command and CI (.ci/run) run.
# Installs the real app servers the tests run (scripts/deps.sh: Debian
# packages, when missing); the tests build the Caddy binary and the example
# upstream they run. Then each fuzz target runs briefly (FUZZTIME, default
# 10s), and the deployment examples run in real containers
# (scripts/e2e-containers.sh: podman; it says so and skips without root,
# except under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
go test -race -count=1 -timeout 40m ./...
for target in FuzzCaddyfile FuzzProcessJSON FuzzEnvFile FuzzWSFrames; do
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "${FUZZTIME:-10s}" .
done
bash scripts/e2e-containers.sh
