"""Drives Debian's headless Chromium on the edge's demo page: one tab talks, one listens.

Reads a JSON spec on stdin ({"base", "channel", "duration"}, and "listen_base" to listen on
another edge's page), prints a JSON report of what
each tab's RTCPeerConnection saw (getStats, getContributingSources) and what the page shows.
Talks to Chromium over the DevTools protocol; no browser download, no driver.
"""

import asyncio
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
import wave

import websockets

CHROMIUM = os.environ.get("SFU_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def write_tone(path, freq=440.0, seconds=20, rate=48000):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(
            struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(rate * seconds)
        )
        w.writeframes(frames)


class Tab:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expression):
        r = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression, timeout=30.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if await self.eval(expression):
                return True
            await asyncio.sleep(0.2)
        return False


STATS_JS = """(async () => {
  const pc = window.sfu.pc;
  if (!pc) return null;
  const out = { state: pc.connectionState, inbound: [], outbound: [], csrcs: [] };
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio")
      out.inbound.push({ ssrc: s.ssrc, packetsReceived: s.packetsReceived || 0,
                         totalAudioEnergy: s.totalAudioEnergy || 0, packetsLost: s.packetsLost || 0 });
    if (s.type === "outbound-rtp" && s.kind === "audio")
      out.outbound.push({ ssrc: s.ssrc, packetsSent: s.packetsSent || 0 });
  });
  for (const t of pc.getTransceivers())
    for (const c of t.receiver.getContributingSources()) out.csrcs.push({ source: c.source, audioLevel: c.audioLevel });
  out.hearing = [...document.querySelectorAll("#hearing li")].map((li) => li.textContent);
  out.speakers = [...document.querySelectorAll("#speakers li")].map((li) => ({ text: li.textContent, speaking: li.className === "speaking" }));
  out.status = document.getElementById("status").textContent;
  out.edge = window.sfu.edge;
  out.session = window.sfu.location;
  return out;
})()"""


async def open_tab(port, url):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?{url}", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        info = json.loads(r.read())
    ws = await websockets.connect(info["webSocketDebuggerUrl"], max_size=None)
    tab = Tab(ws)
    await tab.call("Runtime.enable")
    if not await tab.wait_for("document.readyState === 'complete' && !!window.sfu"):
        raise RuntimeError("demo page did not load")
    return tab


async def join(tab, name, button):
    await tab.eval(f"document.getElementById('name').value = {json.dumps(name)}; "
                   f"document.getElementById('channel').value = window.CHANNEL; "
                   f"document.getElementById('{button}').click(); true")
    ok = await tab.wait_for("window.sfu.pc && window.sfu.pc.connectionState === 'connected'")
    if not ok:
        status = await tab.eval("document.getElementById('status').textContent")
        raise RuntimeError(f"{name} did not connect: {status}")


async def main():
    spec = json.load(sys.stdin)
    work = tempfile.mkdtemp(prefix="sfu-chromium-")
    tone = os.path.join(work, "tone.wav")
    write_tone(tone)
    profile = os.path.join(work, "profile")
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={tone}", "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "chromium.log"), "wb"))
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        for _ in range(150):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("chromium did not start: " + open(os.path.join(work, "chromium.log")).read()[-2000:])
        port = int(open(port_file).read().split()[0])
        talker = await open_tab(port, spec["base"] + "/")
        listener = await open_tab(port, spec.get("listen_base", spec["base"]) + "/")
        for tab in (talker, listener):
            await tab.eval(f"window.CHANNEL = {json.dumps(spec['channel'])}; true")
        await join(talker, "alice", "talk")
        await join(listener, "bob", "listen")
        await asyncio.sleep(spec["duration"])
        report = {"talker": await talker.eval(STATS_JS), "listener": await listener.eval(STATS_JS)}
        await talker.eval("document.getElementById('leave').click(); true")
        await listener.eval("document.getElementById('leave').click(); true")
        await asyncio.sleep(0.5)
        json.dump(report, sys.stdout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
