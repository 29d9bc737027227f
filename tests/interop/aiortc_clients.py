"""Runs aiortc WebRTC clients against an edge and reports what each one received.

Reads a JSON spec on stdin, prints a JSON report on stdout. Used by the Rust interop
tests, which make the assertions. Each speaker sends a sine tone of its own frequency,
so a listener can tell from the decoded audio whose voice it got.
"""

import asyncio
import fractions
import time
import json
import sys
import urllib.error
import urllib.request

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription, rtcdtlstransport
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver
import av

SAMPLE_RATE = 48000
FRAME = 960  # 20 ms

# Every RTP packet a receiver accepts, recorded per receiver.
PACKETS = {}
_original_handle = RTCRtpReceiver._handle_rtp_packet


async def _recording_handle(self, packet, arrival_time_ms):
    PACKETS.setdefault(id(self), []).append(
        (packet.ssrc, packet.sequence_number, list(packet.csrc), time.monotonic()))
    await _original_handle(self, packet, arrival_time_ms)


RTCRtpReceiver._handle_rtp_packet = _recording_handle


class ToneTrack(AudioStreamTrack):
    """A sine tone at `freq` Hz; silence outside the (start, end) seconds of `schedule`."""

    def __init__(self, freq, amplitude=12000, schedule=None, quiet_until=0.0, quiet_amplitude=0):
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.schedule = schedule
        self.quiet_until = quiet_until
        self.quiet_amplitude = quiet_amplitude
        self.n = 0

    async def recv(self):
        frame = await super().recv()  # paces at real time and sets pts
        t = (np.arange(FRAME) + self.n) / SAMPLE_RATE
        self.n += FRAME
        now = self.n / SAMPLE_RATE
        on = self.schedule is None or any(a <= now < b for a, b in self.schedule)
        amplitude = (self.quiet_amplitude if now < self.quiet_until else self.amplitude) if on else 0
        samples = (np.sin(2 * np.pi * self.freq * t) * amplitude).astype(np.int16)
        out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = SAMPLE_RATE
        out.pts = frame.pts
        out.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return out


def http(method, url, body=None, token=None):
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), r.headers.get("Location")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), None


def dominant_frequency(samples):
    if len(samples) < SAMPLE_RATE // 4:
        return None
    x = samples[-SAMPLE_RATE:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


async def consume(track, sink):
    try:
        while True:
            frame = await track.recv()
            # Packed s16: channels interleaved; keep the first.
            mono = frame.to_ndarray().ravel()[:: len(frame.layout.channels)]
            sink["frames"] += 1
            sink["chunks"].append(mono.astype(np.int16))
    except (MediaStreamError, asyncio.CancelledError):
        pass


async def run_client(spec, default_base, end_time):
    base = spec.get("base", default_base)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(spec.get("start_delay", 0))
    result = {"name": spec["name"], "tracks": [], "errors": []}
    pc = RTCPeerConnection()
    consumers = []
    sinks = {}
    sender_transceiver = None
    if spec.get("tone"):
        track = ToneTrack(spec["tone"], spec.get("amplitude", 12000), spec.get("schedule"),
                          spec.get("quiet_until", 0.0), spec.get("quiet_amplitude", 0))
        sender_transceiver = pc.addTransceiver(track, direction=spec.get("send_direction", "sendrecv"))
    for _ in range(spec.get("recv_tracks", 0)):
        pc.addTransceiver("audio", direction="recvonly")

    @pc.on("track")
    def on_track(track):
        sink = {"frames": 0, "chunks": []}
        sinks[id(track)] = sink
        consumers.append(asyncio.ensure_future(consume(track, sink)))

    await pc.setLocalDescription(await pc.createOffer())
    status, body, location = await loop.run_in_executor(
        None, http, "POST", base + spec["path"], pc.localDescription.sdp, spec.get("token"))
    result["status"] = status
    if status != 201:
        result["errors"].append(body.strip())
        await pc.close()
        return result
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    await asyncio.sleep(max(0.0, end_time - loop.time()))

    if sender_transceiver is not None:
        result["send_ssrc"] = sender_transceiver.sender._ssrc
        # The SFU names speakers: ask our edge which id it gave us (our own token may see).
        channel = spec["path"].rsplit("/", 1)[1]
        status, view, _ = await loop.run_in_executor(
            None, http, "GET", base + "/channels/" + channel, None, spec.get("token"))
        if status == 200:
            for s in json.loads(view)["speakers"]:
                if s["participant"] == spec["name"]:
                    result["speaker_id"] = s["id"]
        else:
            result["errors"].append(f"channel view: {status} {view.strip()}")
    dtls = pc.getTransceivers()[0].receiver.transport
    profile = dtls._ssl.get_selected_srtp_profile() if getattr(dtls, "_ssl", None) else None
    result["srtp_profile"] = profile.decode() if profile else None
    for t in pc.getTransceivers():
        if t.currentDirection not in ("recvonly", "sendrecv"):
            continue
        packets = PACKETS.get(id(t.receiver), [])
        seqs = [p[1] for p in packets]
        gaps = sum(1 for a, b in zip(seqs, seqs[1:]) if (b - a) % 65536 > 1 and (b - a) % 65536 < 32768)
        backwards = sum(1 for a, b in zip(seqs, seqs[1:]) if (b - a) % 65536 >= 32768 or b == a)
        track = t.receiver.track
        sink = sinks.get(id(track), {"frames": 0, "chunks": []})
        samples = np.concatenate(sink["chunks"]) if sink["chunks"] else np.zeros(0, dtype=np.int16)
        voiced = samples[-SAMPLE_RATE:] if len(samples) else samples
        arrivals = [p[3] for p in packets]
        # Speakers in the order they appeared on this slot.
        order = []
        for p in packets:
            for c in p[2]:
                if c not in order:
                    order.append(c)
        result["tracks"].append({
            "mid": t.mid,
            "packets": len(packets),
            "ssrcs": sorted({p[0] for p in packets}),
            "csrcs": sorted({c for p in packets for c in p[2]}),
            "csrc_order": order,
            "last_second_csrcs": sorted({c for p in packets if p[3] >= packets[-1][3] - 1.0 for c in p[2]}) if packets else [],
            "max_gap_ms": max((b - a for a, b in zip(arrivals, arrivals[1:])), default=0.0) * 1000.0,
            "seq_gaps": gaps,
            "seq_backwards": backwards,
            "frames": sink["frames"],
            "rms": float(np.sqrt(np.mean(voiced.astype(np.float64) ** 2))) if len(voiced) else 0.0,
            "freq": dominant_frequency(samples),
        })
    for c in consumers:
        c.cancel()
    if location:
        status, _, _ = await loop.run_in_executor(None, http, "DELETE", base + location, None, None)
        result["delete_status"] = status
    await pc.close()
    return result


async def main():
    spec = json.load(sys.stdin)
    if spec.get("srtp") == "cm":
        rtcdtlstransport.SRTP_PROFILES[:] = [rtcdtlstransport.SRTP_AES128_CM_SHA1_80]
    elif spec.get("srtp") == "gcm":
        rtcdtlstransport.SRTP_PROFILES[:] = [rtcdtlstransport.SRTP_AEAD_AES_128_GCM]
    clients = spec["clients"]
    end_time = asyncio.get_running_loop().time() + spec["duration"]
    results = await asyncio.gather(*[run_client(c, spec["base"], end_time) for c in clients])
    json.dump({"clients": results}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
