"""What the Python benches share (benches/fill-while-serving, benches/cold-reads): ports, the
admin API, a memory cgroup, the compiled paced viewers and TCP's congestion control. Each
bench imports it with `sys.path.insert(0, <benches/support>)`; errors name the bench that
ran into them."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The admin token every bench's daemon is configured with.
TOKEN = "bench-token-0123456789abcdef"


def fail(message):
    """Stops the bench with one line that names it."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: {message}")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    fail(f"nothing on 127.0.0.1:{port}")


def admin(port, method, path, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read() or b"null")


def memory_cgroup(name, limit):
    """A fresh memory cgroup below this process's own, limited to `limit` bytes; returns the
    file a pid is written to to move it in, or None when that is not allowed here."""
    try:
        with open("/proc/self/cgroup") as lines:
            entries = [line.strip().split(":", 2) for line in lines]
    except OSError:
        return None
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            base, limit_file = "/sys/fs/cgroup/memory" + path, "memory.limit_in_bytes"
            break
    else:
        path = next((path for hierarchy, _, path in entries if hierarchy == "0"), None)
        if path is None:
            return None
        base, limit_file = "/sys/fs/cgroup" + path, "memory.max"
    group = os.path.join(base, name)
    try:
        os.makedirs(group, exist_ok=True)
        with open(os.path.join(group, limit_file), "w") as out:
            out.write(str(limit))
    except OSError:
        return None
    return os.path.join(group, "cgroup.procs")


def read_bytes(pid, task=None):
    """Bytes the disk read for a process (or one of its threads, `task`): its page-cache
    misses. 0 when it is gone."""
    where = f"/proc/{pid}/task/{task}/io" if task else f"/proc/{pid}/io"
    try:
        with open(where) as lines:
            for line in lines:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def paced_viewers_binary():
    """Builds the compiled viewers (benches/paced_viewers.rs) and returns the executable."""
    output = subprocess.run(["cargo", "bench", "--bench", "paced_viewers", "--no-run", "--message-format=json"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in output.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") \
                and message["target"]["name"] == "paced_viewers":
            return message["executable"]
    fail("cargo built no paced_viewers executable")


def viewers_result(output):
    """The paced viewers' JSON line, summed up: p50, p99 and p99.9 in milliseconds, requests,
    body bytes served and every latency; a viewer's error stops the bench."""
    result = json.loads(output)
    if result["error"]:
        fail(result["error"])
    latencies = result["latencies_ms"]
    at = lambda share: latencies[min(len(latencies) - 1, int(share * len(latencies)))] if latencies else 0.0
    return {"p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "served": result["served"],
            "requests": len(latencies), "latencies": latencies}


def congestion_control(wanted):
    """The TCP congestion control new sockets get; set to `wanted` first when given (root).
    Returns (in use, to restore or None)."""
    path = "/proc/sys/net/ipv4/tcp_congestion_control"
    with open(path) as current:
        before = current.read().strip()
    if not wanted or wanted == before:
        return before, None
    try:
        with open(path, "w") as out:
            out.write(wanted)
    except OSError as err:
        fail(f"cannot set TCP_CONGESTION={wanted}: {err}")
    return wanted, before
