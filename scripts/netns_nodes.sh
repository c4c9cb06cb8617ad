#!/usr/bin/env bash
# Two simulated "nodes" on one Linux machine, for the multi-node tests (tests/e2e/test_multinode.py):
# network namespaces align-node0 and align-node1 joined by a veth pair, 10.77.0.1 and 10.77.0.2 on /24.
# Processes started with `ip netns exec align-nodeN ...` see only their node's address and loopback, so
# a rendezvous between them crosses the veth link the way it would cross a network. The filesystem is
# shared, as a cluster's shared output directory would be. Needs root (CI runs as root).
#
#   scripts/netns_nodes.sh up      create (replacing any left over)
#   scripts/netns_nodes.sh down    remove
#   scripts/netns_nodes.sh check   exit 0 when both exist and reach each other
set -euo pipefail

NODES=(align-node0 align-node1)
ADDRS=(10.77.0.1 10.77.0.2)
IFACES=(an0 an1)

down() {
    for ns in "${NODES[@]}"; do
        ip netns del "$ns" 2>/dev/null || true  # deleting a namespace removes its end of the veth pair
    done
}

up() {
    down
    for ns in "${NODES[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add "${IFACES[0]}" netns "${NODES[0]}" type veth peer name "${IFACES[1]}" netns "${NODES[1]}"
    for i in 0 1; do
        ip -n "${NODES[$i]}" addr add "${ADDRS[$i]}/24" dev "${IFACES[$i]}"
        ip -n "${NODES[$i]}" link set "${IFACES[$i]}" up
    done
    check
    echo "nodes up: ${NODES[0]} ${ADDRS[0]} (${IFACES[0]}), ${NODES[1]} ${ADDRS[1]} (${IFACES[1]})"
}

check() {
    for i in 0 1; do
        ip netns list | grep -qw "${NODES[$i]}" || { echo "no namespace ${NODES[$i]}" >&2; return 1; }
    done
    # a TCP connection from node1 to a listener on node0 proves the link (ping may not be installed)
    local py
    py=$(command -v python3)
    ip netns exec "${NODES[0]}" "$py" -c "
import socket, sys
s = socket.socket(); s.bind(('${ADDRS[0]}', 29499)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); c.close()" &
    local listener=$!
    sleep 0.5
    ip netns exec "${NODES[1]}" "$py" -c "
import socket, time
for _ in range(20):
    try:
        socket.create_connection(('${ADDRS[0]}', 29499), timeout=2).close(); break
    except OSError:
        time.sleep(0.25)
else:
    raise SystemExit('node1 cannot reach node0 over the veth link')"
    wait "$listener"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    check) check ;;
    *) echo "usage: $0 up|down|check" >&2; exit 2 ;;
esac
