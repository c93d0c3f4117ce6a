// The pre-call check's network half (docs/calls.md, "Before the visit: the
// check"). Apps call it as `checkConnection()` from wadud-call.js; the check
// page (check.html) shows its progress. No media-worker code of its own:
//
// 1. POST /api/v1/check: a throwaway room, a token that may only publish,
//    one that may only subscribe, and TURN credentials.
// 2. At once, two relay-only peer connections, one given only our TURN over
//    TCP (turn:...?transport=tcp), one only over TLS (turns:): a relay
//    candidate means that transport reaches our relay and it allocated.
// 3. The room joined twice through the ordinary signalling, with no ICE
//    servers: the sender publishes a synthetic video (noise, so the encoder
//    spends what the path allows) and a tone, the receiver subscribes. Both
//    connected = UDP reaches a media worker. If not, the same again
//    relay-only through TURN over TCP (or TLS) when that got through.
// 4. A few seconds' probe: getStats() on both sides gives what went up
//    (outbound-rtp, less the loss remote-inbound-rtp reports), what came
//    back down through the SFU (inbound-rtp), round-trip time (the selected
//    candidate pair's currentRoundTripTime, else remote-inbound-rtp's) and
//    loss.
//
// The verdict: `ready` (UDP, and video fits both ways), `ready-relay` (only
// TURN over TCP/TLS got through, and video fits), `audio-only` (connected,
// but the probe could not carry the lowest video layer, VIDEO_KBPS),
// `blocked` (nothing got through; said within 15 s).

export const VIDEO_KBPS = 150;
// How long each step may take. UDP gets the longest: ICE over a slow
// mobile link can take a few seconds. The worst case (no UDP, a relay that
// allocates but cannot reach a worker) adds up to under 15 s.
const JOIN_MS = 4000;
const UDP_MS = 6000;
const RELAY_GATHER_MS = 5000;
const RELAY_CONNECT_MS = 6000;
// Whatever the steps took, `blocked` is said by then.
const BLOCKED_BY_MS = 14500;
export const PROBE_MS = 4000;
// The first second of the probe is the encoder's and the estimator's ramp.
const WARMUP_MS = 1000;

// runCheck(WadudCall, {base, region, onProgress, probeMs}) -> {verdict, details}
// base: the Wadud server ('' = this page's); region: the media region to
// measure; onProgress(step, info) for step in server | udp | tcp | tls |
// speed, info.state in running | ok | failed | skipped.
export async function runCheck(WadudCall, { base = '', region = '', onProgress = null, probeMs = PROBE_MS } = {}) {
  const started = performance.now();
  const details = { server: null, udp: null, tcp: null, tls: null, speed: null, path: null, ms: 0 };
  const report = (step, info) => {
    details[step] = info;
    if (onProgress) {
      try { onProgress(step, info); } catch (_) { /* the caller's problem */ }
    }
  };
  const media = syntheticMedia();
  let pair = null;
  const finish = async (verdict) => {
    if (pair) await leave(pair);
    media.stop();
    details.ms = Math.round(performance.now() - started);
    return { verdict, details };
  };

  report('server', { state: 'running' });
  let session;
  try {
    session = await startCheck(base, region);
  } catch (e) {
    report('server', { state: 'failed', error: String(e.message || e) });
    for (const step of ['udp', 'tcp', 'tls', 'speed']) report(step, { state: 'failed' });
    return finish('blocked');
  }
  const relays = relayServers(session.ice_servers || []);
  const tcp = relayCheck('tcp', relays.tcp, report);
  const tls = relayCheck('tls', relays.tls, report);
  const url = socketUrl(base, session.room);

  report('udp', { state: 'running' });
  const udpStart = performance.now();
  try {
    pair = await joinPair(WadudCall, session, url, { iceServers: [] }, media);
    report('server', { state: 'ok', ms: pair.joinMs });
    pair.connected = await until(() => bothConnected(pair), UDP_MS - pair.joinMs);
  } catch (e) {
    report('server', { state: 'failed', error: String(e.message || e) });
    report('udp', { state: 'failed' });
    await Promise.all([tcp, tls]);
    report('speed', { state: 'failed' });
    return finish('blocked');
  }
  report('udp', { state: pair.connected ? 'ok' : 'failed', ms: Math.round(performance.now() - udpStart) });
  if (pair.connected) {
    details.path = 'udp';
  } else {
    await leave(pair);
    pair = null;
    const [tcpOk, tlsOk] = await Promise.all([tcp, tls]);
    const via = tcpOk ? relays.tcp : tlsOk ? relays.tls : null;
    if (via) {
      report('speed', { state: 'running' });
      try {
        pair = await joinPair(WadudCall, session, url, { iceServers: [via], iceTransportPolicy: 'relay' }, media);
        const left = started + BLOCKED_BY_MS - performance.now();
        if (await until(() => bothConnected(pair), Math.min(RELAY_CONNECT_MS, left))) {
          details.path = tcpOk ? 'relay-tcp' : 'relay-tls';
        }
      } catch (_) { /* no path: blocked */ }
    }
  }
  if (!details.path) {
    report('speed', { state: 'failed' });
    return finish('blocked');
  }
  report('speed', { state: 'running' });
  const speed = await probe(pair, probeMs);
  const fits = speed.video_kbps >= VIDEO_KBPS;
  report('speed', { state: fits ? 'ok' : 'failed', ...speed });
  await Promise.all([tcp, tls]);
  if (!fits) return finish(speed.down_kbps > 0 ? 'audio-only' : 'blocked');
  return finish(details.path === 'udp' ? 'ready' : 'ready-relay');
}

async function startCheck(base, region) {
  const body = region ? { region } : {};
  const resp = await withDeadline(fetch(`${base}/api/v1/check`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  }), JOIN_MS, null);
  if (!resp) throw new Error('the server did not answer');
  if (!resp.ok) {
    let detail = `${resp.status}`;
    try { detail = (await resp.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return resp.json();
}

function socketUrl(base, room) {
  if (!base) return null; // WadudCall's default: this page's server
  return `${base.replace(/^http/, 'ws')}/ws?room=${encodeURIComponent(room)}`;
}

// One RTCIceServer per transport we can try on its own: TURN over TCP, TLS.
function relayServers(servers) {
  const out = { tcp: null, tls: null };
  for (const s of servers) {
    for (const u of [].concat(s.urls || [])) {
      const kind = /^turns:/i.test(u) ? 'tls' : /^turn:.*[?&]transport=tcp/i.test(u) ? 'tcp' : null;
      if (kind && !out[kind]) out[kind] = { urls: [u], username: s.username, credential: s.credential };
    }
  }
  return out;
}

async function relayCheck(kind, server, report) {
  if (!server) {
    report(kind, { state: 'skipped' });
    return false;
  }
  report(kind, { state: 'running' });
  const started = performance.now();
  const pc = new RTCPeerConnection({ iceServers: [server], iceTransportPolicy: 'relay' });
  try {
    const found = new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        if (!e.candidate) resolve(false);
        else if (e.candidate.type === 'relay') resolve(true);
      };
    });
    pc.createDataChannel('check');
    await pc.setLocalDescription(await pc.createOffer());
    const ok = await withDeadline(found, RELAY_GATHER_MS, false);
    report(kind, { state: ok ? 'ok' : 'failed', ms: Math.round(performance.now() - started) });
    return ok;
  } catch (e) {
    report(kind, { state: 'failed', error: String(e.message || e) });
    return false;
  } finally {
    pc.close();
  }
}

async function joinPair(WadudCall, session, url, rtcConfig, media) {
  const sender = new WadudCall({ token: session.send_token, room: session.room, url, rtcConfig });
  const receiver = new WadudCall({ token: session.receive_token, room: session.room, url, rtcConfig });
  const pair = { sender, receiver, joinMs: 0, connected: false };
  // WadudCall stops what it published when it leaves: give it copies.
  await sender.publish({ microphone: media.audio.clone(), camera: media.video.clone() });
  const started = performance.now();
  const joined = await withDeadline(Promise.all([sender.join(), receiver.join()]), JOIN_MS, null);
  if (!joined) {
    await leave(pair);
    throw new Error('the call server did not answer');
  }
  pair.joinMs = Math.round(performance.now() - started);
  return pair;
}

function bothConnected({ sender, receiver }) {
  return Boolean(sender.publishPc && sender.publishPc.connectionState === 'connected'
    && receiver.subscribePc && receiver.subscribePc.connectionState === 'connected');
}

async function leave({ sender, receiver }) {
  await Promise.all([sender, receiver].map((c) => withDeadline(c.leave().catch(() => {}), 1000, null)));
}

async function probe(pair, ms) {
  await sleep(WARMUP_MS);
  const a = await readStats(pair);
  await sleep(Math.max(500, ms - WARMUP_MS));
  const b = await readStats(pair);
  const seconds = (b.at - a.at) / 1000;
  const kbps = (key) => Math.max(0, Math.round(((b[key] - a[key]) * 8) / seconds / 1000));
  const sent = b.sentPackets - a.sentPackets;
  const upLoss = sent > 0 ? clamp((b.upLost - a.upLost) / sent) : 0;
  const got = b.recvPackets - a.recvPackets;
  const lost = Math.max(0, b.downLost - a.downLost);
  const downLoss = got + lost > 0 ? lost / (got + lost) : 0;
  const upVideo = kbps('sentVideoBytes') * (1 - upLoss);
  const downVideo = kbps('recvVideoBytes');
  return {
    up_kbps: kbps('sentBytes'),
    down_kbps: kbps('recvBytes'),
    // What a video could count on: the narrower of the two ways.
    video_kbps: Math.round(Math.min(upVideo, downVideo)),
    up_loss: round3(upLoss),
    down_loss: round3(downLoss),
    rtt_ms: b.rtt === null ? null : Math.round(b.rtt * 1000),
    frames: b.frames - a.frames,
    candidate: b.candidate,
  };
}

async function readStats({ sender, receiver }) {
  const out = {
    at: performance.now(), sentBytes: 0, sentVideoBytes: 0, sentPackets: 0, upLost: 0,
    recvBytes: 0, recvVideoBytes: 0, recvPackets: 0, downLost: 0, frames: 0, rtt: null, candidate: null,
  };
  let remoteRtt = null;
  if (sender.publishPc) {
    const report = await sender.publishPc.getStats();
    report.forEach((s) => {
      if (s.type === 'outbound-rtp') {
        out.sentBytes += s.bytesSent || 0;
        out.sentPackets += s.packetsSent || 0;
        if (s.kind === 'video') out.sentVideoBytes += s.bytesSent || 0;
      } else if (s.type === 'remote-inbound-rtp') {
        out.upLost += Math.max(0, s.packetsLost || 0);
        if (s.roundTripTime) remoteRtt = s.roundTripTime;
      }
    });
    const pairStats = selectedPair(report);
    if (pairStats) {
      if (pairStats.currentRoundTripTime) out.rtt = pairStats.currentRoundTripTime;
      const local = report.get(pairStats.localCandidateId);
      if (local) out.candidate = { type: local.candidateType, protocol: local.protocol, relay: local.relayProtocol || null };
    }
  }
  if (out.rtt === null) out.rtt = remoteRtt;
  if (receiver.subscribePc) {
    (await receiver.subscribePc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      out.recvBytes += s.bytesReceived || 0;
      out.recvPackets += s.packetsReceived || 0;
      out.downLost += Math.max(0, s.packetsLost || 0);
      if (s.kind === 'video') {
        out.recvVideoBytes += s.bytesReceived || 0;
        out.frames += s.framesDecoded || 0;
      }
    });
  }
  return out;
}

function selectedPair(report) {
  let found = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) found = report.get(s.selectedCandidatePairId);
  });
  return found;
}

// What the probe sends: 640x360 of noise moving at random 15 times a second
// (nothing an encoder can predict, so it spends whatever the estimator
// allows) and a quiet tone.
function syntheticMedia() {
  const W = 640;
  const H = 360;
  const canvas = document.createElement('canvas');
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext('2d');
  const noise = document.createElement('canvas');
  noise.width = W;
  noise.height = H;
  const nctx = noise.getContext('2d');
  const image = nctx.createImageData(W, H);
  for (let i = 0; i < image.data.length; i += 65536) {
    crypto.getRandomValues(image.data.subarray(i, Math.min(image.data.length, i + 65536)));
  }
  for (let i = 3; i < image.data.length; i += 4) image.data[i] = 255;
  nctx.putImageData(image, 0, 0);
  const draw = () => {
    const x = Math.floor(Math.random() * W);
    const y = Math.floor(Math.random() * H);
    // The noise image, shifted (x, y) with wrap-around: four pieces.
    ctx.drawImage(noise, x, y, W - x, H - y, 0, 0, W - x, H - y);
    if (x) ctx.drawImage(noise, 0, y, x, H - y, W - x, 0, x, H - y);
    if (y) ctx.drawImage(noise, x, 0, W - x, y, 0, H - y, W - x, y);
    if (x && y) ctx.drawImage(noise, 0, 0, x, y, W - x, H - y, x, y);
  };
  draw();
  const timer = setInterval(draw, 66);
  const [video] = canvas.captureStream(15).getVideoTracks();
  const audioCtx = new AudioContext();
  const osc = audioCtx.createOscillator();
  const gain = audioCtx.createGain();
  const dest = audioCtx.createMediaStreamDestination();
  osc.frequency.value = 440;
  gain.gain.value = 0.05;
  osc.connect(gain).connect(dest);
  osc.start();
  audioCtx.resume().catch(() => { /* needs a gesture in some browsers: the tone is optional */ });
  const [audio] = dest.stream.getAudioTracks();
  return {
    video,
    audio,
    stop() {
      clearInterval(timer);
      video.stop();
      audio.stop();
      audioCtx.close().catch(() => {});
    },
  };
}

async function until(test, ms) {
  const deadline = performance.now() + Math.max(0, ms);
  while (!test()) {
    if (performance.now() > deadline) return false;
    await sleep(100);
  }
  return true;
}

function withDeadline(promise, ms, fallback) {
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(() => resolve(fallback), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function clamp(x) {
  return Math.min(1, Math.max(0, x));
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}
