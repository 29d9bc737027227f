#!/usr/bin/env python3
"""Our edge and Debian's Janus (VideoRoom) side by side, driven by the same load tester.

For each server (our edge standalone, where one room is one media worker on one core;
our SFU laid out as a fleet on one machine, a core and one edge of two media workers,
where one room uses both cores ("sfu"); Janus at its defaults; Janus with two shared
event loops, as its documentation suggests for many handles) and each load, a fresh
server is started on loopback, `loadtest run` joins 3 speakers and N listeners (3
streams each) for real (ICE, DTLS, SRTP), and the table gets: CPU-seconds of the server
(all its processes) per million packets its listeners received (in the steady phase, when everyone has
joined: what forwarding costs; and over the whole run, joins included), end-to-end
latency p50/p99 (loopback, so what the server adds), the server's RSS per listener (each
process's peak, summed),
loss, and the most listeners it carried at < 0.5 % loss and p99 < 50 ms. Installs Janus
from Debian if it is missing.

    python3 benches/janus_compare.py [--loads 100,500,1000,2000] [--duration 15s] [--out FILE]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN_SECRET = "janus-compare-token-secret-of-32-bytes"
CLUSTER_SECRET = "janus-compare-cluster-secret-of-32-bytes"
EDGE_HTTP, EDGE_UDP, JANUS_HTTP = 18080, 13478, 18088
CORE_HTTP, CORE_QUIC = 18070, 14433
SERVERS = ("edge", "sfu", "janus", "janus-2-loops")


def say(*args):
    print("janus-compare:", *args, file=sys.stderr, flush=True)


def ensure_janus():
    if shutil.which("janus"):
        return
    say("installing janus from Debian (apt-get install janus)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "janus"], check=True, env=env, stdout=subprocess.DEVNULL)


def build():
    say("building edge-sfu and loadtest (release)")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "edge-sfu", "-p", "core-sfu", "-p", "loadtest"],
                   cwd=ROOT, check=True)


def janus_config(folder, event_loops):
    """A minimal Janus (the HTTP transport on loopback and the VideoRoom plugin), written by
    the load tester as its Janus test writes it; returns the path for `janus -C`."""
    cmd = [os.path.join(ROOT, "target/release/loadtest"), "janus-config", "--dir", folder, "--port", str(JANUS_HTTP)]
    if event_loops:
        cmd += ["--event-loops", str(event_loops)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def wait_http(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, data=b'{"janus":"info","transaction":"x"}' if "janus" in url else None)
            urllib.request.urlopen(req, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """A fresh server of `kind` on loopback: `procs` are its processes (the core first for
    "sfu")."""

    def __init__(self, kind, folder, log):
        self.kind = kind
        self.procs = []
        try:
            self.url = self.start_all(kind, folder, log)
        except Exception:
            self.stop()
            raise
        self.proc = self.procs[-1]
        time.sleep(0.5)
        self.idle_rss = sum(rss_kib(p.pid) for p in self.procs)

    def start_all(self, kind, folder, log):
        """Starts the server's processes in order, each answering before the next; returns
        its signalling URL."""
        if kind not in ("edge", "sfu"):
            config = janus_config(folder, 2 if kind == "janus-2-loops" else 0)
            self.start(["janus", "-C", config, "-F", folder], f"http://127.0.0.1:{JANUS_HTTP}/janus", log)
            return f"http://127.0.0.1:{JANUS_HTTP}"
        edge = [os.path.join(ROOT, "target/release/edge-sfu"), "--http", f"127.0.0.1:{EDGE_HTTP}",
                "--udp", f"127.0.0.1:{EDGE_UDP}", "--token-secret", TOKEN_SECRET,
                "--max-listeners-per-channel", "100000", "--max-sessions", "100000",
                "--offers-per-sec-per-ip", "1000", "--max-pending-sessions", "1024"]
        if kind == "sfu":
            core = [os.path.join(ROOT, "target/release/core-sfu"), "--http", f"127.0.0.1:{CORE_HTTP}",
                    "--quic", f"127.0.0.1:{CORE_QUIC}", "--cluster-secret", CLUSTER_SECRET]
            self.start(core, f"http://127.0.0.1:{CORE_HTTP}/healthz", log)
            edge += ["--workers", "2", "--core", f"127.0.0.1:{CORE_QUIC}", "--cluster-secret", CLUSTER_SECRET,
                     "--core-url", f"http://127.0.0.1:{CORE_HTTP}"]
        self.start(edge, f"http://127.0.0.1:{EDGE_HTTP}/readyz", log)
        return f"http://127.0.0.1:{EDGE_HTTP}"

    def start(self, cmd, probe, log):
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        wait_http(probe)

    def stop(self):
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def perf_profile(pid, seconds, folder):
    """Samples `pid` with `perf record` for `seconds`; returns the kernel's share of its
    CPU and its busiest symbols, or None without perf."""
    if not shutil.which("perf"):
        return None
    data = os.path.join(folder, "perf.data")
    subprocess.run(["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", data, "--", "sleep", str(seconds)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def report(sort):
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "-q", "-g", "none"],
                             capture_output=True, text=True).stdout
        rows = []
        for line in out.splitlines():
            share, _, name = line.strip().partition("%")
            try:
                rows.append((float(share), name.strip()))
            except ValueError:
                continue
        return rows

    dsos = report("dso")
    return {
        "kernel_share": sum(x for x, name in dsos if name.startswith("[kernel")) / 100.0,
        "symbols": report("sym")[:8],
    }


def steady_cost(report, process):
    """CPU-seconds spent per million packets heard in the report's steady phase (µs per
    packet) by `process`, or by every process whose name it accepts if it is callable;
    infinite if nothing was heard."""
    steady = report.get("steady") or {"packets_per_s": 0, "processes": []}
    named = process if callable(process) else (lambda name: name == process)
    cores = sum(p["cpu_cores"] for p in steady["processes"] if named(p["name"]))
    return cores / steady["packets_per_s"] * 1e6 if steady["packets_per_s"] else float("inf")


def is_server(name):
    """The server's processes in a `loadtest run` report (`server`, or `server-1`, ...)."""
    return name == "server" or name.startswith("server-")


def meets(report, listeners):
    """Every listener joined and heard with < 0.5 % loss and p99 < 50 ms."""
    return (report["failed"] == 0 and report["listeners_joined"] == listeners and report["loss_percent"] < 0.5
            and report["latency"]["p99_ms"] < 50.0)


def run_one(kind, listeners, args, work, profile_seconds=0):
    folder = tempfile.mkdtemp(dir=work)
    with open(os.path.join(folder, "server.log"), "w") as log:
        server = Server(kind, folder, log)
        try:
            report = os.path.join(folder, "report.json")
            cmd = [os.path.join(ROOT, "target/release/loadtest"), "run", "--listeners", str(listeners),
                   "--speakers", "3", "--duration", args.duration, "--ramp", str(args.ramp),
                   "--decrypt-every", "10", "--quiet", "--json", report]
            for proc in server.procs:
                cmd += ["--watch-pid", str(proc.pid)]
            if kind in ("edge", "sfu"):
                cmd += ["--edge", server.url, "--token-secret", TOKEN_SECRET]
            else:
                cmd += ["--janus", server.url]
            generator = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            profile = None
            if profile_seconds:
                # Into the steady phase: the ramp, the last joins, then a margin.
                time.sleep(listeners / args.ramp + 6)
                profile = perf_profile(server.proc.pid, profile_seconds, folder)
            generator.wait()
            with open(report) as f:
                r = json.load(f)
        finally:
            server.stop()
    procs = {p["name"]: p for p in r["processes"]}
    server_cpu_percent = sum(p["cpu_mean_percent"] for name, p in procs.items() if is_server(name))
    cpu_s = server_cpu_percent / 100.0 * r["run_s"]
    # Each process's peak, summed: at most a little above the peak of the sum.
    server_rss_max_mb = sum(p["rss_max_mb"] for name, p in procs.items() if is_server(name))
    received = r["packets_received"]
    joined = r["listeners_joined"]
    row = {
        "server": kind,
        "listeners": listeners,
        "joined": joined,
        "failed": r["failed"],
        "packets_received": received,
        "cpu_s_per_m": cpu_s / received * 1e6 if received else float("inf"),
        "steady_cpu_s_per_m": steady_cost(r, is_server),
        "p50_ms": r["latency"]["p50_ms"],
        "p99_ms": r["latency"]["p99_ms"],
        "loss_percent": r["loss_percent"],
        "rss_kib_per_listener": (server_rss_max_mb * 1024 - server.idle_rss) / max(joined, 1),
        "server_cpu_mean_percent": server_cpu_percent,
        "generator_cpu_mean_percent": procs.get("loadtest", {}).get("cpu_mean_percent", 0.0),
    }
    row["profile"] = profile
    row["passed"] = meets(r, listeners)
    say(f"{kind} with {listeners} listeners: {json.dumps(row)}")
    return row


def table(rows, loads):
    out = ["| server | listeners | joined | CPU-s per M packets, steady | CPU-s per M packets, whole run | p50 ms | "
           "p99 ms | loss % | RSS KiB per listener | server CPU % | generator CPU % | meets < 0.5 % and p99 < 50 ms |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['server']} | {r['listeners']} | {r['joined']} | {r['steady_cpu_s_per_m']:.1f} | "
                   f"{r['cpu_s_per_m']:.1f} | {r['p50_ms']:.1f} | "
                   f"{r['p99_ms']:.1f} | {r['loss_percent']:.3f} | {r['rss_kib_per_listener']:.1f} | "
                   f"{r['server_cpu_mean_percent']:.0f} | {r['generator_cpu_mean_percent']:.0f} | "
                   f"{'yes' if r['passed'] else 'no'} |")
    out += ["", "| server | most listeners meeting < 0.5 % loss and p99 < 50 ms (of " + ", ".join(map(str, loads)) + ") |",
            "| --- | --- |"]
    for kind in dict.fromkeys(r["server"] for r in rows):
        best = max((r["listeners"] for r in rows if r["server"] == kind and r["passed"]), default=0)
        out.append(f"| {kind} | {best} |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loads", default="100,500,1000,2000", help="listener counts, comma-separated")
    p.add_argument("--duration", default="15s", help="steady phase of each run")
    p.add_argument("--ramp", type=int, default=100, help="listener joins per second")
    p.add_argument("--servers", default=",".join(SERVERS), help="of " + ", ".join(SERVERS))
    p.add_argument("--out", default=os.path.join(ROOT, "target/janus-compare.md"), help="where the table goes (also printed)")
    args = p.parse_args()
    loads = [int(x) for x in args.loads.split(",")]
    ensure_janus()
    build()
    work = tempfile.mkdtemp(prefix="janus-compare-")
    rows = []
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    for kind in args.servers.split(","):
        for n in loads:
            say(f"{kind}: {n} listeners, 3 speakers, {args.duration}")
            rows.append(run_one(kind, n, args, work))
    text = (f"{os.cpu_count()} cores, {cpu}; 3 speakers, 3 streams per listener, listeners decrypt 1 packet in 10; "
            f"{args.duration} steady after a ramp of {args.ramp} joins/s; the server's CPU per packet in the steady "
            "phase and over the whole run (joins included); its peak RSS.\n\n" + table(rows, loads))
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
