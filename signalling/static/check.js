// The pre-call check page, /check (docs/calls.md, "Before the visit: the
// check"): camera and microphone with a level meter, a speaker test, and
// the network check of wadud-call.js's checkConnection() shown row by row,
// then a verdict in plain words with what to do. In English, Urdu or
// Arabic (i18n.js: ?lang=, else the browser's language).
//
// Page options: `lang`, and `region` (the media region to measure).
// A page that frames this one receives, once the verdict is in,
//   {type: 'wadud-check', verdict, details}
// (verdict: ready | ready-relay | audio-only | blocked); the page itself
// keeps it as `window.wadudCheck` and <body data-verdict>.

import { chime, levelMeter } from './sound.js';
import { checkConnection } from './wadud-call.js';
import { LANGUAGES, lang, t, translatePage } from './i18n.js';

const $ = (id) => document.getElementById(id);
const options = new URLSearchParams(location.search);

translatePage();
languageLinks();

function languageLinks() {
  const nav = $('langs');
  for (const [code, { name }] of Object.entries(LANGUAGES)) {
    const params = new URLSearchParams(location.search);
    params.set('lang', code);
    const a = document.createElement('a');
    a.href = `?${params}`;
    a.lang = code;
    a.hreflang = code;
    a.textContent = name;
    if (code === lang) a.setAttribute('aria-current', 'page');
    nav.append(a);
  }
}

// ---- camera, microphone, speaker ------------------------------------------

let meter = null;

async function devices() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true },
      video: { width: { ideal: 640 }, height: { ideal: 360 } },
    });
  } catch (e) {
    const note = $('devices-note');
    note.className = 'error';
    note.textContent = t('devices.unavailable', { error: e.name });
    return { camera: false, microphone: false, error: e.name };
  }
  const camera = stream.getVideoTracks()[0] || null;
  const microphone = stream.getAudioTracks()[0] || null;
  $('preview').srcObject = camera ? new MediaStream([camera]) : null;
  $('preview-off').hidden = Boolean(camera);
  if (microphone) startMeter(microphone);
  return { camera: Boolean(camera), microphone: Boolean(microphone) };
}

function startMeter(track) {
  const { ctx } = levelMeter(track, $('level'));
  meter = ctx;
  // Audio starts suspended until the user does something on the page.
  for (const type of ['pointerdown', 'keydown']) {
    document.addEventListener(type, () => ctx.resume(), { once: true });
  }
}

// A short two-note chime through the default output.
function playTone() {
  const ctx = new AudioContext();
  const notes = [[0, 660], [0.35, 880]];
  chime(ctx, ctx.currentTime + 0.05, notes, { peak: 0.3, rise: 0.03, fade: 0.3, stop: 0.32 });
  setTimeout(() => ctx.close(), 1200);
  if (meter) meter.resume();
  document.body.dataset.tone = String(Number(document.body.dataset.tone || 0) + 1);
}

// ---- the network ------------------------------------------------------------

function showStep(step, info) {
  const status = document.querySelector(`#rows li[data-step="${step}"] .status`);
  if (!status) return;
  const state = info.state === 'running' ? 'running' : info.state;
  status.dataset.state = state;
  status.textContent = t(`status.${state}`);
  if (step === 'speed' && info.video_kbps !== undefined) showSpeed(info);
}

function showSpeed(info) {
  const p = $('speed');
  const part = (label, value) => {
    const span = document.createElement('span');
    const bdi = document.createElement('bdi');
    bdi.textContent = value;
    span.append(`${t(label)} `, bdi);
    return span;
  };
  const loss = Math.round(Math.max(info.up_loss, info.down_loss) * 100);
  const parts = [
    part('speed.up', `${info.up_kbps} kbit/s`),
    part('speed.down', `${info.down_kbps} kbit/s`),
  ];
  if (info.rtt_ms !== null) parts.push(part('speed.rtt', `${info.rtt_ms} ms`));
  parts.push(part('speed.loss', `${loss}%`));
  p.replaceChildren(...parts.flatMap((s, i) => (i ? [' · ', s] : [s])));
  p.hidden = false;
}

function showVerdict(verdict) {
  const box = $('verdict');
  box.dataset.verdict = verdict;
  $('verdict-title').textContent = verdict === 'running' ? t('check.running') : t(`verdict.${verdict}`);
  $('verdict-text').textContent = verdict === 'running' ? '' : t(`verdict.${verdict}.text`);
  $('again').hidden = verdict === 'running';
}

let running = false;
async function run() {
  if (running) return;
  running = true;
  showVerdict('running');
  $('speed').hidden = true;
  for (const status of document.querySelectorAll('#rows .status')) {
    status.dataset.state = 'waiting';
    status.textContent = t('status.waiting');
  }
  delete document.body.dataset.verdict;
  const [result, found] = await Promise.all([
    checkConnection({ region: options.get('region') || '', onProgress: showStep }),
    deviceCheck,
  ]);
  const details = { ...result.details, devices: found };
  window.wadudCheck = { verdict: result.verdict, details };
  showVerdict(result.verdict);
  document.body.dataset.verdict = result.verdict;
  running = false;
  if (window.parent !== window) {
    window.parent.postMessage({ type: 'wadud-check', verdict: result.verdict, details }, '*');
  }
}

const deviceCheck = devices();
$('play').onclick = playTone;
$('again').onclick = run;
run().catch((e) => {
  running = false;
  showVerdict('blocked');
  $('verdict-text').textContent = String(e.message || e);
  document.body.dataset.verdict = 'blocked';
});
