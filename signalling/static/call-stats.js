// The call page's share of the visit's call report (docs/calls.md, "Call
// reports"): every EVERY_MS while joined, what this browser itself sees
// (getStats: loss and freezes of what it receives, concealed audio, the
// candidate pair in use and so whether media goes through TURN, its RTT),
// how many times it restarted ICE or made new peer connections, and the
// quality bars it shows, posted with the room token to
// POST /api/v1/calls/stats. Best effort: a failed post is not retried.
//
//   import { reportStats } from './call-stats.js';
//   reportStats(call, token);

const EVERY_MS = 5000;
// Opus decodes at 48 kHz in every browser; concealed samples are at that rate.
const AUDIO_RATE = 48000;

async function pairOf(pc) {
  if (!pc) return null;
  const report = await pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  });
  if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  if (!pair) return null;
  const local = report.get(pair.localCandidateId) || {};
  return { relay: local.candidateType === 'relay', candidate: `${local.candidateType || '?'}/${local.protocol || '?'}`, rtt: pair.currentRoundTripTime };
}

// `last`: the previous sample's packet counts, for the loss since then.
export async function sample(call, last = { lost: 0, received: 0 }) {
  const out = { freeze_count: 0, freeze_seconds: 0, concealed_seconds: 0, relay: false, candidate: '' };
  let concealed = 0;
  let samples = 0;
  let lost = 0;
  let received = 0;
  if (call.subscribePc) {
    (await call.subscribePc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      lost += Math.max(0, s.packetsLost || 0);
      received += s.packetsReceived || 0;
      if (s.kind === 'video') {
        out.freeze_count += s.freezeCount || 0;
        out.freeze_seconds += s.totalFreezesDuration || 0;
      } else {
        concealed += s.concealedSamples || 0;
        samples += s.totalSamplesReceived || 0;
      }
    });
  }
  // What this page lost of what was sent to it since the last sample (a
  // new peer connection starts its counts again: no loss for that window).
  const dLost = lost - last.lost;
  const dAll = dLost + received - last.received;
  out.loss = dLost >= 0 && dAll > 0 ? Math.round((dLost / dAll) * 1000) / 1000 : 0;
  last.lost = lost;
  last.received = received;
  out.concealed_seconds = Math.round((concealed / AUDIO_RATE) * 10) / 10;
  out.concealed = samples ? Math.round((concealed / samples) * 1000) / 1000 : 0;
  const pairs = [await pairOf(call.publishPc), await pairOf(call.subscribePc)].filter(Boolean);
  out.relay = pairs.some((p) => p.relay);
  out.candidate = pairs.length ? pairs[0].candidate : '';
  const rtts = pairs.map((p) => p.rtt).filter((r) => typeof r === 'number');
  if (rtts.length) out.rtt = Math.max(...rtts);
  out.ice_restarts = call.iceRestarts || 0;
  out.media = call.media || '';
  out.quality_shown = Object.fromEntries(call.quality || []);
  return out;
}

export function reportStats(call, token) {
  const last = { lost: 0, received: 0 };
  const timer = setInterval(async () => {
    if (['left', 'ended', 'denied', 'removed', 'replaced', 'failed'].includes(call.state)) {
      clearInterval(timer);
      return;
    }
    if (call.state !== 'joined' || !call.me) return;
    try {
      const stats = await sample(call, last);
      await fetch('/api/v1/calls/stats', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token, participant_id: call.me.id, stats }),
        keepalive: true,
      });
    } catch (_) { /* a connection closed under getStats, the server away: next time */ }
  }, EVERY_MS);
  return () => clearInterval(timer);
}
