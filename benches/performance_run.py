#!/usr/bin/env python3
"""Every figure of the performance work in one run on this machine, so they can be
compared with each other: the raw ceiling (`ceiling`, draining and not), the edge's
forwarding with one and two media workers pinned to one and two CPUs (listeners that
never read), capacity with the load generator on the same machine (a core, one edge of
two workers, listeners that decrypt 1 packet in 10), and the side-by-side with Janus
(`janus_compare.py`). Writes one markdown report.

    python3 benches/performance_run.py [--out target/performance-run.md] [--quick]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import janus_compare as jc  # noqa: E402

ROOT = jc.ROOT
RELEASE = os.path.join(ROOT, "target/release")


def ceiling(work, no_drain):
    out = os.path.join(work, f"ceiling-{'no-drain' if no_drain else 'drain'}.json")
    cmd = [os.path.join(RELEASE, "ceiling"), "--json", out] + (["--no-drain"] if no_drain else ["--veth"])
    jc.say("ceiling" + (" (receivers that never read)" if no_drain else " (draining receivers, loopback and veth)"))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def local(work, name, args):
    out = os.path.join(work, f"{name}.json")
    cmd = [os.path.join(RELEASE, "loadtest"), "local", "--quiet", "--json", out] + args
    jc.say("loadtest local " + " ".join(args))
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "target/performance-run.md"))
    p.add_argument("--quick", action="store_true", help="small loads, short runs (to try the command)")
    args = p.parse_args()
    jc.ensure_janus()
    jc.build()
    jc.say("building the ceiling benchmark (release)")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "benches", "--bin", "ceiling"], cwd=ROOT,
                   check=True)
    work = tempfile.mkdtemp(prefix="performance-run-")
    duration = "4s" if args.quick else "15s"
    scale_n = 300 if args.quick else 3500
    capacity = [100, 200] if args.quick else [1000, 2000, 2500]
    janus_loads = [20, 50] if args.quick else [100, 500, 1000, 2000, 2500]
    lines = []
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines.append(f"# Performance run\n\n{os.cpu_count()} cores, {cpu}; command: `python3 benches/performance_run.py"
                 f"{' --quick' if args.quick else ''}`.\n")

    drained, undrained = ceiling(work, False), ceiling(work, True)
    lines.append("## Raw ceiling (150-byte datagrams, 25 receiving sockets)\n")
    lines.append("| path | send | receivers | sends per CPU-second | receives per CPU-second |\n| --- | --- | --- | --- | --- |")
    for c, how in ((drained, "drain"), (undrained, "never read")):
        for u in c["udp"]:
            lines.append(f"| {u['path']} | {u['send']} | {how} | {u['sends_per_cpu_s'] / 1e6:.2f} M | "
                         f"{u['receives_per_cpu_s'] / 1e6:.2f} M |")
    lines.append(f"\nAES-128-GCM seals: {drained['gcm_seals_per_cpu_s'] / 1e6:.2f} M per CPU-second.\n")
    ceiling_no_drain = next(u["sends_per_cpu_s"] for u in undrained["udp"] if u["path"] == "loopback"
                            and u["send"] == "sendto")

    lines.append(f"## Media workers, pinned ({scale_n} listeners that never read, 3 speakers, one edge)\n")
    lines.append("| workers | edge CPUs | joined | forwarded packets/s | edge CPU (cores) | packets per CPU-second | "
                 "of the ceiling (never read) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for workers, cpus in ((1, "1"), (2, "0-1")):
        r = local(work, f"scale-{workers}", ["--edges", "1", "--edge-workers", str(workers), "--pin-edges", cpus,
                                             "--pin-others", "0", "--listeners", str(scale_n), "--speakers", "3",
                                             "--duration", duration, "--ramp", "100", "--deaf-listeners"])
        f = r.get("edge_forwarding") or {"packets_per_s": 0, "cpu_cores": 0, "packets_per_cpu_second": 0}
        lines.append(f"| {workers} | {cpus} | {r['listeners_joined']} | {f['packets_per_s']:.0f} | {f['cpu_cores']:.2f} | "
                     f"{f['packets_per_cpu_second']:.0f} | {100 * f['packets_per_cpu_second'] / ceiling_no_drain:.0f} % |")

    lines.append("\n## Capacity, load generator included (a core, one edge of two workers, decrypt 1 in 10)\n")
    lines.append("| listeners | joined | loss % | p50 ms | p99 ms | edge CPU % | generator CPU % | SFU RSS MB | meets |\n"
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in capacity:
        r = local(work, f"capacity-{n}", ["--edges", "1", "--edge-workers", "2", "--listeners", str(n), "--speakers",
                                          "3", "--duration", duration, "--ramp", "100", "--decrypt-every", "10"])
        procs = {x["name"]: x for x in r["processes"]}
        ok = r["failed"] == 0 and r["listeners_joined"] == n and r["loss_percent"] < 0.5 and r["latency"]["p99_ms"] < 50
        lines.append(f"| {n} | {r['listeners_joined']} | {r['loss_percent']:.3f} | {r['latency']['p50_ms']:.1f} | "
                     f"{r['latency']['p99_ms']:.1f} | {procs['edge-1']['cpu_mean_percent']:.0f} | "
                     f"{procs['loadtest']['cpu_mean_percent']:.0f} | {r.get('sfu_rss_end_mb') or 0:.1f} | "
                     f"{'yes' if ok else 'no'} |")

    lines.append("\n## Side by side with Janus\n")
    ns = argparse.Namespace(duration=duration, ramp=100)
    rows = [jc.run_one(kind, n, ns, work) for kind in ("edge", "janus", "janus-2-loops") for n in janus_loads]
    lines.append(jc.table(rows, janus_loads))
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
