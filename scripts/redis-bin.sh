#!/usr/bin/env bash
# Prints the path of the redis-server binary to use, installing Debian's package if needed.
#   1. $REDIS_SERVER (an explicit choice wins);
#   2. a redis-server on PATH (or /usr/bin/redis-server);
#   3. `apt-get install redis-server` (Debian's package; as root, or with sudo).
# The package's own service is never started: tests and `make run` start redis-server
# themselves, on ports of their own, without persistence.
set -euo pipefail
if [ -n "${REDIS_SERVER:-}" ]; then echo "$REDIS_SERVER"; exit 0; fi
for p in "$(command -v redis-server 2>/dev/null || true)" /usr/bin/redis-server; do
  if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; exit 0; fi
done
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "redis-bin: installing Debian's redis-server" >&2
# policy-rc.d keeps the package from starting its own service during the install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q redis-server >&2 || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q redis-server >&2; }
p=$(command -v redis-server 2>/dev/null || echo /usr/bin/redis-server)
[ -x "$p" ] || { echo "redis-bin: redis-server could not be installed" >&2; exit 1; }
echo "$p"
