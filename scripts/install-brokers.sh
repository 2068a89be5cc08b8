#!/usr/bin/env bash
# Install the real brokers the test suite runs against: Debian's redis-server
# and rabbitmq-server.  Idempotent: does nothing (quietly) when both are there.
#
# The tests start their own broker processes on 127.0.0.1 (see tests/brokers.py),
# so this script makes sure the packages do NOT leave system-wide services
# running: a temporary /usr/sbin/policy-rc.d that exits 101 forbids the
# maintainer scripts to start them, and anything that got started anyway
# (epmd, beam.smp, redis-server) is stopped afterwards.
#
# Usage (as root, or with sudo available):  bash scripts/install-brokers.sh
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have redis-server || missing+=(redis-server)
have rabbitmq-server || missing+=(rabbitmq-server)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-brokers.sh: must run as root (or with sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-brokers.sh: installing ${missing[*]}" >&2

# Forbid invoke-rc.d from starting services while we install; keep whatever
# policy-rc.d was there before and put it back afterwards.
POLICY=/usr/sbin/policy-rc.d
BACKUP=""
if [ -e "$POLICY" ]; then
    BACKUP="$(mktemp /tmp/policy-rc.d.XXXXXX)"
    $SUDO cp -p "$POLICY" "$BACKUP"
fi
restore_policy() {
    if [ -n "$BACKUP" ]; then
        $SUDO cp -p "$BACKUP" "$POLICY"
        rm -f "$BACKUP"
    else
        $SUDO rm -f "$POLICY"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# temporary, from gossip_fast scripts/install-brokers.sh\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod 755 "$POLICY"

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null

# On systemd machines, policy-rc.d is honoured by deb-systemd-invoke too, but
# make sure the units are stopped (and not enabled to start at boot).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in redis-server.service rabbitmq-server.service epmd.service epmd.socket; do
        $SUDO systemctl stop "$unit" >/dev/null 2>&1 || true
        $SUDO systemctl disable "$unit" >/dev/null 2>&1 || true
    done
fi

# Stop whatever the install may have started anyway: only daemons run by the
# packages' own users (a developer's own broker processes are left alone).
service_pids() {
    ps -eo pid=,user:32=,comm= 2>/dev/null | awk '
        $2 ~ /^(rabbitmq|redis|epmd)$/ &&
        $3 ~ /^(beam\.smp|epmd|redis-server|erl_child_setup|inet_gethost)$/ { print $1 }'
}
pids="$(service_pids)"
if [ -n "$pids" ]; then
    echo "install-brokers.sh: stopping daemons started by the install: $(echo $pids)" >&2
    $SUDO kill $pids 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ -z "$(service_pids)" ] && break
        sleep 0.5
    done
    pids="$(service_pids)"
    [ -z "$pids" ] || $SUDO kill -9 $pids 2>/dev/null || true
fi

have redis-server || { echo "install-brokers.sh: redis-server still missing" >&2; exit 1; }
have rabbitmq-server || { echo "install-brokers.sh: rabbitmq-server still missing" >&2; exit 1; }
echo "install-brokers.sh: installed ${missing[*]}" >&2
