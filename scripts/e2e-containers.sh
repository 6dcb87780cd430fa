#!/usr/bin/env bash
# The deployment examples in real containers, with podman (scripts/test.sh
# runs it after the Go tests; alone: bash scripts/e2e-containers.sh).
#
#  1. Builds examples/docker/Dockerfile from a Rails app's root (the test app,
#     testdata/rails, with examples/rails/Caddyfile as its config/Caddyfile)
#     and this checkout as the "supervise" build context, with local base
#     images in place of the public ones (no registry is reachable here):
#     Debian bookworm from debootstrap (the mirror apt uses), a Ruby image
#     with Debian's ruby-railties and puma (no gem registry either: the
#     Rails build stage of a real app, bundle install and assets, is not
#     what this tests), and a Go image with this machine's toolchain (and
#     its GOPROXY and CA certificates; Go's module cache is mounted into
#     the build, so only what it lacks is downloaded).
#  2. Runs it with the Dockerfile's own `docker run` line, with two changes:
#     the port is published on 127.0.0.1 at a free port, and SITE_ADDRESS is
#     :80 (no ACME here). 16 clients put load on it; `caddy reload` through
#     the admin socket (the Rails Caddyfile's command) under that load; then
#     a slow request is in flight and `podman stop` stops the container:
#     it prints "N ok, 0 failed".
#  3. Runs examples/kubernetes/deployment.yaml with `podman kube play`
#     (changed: the image's name, one replica with a hostPort on 127.0.0.1,
#     no Secret for RAILS_MASTER_KEY), says what podman made of
#     terminationGracePeriodSeconds and the probe, and stops the pod under
#     load, with a request in flight, the same way (`podman stop -t 30` of
#     its container: SIGTERM, SIGKILL after the grace period, the network
#     kept meanwhile, as Kubernetes deletes a pod).
#  4. Checks examples/systemd/caddy.service with `systemd-analyze verify`,
#     in a root directory that has the unit's binary.
#
# Needs root (podman, debootstrap) and apt-get for podman, runc and
# debootstrap. podman runs with a containers.conf of this script's own
# (runc: crun refuses cgroups in hybrid mode; no RLIMIT_NOFILE raise, which
# containers may not do here): nothing under /etc changes. The base images
# stay as a cache (localhost/supervise-e2e/*; `podman rmi` them to free the
# space), with Go's build cache under $SUPERVISE_E2E_CACHE
# (/var/cache/caddy-supervise-e2e). Containers, pods and volumes it made
# are removed, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cache=${SUPERVISE_E2E_CACHE:-/var/cache/caddy-supervise-e2e}
say() { printf 'e2e-containers: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
	[ "${CI:-}" != true ] || die "needs root (podman and debootstrap)"
	say "skipped: needs root (podman and debootstrap)"
	exit 0
fi
bash scripts/deps.sh containers
for tool in podman runc debootstrap systemd-analyze ss curl; do
	command -v "$tool" >/dev/null 2>&1 && continue
	[ "${CI:-}" != true ] || die "$tool is missing"
	say "skipped: $tool is missing"
	exit 0
done

work=$(mktemp -d /tmp/supervise-e2e.XXXXXX)
mkdir -p "$cache/go-build"
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf

# every object this script makes is named supervise-e2e-*: it touches no other
web=supervise-e2e-web
pod_yaml=$work/deployment.yaml
loader=
cleanup() {
	set +e
	[ -z "$loader" ] || kill "$loader" 2>/dev/null
	podman rm -f -v -t 0 "$web" supervise-e2e-copy >/dev/null 2>&1
	[ ! -f "$pod_yaml" ] || podman kube down "$pod_yaml" >/dev/null 2>&1
	podman volume rm -f supervise-e2e-storage >/dev/null 2>&1
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# waitfor DESCRIPTION SECONDS COMMAND...: runs COMMAND until it succeeds,
# saying what it waits for; fails after SECONDS.
waitfor() {
	local what=$1 secs=$2
	shift 2
	say "waiting for $what (up to ${secs}s)"
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || die "$what: not within ${secs}s"
		sleep 0.2
	done
}

# freeport: a free TCP port on 127.0.0.1, below the kernel's ephemeral range.
freeport() {
	local low p
	low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
	[ "$low" -gt 11000 ] || die "the ephemeral port range starts at $low: no room below it"
	while :; do
		p=$((10000 + RANDOM % (low - 10000)))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}

# --- 1. images ---------------------------------------------------------
t0=$SECONDS
debian=localhost/supervise-e2e/debian:bookworm
if ! podman image exists "$debian"; then
	# the mirror apt already uses (never written into the repository)
	mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
	[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)
	[ -n "$mirror" ] || die "no Debian mirror in /etc/apt's sources"
	say "debootstrap: bookworm minbase from $mirror"
	debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$work/debootstrap.log" >&2; die debootstrap; }
	tar -C "$work/rootfs" -c . | podman import -q - "$debian" >/dev/null
	rm -rf "$work/rootfs"
fi

ruby=localhost/supervise-e2e/ruby:bookworm
if ! podman image exists "$ruby"; then
	say "building $ruby (Debian's ruby, ruby-railties, ruby-actioncable, puma)"
	podman build -q --network host -t "$ruby" -f - "$work" >/dev/null <<EOF
FROM $debian
RUN apt-get update -qq && \\
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ruby ruby-railties ruby-actioncable puma >/dev/null && \\
    rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/bundle
EOF
fi

goversion=$(go env GOVERSION)
golang=localhost/supervise-e2e/go:$goversion-$(go env GOPROXY | cksum | cut -d' ' -f1)
if ! podman image exists "$golang"; then
	say "building $golang from $(go env GOROOT)"
	podman build -q -t "$golang" -f - "$(go env GOROOT)" >/dev/null <<EOF
FROM $debian
COPY . /usr/local/go
ENV PATH=/usr/local/go/bin:/go/bin:\$PATH GOPATH=/go GOTOOLCHAIN=local GOPROXY=$(go env GOPROXY) \
    SSL_CERT_FILE=/etc/supervise-e2e/ca-certificates.crt
EOF
fi
images_s=$((SECONDS - t0))

# the app: the test app at a Rails app's root, the Rails Caddyfile as its
# config/Caddyfile, and the .dockerignore `rails new` writes (abridged)
app=$work/app
cp -a testdata/rails "$app"
cp examples/rails/Caddyfile "$app/config/Caddyfile"
printf '%s\n' '/.git/' '/.env*' '/log/*' '!/log/.keep' '/tmp/*' '!/tmp/.keep' '/storage/*' '!/storage/.keep' >"$app/.dockerignore"

t1=$SECONDS
say "building the example image (examples/docker/Dockerfile)"
podman build --network host \
	-v "$(go env GOMODCACHE):/go/pkg/mod" -v "$cache/go-build:/root/.cache/go-build" \
	-v "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}:/etc/supervise-e2e/ca-certificates.crt:ro" \
	--build-context supervise="$repo" \
	--build-arg RUBY_IMAGE="$ruby" --build-arg GO_IMAGE="$golang" \
	-f examples/docker/Dockerfile -t localhost/supervise-e2e/web:latest "$app" >"$work/build.log" 2>&1 ||
	{ tail -n 30 "$work/build.log" >&2; die "podman build"; }
build_s=$((SECONDS - t1))
say "images ready: base images ${images_s}s, the example's build ${build_s}s"

go build -o "$work/loadcheck" ./internal/loadcheck

# under_load URL CONTAINER LABEL ACCEPT_FOR STOP_COMMAND...: load on URL, a
# forced reload through the admin socket, a slow request in flight, then
# STOP_COMMAND; Caddy must accept connections for ACCEPT_FOR after the
# stop began (its shutdown_delay).
under_load() {
	local url=$1 ctr=$2 label=$3 accept=$4
	shift 4
	mkfifo "$work/ctl.$label"
	"$work/loadcheck" -url "$url" -clients 16 -want "hello from rails" -slow "/slow?ms=3000" -accept-for "$accept" \
		<"$work/ctl.$label" >"$work/load.$label" 2>&1 &
	loader=$!
	exec 3>"$work/ctl.$label"
	waitfor "the load to warm up ($label)" 60 grep -q "slow request sent" "$work/load.$label"
	say "caddy reload --force through the admin socket, under load ($label)"
	podman exec "$ctr" caddy reload --config /rails/config/Caddyfile --force \
		--address unix//rails/tmp/caddy-admin.sock >"$work/reload.$label" 2>&1 ||
		{ cat "$work/reload.$label" >&2; die "caddy reload in the container ($label)"; }
	waitfor "the slow request to reach the app ($label)" 30 sh -c "podman logs '$ctr' 2>&1 | grep 'Started GET' | grep -qF '/slow?ms=3000'"
	echo stop >&3
	waitfor "the load checker to note the stop ($label)" 10 grep -q "^stop:" "$work/load.$label"
	local t=$SECONDS
	"$@"
	stop_s=$((SECONDS - t))
	exec 3>&-
	local rc=0
	wait "$loader" || rc=$?
	loader=
	cat "$work/load.$label"
	[ $rc -eq 0 ] || die "$label: requests failed (above)"
	say "$label: stopped in ${stop_s}s"
}

# --- 2. the Docker example -----------------------------------------------
# the Dockerfile's own `docker run` line, with the two changes said above
port=$(freeport)
runline=$(awk '/^#   docker run / { on = 1 } on { sub(/^# */, ""); c = sub(/ *\\$/, ""); printf "%s ", $0; if (!c) exit }' examples/docker/Dockerfile)
[[ $runline == *"--stop-timeout 30"* ]] || die "the Dockerfile's docker run line lost --stop-timeout: $runline"
read -r -a args <<<"${runline#docker run }"
run=()
for a in "${args[@]}"; do
	case $a in
	80:80) run+=("127.0.0.1:$port:80") ;;
	443:443) unset 'run[${#run[@]}-1]' ;; # and its -p: no TLS here
	SITE_ADDRESS=*) run+=("SITE_ADDRESS=:80") ;;
	web-storage:*) run+=("supervise-e2e-storage:${a#*:}") ;;
	web) run+=("localhost/supervise-e2e/web:latest") ;;
	*) run+=("$a") ;;
	esac
done
say "podman run --name $web ${run[*]}"
RAILS_MASTER_KEY=unused podman run -d --name "$web" "${run[@]}" >/dev/null
waitfor "the app behind Caddy to answer /up (the container)" 120 curl -fsS "http://127.0.0.1:$port/up"
under_load "http://127.0.0.1:$port" "$web" docker 0s podman stop "$web"
status=$(podman inspect -f '{{.State.ExitCode}}' "$web")
podman logs "$web" >"$work/docker.log" 2>&1
[ "$status" = 0 ] || { tail -n 30 "$work/docker.log" >&2; die "the container exited with status $status"; }
say "docker example: exit status 0"

# --- 3. the Kubernetes example -------------------------------------------
kport=$(freeport)
sed -e "s|image: registry.example.com/web:latest|image: localhost/supervise-e2e/web:latest|" \
	-e 's/name: web$/name: supervise-e2e-web/' -e 's/{app: web}/{app: supervise-e2e-web}/' \
	-e '/name: RAILS_MASTER_KEY/,/secretKeyRef/d' -e 's/replicas: 2/replicas: 1/' \
	-e "s|- containerPort: 8080|- containerPort: 8080\n              hostPort: $kport\n              hostIP: 127.0.0.1|" \
	examples/kubernetes/deployment.yaml >"$pod_yaml"
podman kube play --network bridge "$pod_yaml" >"$work/kube.log" 2>&1 || { cat "$work/kube.log" >&2; die "podman kube play"; }
kpod=$(podman pod ps --format '{{.Name}}' --filter name='^supervise-e2e-web-pod')
[ "$(printf '%s\n' "$kpod" | grep -c .)" = 1 ] || die "podman kube play made pods: ${kpod:-none}"
kctr=$(podman ps --format '{{.Names}}' --filter pod="$kpod" | grep -v -- '-infra$')
[ "$(printf '%s\n' "$kctr" | grep -c .)" = 1 ] || die "the pod $kpod has containers: ${kctr:-none}"
grace=$(podman inspect -f '{{.Config.StopTimeout}}' "$kctr")
say "kubernetes example: container $kctr, stop timeout ${grace}s (terminationGracePeriodSeconds)"
[ "$grace" = 30 ] || say "podman $(podman version -f '{{.Client.Version}}') does not map terminationGracePeriodSeconds to the container's stop timeout (${grace}s): the stop below passes it as stop -t 30"
probe=$(podman inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}' "$kctr")
say "kubernetes example: readinessProbe as podman's healthcheck: ${probe:-none (podman ignores it)}"
waitfor "the app behind Caddy to answer /up (the pod)" 120 curl -fsS "http://127.0.0.1:$kport/up"
# Kubernetes deletes a pod with SIGTERM to its containers, SIGKILL after
# the grace period, and keeps the pod's network until they have exited.
# `podman kube down` removes the pod at once, and `podman pod stop` stops
# the infra container (the network) beside the app, cutting requests in
# flight: neither is what Kubernetes does, so the container is stopped
# first, with the YAML's grace period, then the pod.
under_load "http://127.0.0.1:$kport" "$kctr" kubernetes 4s podman stop -t 30 "$kctr"
status=$(podman inspect -f '{{.State.ExitCode}}' "$kctr")
[ "$status" = 0 ] || { podman logs "$kctr" 2>&1 | tail -n 30 >&2; die "the pod's container exited with status $status"; }
podman kube down "$pod_yaml" >/dev/null
say "kubernetes example: exit status 0"

# --- 4. the systemd unit ---------------------------------------------------
root=$work/sysroot
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/" # the units it names (sysinit.target…)
podman create --name supervise-e2e-copy localhost/supervise-e2e/web:latest >/dev/null
podman cp supervise-e2e-copy:/usr/local/bin/caddy "$root/usr/local/bin/caddy"
podman rm -v supervise-e2e-copy >/dev/null
cp examples/systemd/caddy.service "$root/etc/systemd/system/"
systemd-analyze verify --root="$root" /etc/systemd/system/caddy.service >"$work/verify.log" 2>&1 ||
	{ cat "$work/verify.log" >&2; die "systemd-analyze verify"; }
[ ! -s "$work/verify.log" ] || { cat "$work/verify.log" >&2; die "systemd-analyze verify has remarks"; }
say "systemd unit: systemd-analyze verify is silent"
say "passed in $((SECONDS))s"
