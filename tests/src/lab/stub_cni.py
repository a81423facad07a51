#!/usr/bin/env python3
"""A stand-in for the palisade CNI plugin, for lab tests while the real plugin is not built.

Same contract as the real one for what the lab needs: runs in the node namespace, reads the
network configuration on stdin, wires CNI_NETNS with a veth (pod side eth0, /32 and /128
addresses from podCIDRs, default routes via a link-local gateway the host side owns) and
prints a CNI 1.1 result. No endpoint records, no agent call: the lab uses it only without the
agent. Used only when `<bin dir>/palisade` does not answer CNI VERSION.
"""
import hashlib
import ipaddress
import json
import os
import subprocess
import sys


def ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        fail(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def fail(msg):
    print(json.dumps({"cniVersion": "1.1.0", "code": 999, "msg": msg}))
    sys.exit(1)


def main():
    cmd = os.environ.get("CNI_COMMAND", "")
    conf = json.loads(sys.stdin.read() or "{}")
    if cmd == "VERSION":
        print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
        return
    cid = os.environ["CNI_CONTAINERID"]
    pod_ns = os.path.basename(os.environ["CNI_NETNS"])
    host_if = "plv" + hashlib.sha1(cid.encode()).hexdigest()[:10]
    if cmd == "DEL":
        ip("link", "del", host_if, check=False)
        return
    if cmd != "ADD":
        fail(f"unsupported CNI_COMMAND {cmd}")
    state = conf["stateDir"]
    os.makedirs(state, exist_ok=True)
    counter = os.path.join(state, "stub-next")
    n = int(open(counter).read()) if os.path.exists(counter) else 2
    with open(counter, "w") as f:
        f.write(str(n + 1))
    addrs = [ipaddress.ip_network(c)[n] for c in conf["podCIDRs"]]
    ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
    ip("addr", "add", "169.254.1.1/32", "dev", host_if)
    ip("addr", "add", "fe80::1/64", "dev", host_if, "nodad")
    ip("link", "set", host_if, "up")
    ip("-n", pod_ns, "link", "set", "eth0", "up")
    ips = []
    for a in addrs:
        plen = 32 if a.version == 4 else 128
        extra = [] if a.version == 4 else ["nodad"]
        ip("-n", pod_ns, "addr", "add", f"{a}/{plen}", "dev", "eth0", *extra)
        ip("route", "add", f"{a}/{plen}", "dev", host_if)
        ips.append({"address": f"{a}/{plen}", "interface": 1})
    ip("-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    ip("-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    ip("-n", pod_ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
    print(json.dumps({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": host_if}, {"name": "eth0", "sandbox": os.environ["CNI_NETNS"]}],
        "ips": ips,
    }))


main()
