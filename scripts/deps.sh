#!/usr/bin/env bash
# Installs the real app servers the tests run, from Debian's packages, when
# they are missing: Puma 5.6 (and Ruby's Rack), gunicorn 20.1, uvicorn 0.17,
# Rails 6.1 (ruby-railties: a one-file app is a real Rails stack) with
# Action Cable (ruby-actioncable), python3-websockets for uvicorn's
# WebSockets, Node's ws (node-ws, and nodejs if there is no node), and
# setcap (libcap2-bin) for the capability tests, strace to see which
# system calls send files; `deps.sh bench` adds wrk for scripts/bench.sh;
# `deps.sh containers` adds podman (with its recommended packages: the
# pause image of a pod needs catatonit), runc, debootstrap, and
# systemd-analyze, ss and curl where missing, for scripts/e2e-containers.sh.
# Needs root (or sudo) and
# apt-get; elsewhere the tests that need a package skip and say which.
set -euo pipefail
need=()
command -v puma >/dev/null 2>&1 || need+=(puma)
[ -x /usr/bin/gunicorn ] || need+=(gunicorn)
/usr/bin/python3 -c "import uvicorn" >/dev/null 2>&1 || need+=(python3-uvicorn)
/usr/bin/python3 -c "import websockets" >/dev/null 2>&1 || need+=(python3-websockets)
command -v node >/dev/null 2>&1 || need+=(nodejs)
[ -f /usr/share/nodejs/ws/package.json ] || need+=(node-ws)
ruby -e 'require "action_controller/railtie"' >/dev/null 2>&1 || need+=(ruby-railties)
ruby -e 'require "action_cable/engine"' >/dev/null 2>&1 || need+=(ruby-actioncable)
command -v setcap >/dev/null 2>&1 || [ -x /usr/sbin/setcap ] || need+=(libcap2-bin)
command -v strace >/dev/null 2>&1 || need+=(strace)
[ "${1:-}" != bench ] || command -v wrk >/dev/null 2>&1 || need+=(wrk)
containers=()
if [ "${1:-}" = containers ]; then
	command -v podman >/dev/null 2>&1 || containers+=(podman)
	command -v runc >/dev/null 2>&1 || containers+=(runc)
	command -v debootstrap >/dev/null 2>&1 || containers+=(debootstrap)
	command -v systemd-analyze >/dev/null 2>&1 || containers+=(systemd)
	command -v ss >/dev/null 2>&1 || containers+=(iproute2)
	command -v curl >/dev/null 2>&1 || containers+=(curl)
fi
[ ${#need[@]} -eq 0 ] && [ ${#containers[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: no apt-get; tests that need ${need[*]} ${containers[*]} will skip" >&2
	exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
echo "deps: installing ${need[*]} ${containers[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
[ ${#need[@]} -eq 0 ] || "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
[ ${#containers[@]} -eq 0 ] || "${sudo[@]}" apt-get install -y -qq "${containers[@]}" >/dev/null
