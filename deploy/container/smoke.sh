#!/usr/bin/env bash
# Proves the image's runtime stage holds everything the binary needs, on a machine that
# can build images but not run them (and cannot pull the base images):
#
# 1. assembles the runtime stage's filesystem from a locally built binary: the files
#    distroless/cc-debian12 provides that the binary uses (glibc and libgcc from this
#    Debian 12 machine, the dynamic loader, CA certificates, passwd and group with the
#    non-root user 65532), the binary, and the data directory the Containerfile makes;
# 2. builds that as an image FROM scratch with podman, with the Containerfile's own
#    runtime instructions (ENV, USER, VOLUME, HEALTHCHECK, ENTRYPOINT, CMD);
# 3. exports the image's filesystem, mounts it read-only with tmpfs on the data volume
#    and /tmp, and runs `keys generate`, `check`, `serve`, `health` and SIGTERM inside it
#    with chroot, as 65532, with the image's environment.
#
#   deploy/container/smoke.sh [BINARY]    (default: target/release/databricks-slack-bot)
#
# Needs root (chroot, mount) and podman.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="$(realpath "${1:-target/release/databricks-slack-bot}")"
image="localhost/databricks-slack-bot:smoke"
data=/var/lib/databricks-slack-bot

work="$(mktemp -d)"
ro="$work/ro"
cleanup() {
  [ -n "${bot:-}" ] && kill -KILL "$bot" 2>/dev/null || true
  [ -n "${fakes:-}" ] && kill "$fakes" 2>/dev/null || true
  for mounted in "$ro$data" "$ro/tmp" "$ro"; do
    mountpoint -q "$mounted" && umount "$mounted"
  done
  podman rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { echo "smoke: $*"; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

step "assembling the runtime filesystem around $bin"
rootfs="$work/context/rootfs"
install -D -m 0755 "$bin" "$rootfs/usr/local/bin/databricks-slack-bot"
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  install -D -m 0755 "$(realpath "$lib")" "$rootfs$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 -o 65532 -g 65532 "$rootfs/home/nonroot" "$rootfs$data"

step "building it FROM scratch with the Containerfile's runtime instructions"
{
  echo "FROM scratch"
  echo "COPY rootfs/ /"
  # The runtime stage, less its FROM and what it copies from the build stage.
  sed -n '/^FROM .* AS runtime$/,$p' Containerfile | grep -v -e '^FROM ' -e '^COPY --from=build '
} > "$work/context/Containerfile"
podman build --quiet --format docker -t "$image" -f "$work/context/Containerfile" "$work/context" >/dev/null
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = "65532:65532" ] || fail "the image does not run as 65532"
podman image inspect --format '{{json .Config.Healthcheck}}' "$image" | grep -q '"health"' \
  || fail "the image has no health check through the binary"
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep .)

step "exporting the image's filesystem; mounting it read-only"
mkdir -p "$work/image" "$ro"
container="$(podman create --no-healthcheck "$image")"
podman export "$container" | tar -x -C "$work/image"
podman rm -f "$container" >/dev/null
mount --bind "$work/image" "$ro"
mount -o remount,ro,bind "$ro"
mount -t tmpfs -o mode=1777,size=16m tmpfs "$ro/tmp"
mount -t tmpfs -o uid=65532,gid=65532,mode=0700,size=64m tmpfs "$ro$data"
touch "$ro/usr/local/bin/probe" 2>/dev/null && fail "the root filesystem is writable"

fakes_out="$work/fakes.port"
python3 deploy/container/fake_upstreams.py > "$fakes_out" &
fakes=$!
for _ in $(seq 1 50); do [ -s "$fakes_out" ] && break; sleep 0.1; done
upstream="http://127.0.0.1:$(cat "$fakes_out")"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# The binary inside, as 65532, with the image's environment and `vars`: `run_inside`
# puts the command line in `cmd` (`env` and `chroot` exec the binary, so a command started
# in the background has the binary's PID); `inside` runs it.
vars=()
run_inside() {
  cmd=(env -i "${image_env[@]}" "${vars[@]}" chroot --userspec=65532:65532 "$ro" /usr/local/bin/databricks-slack-bot "$@")
}
inside() {
  run_inside "$@"
  "${cmd[@]}"
}

step "keys generate"
key="$(inside keys generate 2>/dev/null)"
[ "$(printf '%s' "$key" | base64 -d | wc -c)" = 32 ] || fail "keys generate printed no 32-byte key"

vars=(
  "BIND_ADDR=127.0.0.1:$port"
  "PUBLIC_BASE_URL=https://bot.example.com"
  "TOKEN_ENCRYPTION_KEYS=k1:$key"
  "SLACK_BOT_TOKEN=xoxb-smoke"
  "SLACK_SIGNING_SECRET=smoke-signing-secret"
  "SLACK_API_URL=$upstream/api"
  "DATABRICKS_HOST=$upstream"
  "DATABRICKS_CLIENT_ID=smoke-client"
  "GENIE_SPACE_ID=01f0-smoke-space"
)

step "check"
report="$(inside check)" || fail "check: $report"
echo "$report" | sed 's/^/  /'
for part in "configuration  ok" "database       ok" "slack          ok" "databricks     ok"; do
  grep -q "^$part" <<< "$report" || fail "check did not report '$part'"
done

step "serve, health, SIGTERM"
run_inside serve
"${cmd[@]}" > /dev/null 2> "$work/serve.log" &
bot=$!
for _ in $(seq 1 100); do inside health >/dev/null 2>&1 && break; sleep 0.2; done
inside health || fail "serve never became healthy: $(cat "$work/serve.log")"
inside health --ready || fail "serve never became ready: $(cat "$work/serve.log")"
[ -s "$ro$data/bot.db" ] || fail "no database in the data volume"
kill -TERM "$bot"
status=0
wait "$bot" || status=$?
bot=""
[ "$status" = 0 ] || fail "serve exited $status on SIGTERM: $(cat "$work/serve.log")"
grep -q '"stopped"' "$work/serve.log" || fail "serve did not log that it stopped"

step "ok: the runtime filesystem holds everything the binary needs"
