#!/usr/bin/env python3
"""Every figure of the performance work in one run on this machine, so they can be
compared with each other: the raw ceiling (`ceiling`, receivers that wait for readiness,
that sweep their sockets, and that never read, to 25 sockets and to as many as the
profiled listeners), the edge's forwarding with one and two media
workers pinned to one and two CPUs, each worker's thread to a CPU of its own (listeners
that never read), the edge's user-space
cost per packet (criterion), memory per listener past the DTLS linger, capacity with the
load generator on the same machine (a core, one edge of two workers, listeners that
decrypt 1 packet in 10) against the most this machine's kernel allows, the side-by-side
with Janus (`janus_compare.py`), and, with `perf` installed, a profile of our edge and of
Janus in their steady phase. Writes one markdown report.

    python3 benches/performance_run.py [--out target/performance-run.md] [--quick]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import janus_compare as jc  # noqa: E402

ROOT = jc.ROOT
RELEASE = os.path.join(ROOT, "target/release")


CEILING_DRAINS = {"poll": [], "sweep": ["--sweep", "--sweep-ms", "5"], "never": ["--no-drain"]}
CEILING_READING = {"poll": "poll, then read", "sweep": "swept every 5 ms", "never": "never read"}


def ceiling(work, drain, sockets=25):
    """The `ceiling` binary's report: to `sockets` receiving sockets, over loopback, and over
    veth too when they drain and are the default 25. `drain` is "poll" (read when `poll`
    says ready, as an event loop does), "sweep" (every socket read every 5 ms, as the load
    generator does) or "never"."""
    out = os.path.join(work, f"ceiling-{drain}-{sockets}.json")
    cmd = [os.path.join(RELEASE, "ceiling"), "--json", out, "--sockets", str(sockets)] + CEILING_DRAINS[drain]
    cmd += ["--veth"] if drain != "never" and sockets == 25 else []
    jc.say(f"ceiling to {sockets} sockets, {CEILING_READING[drain]}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def drops(report):
    """What the nodes and the kernel dropped over a run, as "reason count" pairs, or "none"."""
    d = report.get("drops") or {}
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def local(work, name, args):
    out = os.path.join(work, f"{name}.json")
    cmd = [os.path.join(RELEASE, "loadtest"), "local", "--quiet", "--json", out] + args
    jc.say("loadtest local " + " ".join(args))
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def loopback_sendto(ceiling_report):
    """The ceiling's row for `sendto` over loopback."""
    return next(u for u in ceiling_report["udp"] if u["path"] == "loopback" and u["send"] == "sendto")


def user_space_per_listener():
    """The edge's per-listener work (rewrite, header, SRTP protect into the transmit
    arena; no syscall) from the `edge_fanout` criterion bench, ns per listener."""
    jc.say("cargo bench --bench edge_fanout (user-space cost per forwarded packet)")
    subprocess.run(["cargo", "bench", "--locked", "-p", "benches", "--bench", "edge_fanout", "--", "--warm-up-time", "1",
                    "--measurement-time", "5"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    for profile in ("AeadAes128Gcm", "Aes128CmHmacSha1_80"):
        path = os.path.join(ROOT, f"target/criterion/edge/one_packet_to_25_listeners_{profile}/new/estimates.json")
        with open(path) as f:
            out[profile] = json.load(f)["mean"]["point_estimate"] / 25
    return out


def profiles(work, listeners, ceiling_there):
    """Our edge and tuned Janus in their steady phase under `perf`: the kernel's share
    of each, and so the best ratio a server with our kernel path could reach;
    `ceiling_there` is the loopback ceiling to as many sockets as `listeners`."""
    if not shutil.which("perf"):
        return "\n(No `perf` on this machine: no profiles.)\n"
    ns = argparse.Namespace(duration="20s", ramp=100)
    rows = {kind: jc.run_one(kind, listeners, ns, work, profile_seconds=8) for kind in ("edge", "janus-2-loops")}
    out = [f"\n## Where the time goes: steady phase, {listeners} listeners, `perf record -F 999 -g` for 8 s\n",
           "| server | CPU-s per M packets | kernel | kernel µs per packet | user space µs per packet | busiest symbols |",
           "| --- | --- | --- | --- | --- | --- |"]
    for kind, r in rows.items():
        p, cost = r["profile"], r["steady_cpu_s_per_m"]
        if not p:
            continue
        top = "; ".join(f"{name.replace('|', '/')} {share:.1f} %" for share, name in p["symbols"][:6])
        out.append(f"| {kind} | {cost:.1f} | {100 * p['kernel_share']:.0f} % | {cost * p['kernel_share']:.2f} | "
                   f"{cost * (1 - p['kernel_share']):.2f} | {top} |")
    edge, janus = rows["edge"], rows["janus-2-loops"]
    if edge["profile"]:
        floor = edge["steady_cpu_s_per_m"] * edge["profile"]["kernel_share"]
        out.append(f"\nOur edge is {janus['steady_cpu_s_per_m'] / edge['steady_cpu_s_per_m']:.1f}x tuned Janus here. "
                   f"A server with our kernel path and no user space at all would spend {floor:.2f} µs per packet: "
                   f"{janus['steady_cpu_s_per_m'] / floor:.1f}x tuned Janus, the most any user-space work could reach "
                   "on this machine.")
        bare = 1e6 / max(u["sends_per_cpu_s"] for u in ceiling_there["udp"] if u["path"] == "loopback")
        out.append(f"To {listeners} swept sockets, as many as the listeners here, a bare send (the cheaper of "
                   f"`sendto` and `sendmmsg`) costs "
                   f"{bare:.2f} µs of the sending thread's CPU: our whole edge, at "
                   f"{edge['steady_cpu_s_per_m']:.2f} µs per packet, forwards at "
                   f"{100 * bare / edge['steady_cpu_s_per_m']:.0f} % of that ceiling.")
    return "\n".join(out) + "\n"


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
    capacity = [100, 200] if args.quick else [1000, 1500, 2000, 2500]
    janus_loads = [20, 50] if args.quick else [100, 500, 750, 1000, 2000, 2500]
    lines = []
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines.append(f"# Performance run\n\n{os.cpu_count()} cores, {cpu}; command: `python3 benches/performance_run.py"
                 f"{' --quick' if args.quick else ''}`.\n")

    profiled = 100 if args.quick else 500
    polled, swept, undrained = ceiling(work, "poll"), ceiling(work, "sweep"), ceiling(work, "never")
    swept_many = ceiling(work, "sweep", sockets=profiled)
    lines.append("## Raw ceiling (150-byte datagrams)\n")
    lines.append("| path | send | receiving sockets | receivers | sends per CPU-second | receives per CPU-second |\n"
                 "| --- | --- | --- | --- | --- | --- |")
    for c, how in ((polled, CEILING_READING["poll"]), (swept, CEILING_READING["sweep"]),
                   (undrained, CEILING_READING["never"]), (swept_many, CEILING_READING["sweep"])):
        for u in c["udp"]:
            lines.append(f"| {u['path']} | {u['send']} | {c['sockets']} | {how} | {u['sends_per_cpu_s'] / 1e6:.2f} M | "
                         f"{u['receives_per_cpu_s'] / 1e6:.2f} M |")
    lines.append(f"\nAES-128-GCM seals: {swept['gcm_seals_per_cpu_s'] / 1e6:.2f} M per CPU-second.\n")
    ceiling_no_drain = loopback_sendto(undrained)["sends_per_cpu_s"]

    lines.append(f"## Media workers, pinned ({scale_n} listeners that never read, 3 speakers, one edge; "
                 "each worker's thread on a CPU of its own, `--edge-media-cpus`)\n")
    lines.append("| workers | edge CPUs | joined | forwarded packets/s | edge CPU (cores) | packets per CPU-second | "
                 "of the ceiling (never read) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for workers, cpus in ((1, "1"), (2, "0-1")):
        r = local(work, f"scale-{workers}", ["--edges", "1", "--edge-workers", str(workers), "--pin-edges", cpus,
                                             "--edge-media-cpus", cpus, "--pin-others", "0", "--listeners", str(scale_n), "--speakers", "3",
                                             "--duration", duration, "--ramp", "100", "--deaf-listeners"])
        f = r.get("edge_forwarding") or {"packets_per_s": 0, "cpu_cores": 0, "packets_per_cpu_second": 0}
        lines.append(f"| {workers} | {cpus} | {r['listeners_joined']} | {f['packets_per_s']:.0f} | {f['cpu_cores']:.2f} | "
                     f"{f['packets_per_cpu_second']:.0f} | {100 * f['packets_per_cpu_second'] / ceiling_no_drain:.0f} % |")

    lines.append("\n## The edge's user-space cost per forwarded packet (rewrite, SRTP, batch build; no syscall)\n")
    lines.append("| SRTP profile | ns per listener packet |\n| --- | --- |")
    for profile, ns in user_space_per_listener().items():
        lines.append(f"| {profile} | {ns:.0f} |")

    few, many = (100, 300) if args.quick else (500, 2500)
    lines.append(f"\n## Memory per listener past the DTLS linger ({few} and {many} listeners that never read, "
                 "one edge of two workers and a core, `--dtls-linger 2s`)\n")
    rss = {}
    for n in (few, many):
        r = local(work, f"memory-{n}", ["--edges", "1", "--edge-workers", "2", "--listeners", str(n), "--speakers",
                                        "3", "--duration", duration, "--ramp", "100", "--deaf-listeners",
                                        "--dtls-linger", "2s"])
        rss[n] = (r["listeners_joined"], r.get("sfu_rss_end_mb") or 0.0)
    lines.append("| listeners | joined | SFU RSS, all nodes, MB |\n| --- | --- | --- |")
    for n, (joined, mb) in rss.items():
        lines.append(f"| {n} | {joined} | {mb:.1f} |")
    (j0, m0), (j1, m1) = rss[few], rss[many]
    if j1 > j0:
        lines.append(f"\nPer listener: {(m1 - m0) * 1024 / (j1 - j0):.1f} KiB (the slope between the two).")

    listener_pps = 3 * 50
    loopback = [u for c in (swept, swept_many) for u in c["udp"] if u["path"] == "loopback"]
    send_us = 1e6 / max(u["sends_per_cpu_s"] for u in loopback)
    receive_us = 1e6 / max(u["receives_per_cpu_s"] for u in loopback)
    machine_bound = (os.cpu_count() or 1) / ((send_us + receive_us) / 1e6) / listener_pps
    lines.append(f"\nThe most listeners this machine's kernel could carry with no user-space work at all, "
                 f"SFU and generator together: {os.cpu_count()} cores / ({send_us:.2f} µs per send + {receive_us:.2f} "
                 f"µs per receive, each the cheapest over loopback with swept receivers) / {listener_pps} packets a "
                 f"second each = **{machine_bound:.0f}**.")

    lines.append("\n## Capacity, load generator included (a core, one edge of two workers, decrypt 1 in 10)\n")
    lines.append("| listeners | joined | loss % | p50 ms | p99 ms | edge CPU % | generator CPU % | SFU RSS MB | "
                 "steady: packets/s heard | edge µs per packet | generator µs per packet | "
                 "drops (nodes, datagrams; kernel) | meets |\n"
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in capacity:
        r = local(work, f"capacity-{n}", ["--edges", "1", "--edge-workers", "2", "--listeners", str(n), "--speakers",
                                          "3", "--duration", duration, "--ramp", "100", "--decrypt-every", "10"])
        procs = {x["name"]: x for x in r["processes"]}
        heard = (r.get("steady") or {}).get("packets_per_s", 0)
        lines.append(f"| {n} | {r['listeners_joined']} | {r['loss_percent']:.3f} | {r['latency']['p50_ms']:.1f} | "
                     f"{r['latency']['p99_ms']:.1f} | {procs['edge-1']['cpu_mean_percent']:.0f} | "
                     f"{procs['loadtest']['cpu_mean_percent']:.0f} | {r.get('sfu_rss_end_mb') or 0:.1f} | "
                     f"{heard:.0f} | {jc.steady_cost(r, 'edge-1'):.1f} | {jc.steady_cost(r, 'loadtest'):.1f} | "
                     f"{drops(r)} | {'yes' if jc.meets(r, n) else 'no'} |")

    lines.append("\n## Side by side with Janus\n")
    ns = argparse.Namespace(duration=duration, ramp=100)
    rows = [jc.run_one(kind, n, ns, work) for kind in jc.SERVERS for n in janus_loads]
    lines.append(jc.table(rows, janus_loads))
    lines.append("| listeners | Janus at defaults / our edge, CPU per packet (steady) | tuned Janus / our edge | "
                 "tuned Janus / our core and edge (sfu) |\n| --- | --- | --- | --- |")
    cost = {(r["server"], r["listeners"]): r["steady_cpu_s_per_m"] for r in rows}
    for n in janus_loads:
        lines.append(f"| {n} | {cost[('janus', n)] / cost[('edge', n)]:.1f}x | "
                     f"{cost[('janus-2-loops', n)] / cost[('edge', n)]:.1f}x | "
                     f"{cost[('janus-2-loops', n)] / cost[('sfu', n)]:.1f}x |")
    lines.append(profiles(work, profiled, swept_many))
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
