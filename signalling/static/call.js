// The call page, /call/<room>?token=...: a device check, then the call
// (or the waiting room), then an end screen. All protocol work is in
// wadud-call.js; this file only turns its state and events into the page.
//
// For tests and embedders: `window.wadudCall` is the WadudCall once joining
// starts (see its stats()), and a page that frames this one receives
// {source: 'wadud-call', type: 'state', state, reason} messages, and
// {source: 'wadud-call', type: 'media', reason} when media reconnects.

import { WadudCall } from './wadud-call.js';

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
const token = takeToken();
const claims = readClaims(token);

const VIDEO = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

let call = null;
let camera = null; // local camera track, null while the camera is off
let microphone = null;
let wantCamera = true;
let wantMic = true;
let meter = null;
const tiles = new Map(); // participant id (or "<id>:screen") -> tile

// ---- the token ------------------------------------------------------------

// The token is a credential: keep it out of the address bar (screenshots,
// screen shares, history) once read, and in this tab's session storage so a
// reload still works.
function takeToken() {
  const key = `wadud-call-token:${room}`;
  const params = new URLSearchParams(location.search);
  let t = params.get('token');
  try {
    if (t) sessionStorage.setItem(key, t);
    else t = sessionStorage.getItem(key);
  } catch (_) { /* storage blocked (some embeds): the URL keeps it */ return t; }
  if (params.has('token')) {
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
  }
  return t;
}

// The token's claims, read only to greet the user; the server verifies it.
function readClaims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (_) {
    return null;
  }
}

// ---- screens ----------------------------------------------------------------

function show(screen) {
  for (const s of document.querySelectorAll('.screen')) s.hidden = s.id !== screen;
  document.body.dataset.screen = screen;
}

function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 4000);
}

const ENDINGS = {
  left: ['You left the call', ''],
  ended: ['The call has ended', 'The doctor ended the call.'],
  denied: ['You were not admitted', 'The doctor did not let you in to this call.'],
  removed: ['You were removed from the call', ''],
  replaced: ['You joined from another window', 'This window is no longer in the call.'],
  failed: ['Could not stay in the call', ''],
};

// Why the server refused us, in words for a patient (protocol.md codes).
const REFUSALS = {
  unauthorized: ['This link does not work', 'It has expired or is not valid. Ask the clinic for a new link.'],
  forbidden: ['This link is for another call', 'Check that you opened the link you were sent.'],
  'room-full': ['This call is full', 'Ask the doctor to make room, then try again.'],
};

function showEnded(state, reason) {
  const refusal = call && call.refusal && REFUSALS[call.refusal.code];
  const [title, text] = refusal || ENDINGS[state] || ENDINGS.failed;
  $('ended-title').textContent = title;
  $('ended-reason').textContent = text || reason || '';
  const final = state === 'denied' || state === 'ended' || (call && call.refusal && call.refusal.code !== 'room-full');
  $('rejoin').hidden = !token || final;
  stopLocal();
  show('ended');
}

function tellParent(state, reason) {
  if (window.parent !== window) {
    window.parent.postMessage({ source: 'wadud-call', type: 'state', state, reason }, '*');
  }
}

// ---- devices: the check before joining ------------------------------------

async function prejoin() {
  show('prejoin');
  const who = claims ? `${claims.name || claims.sub} (${claims.role || 'guest'})` : '';
  $('who').textContent = who ? `Joining as ${who}` : '';
  if (claims && claims.exp && claims.exp * 1000 < Date.now()) {
    $('who').textContent += ' · this link has expired; ask for a new one';
  }
  await openDevices({ audio: AUDIO, video: VIDEO });
  await listDevices();
  $('camera-select').onchange = (e) => openDevices({ video: { ...VIDEO, deviceId: { exact: e.target.value } } });
  $('mic-select').onchange = (e) => openDevices({ audio: { ...AUDIO, deviceId: { exact: e.target.value } } });
  $('pre-cam').onclick = () => {
    wantCamera = !wantCamera;
    pressed($('pre-cam'), wantCamera, 'Camera on', 'Camera off');
    if (camera) camera.enabled = wantCamera;
    $('preview-off').hidden = wantCamera && Boolean(camera);
  };
  $('pre-mic').onclick = () => {
    wantMic = !wantMic;
    pressed($('pre-mic'), wantMic, 'Microphone on', 'Microphone off');
    if (microphone) microphone.enabled = wantMic;
  };
  $('join').onclick = join;
}

// Ask for the devices in `constraints` and make them the ones in use.
async function openDevices(constraints) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(constraints);
  } catch (e) {
    const error = $('device-error');
    error.hidden = false;
    error.textContent = `Camera or microphone unavailable (${e.name}). You can still join and see and hear the others.`;
    // One of the two may still work on its own.
    if (constraints.audio && constraints.video) {
      await openDevices({ audio: constraints.audio });
      await openDevices({ video: constraints.video });
    }
    return;
  }
  for (const track of stream.getTracks()) {
    if (track.kind === 'video') {
      if (camera) camera.stop();
      camera = track;
      camera.enabled = wantCamera;
    } else {
      if (microphone) microphone.stop();
      microphone = track;
      microphone.enabled = wantMic;
      startMeter(track);
    }
  }
  $('preview').srcObject = camera ? new MediaStream([camera]) : null;
  $('preview-off').hidden = Boolean(camera) && wantCamera;
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  fillPicker($('camera-select'), devices.filter((d) => d.kind === 'videoinput'), camera);
  fillPicker($('mic-select'), devices.filter((d) => d.kind === 'audioinput'), microphone);
}

function fillPicker(select, devices, current) {
  const inUse = current && current.getSettings().deviceId;
  select.replaceChildren(...devices.map((d, i) => {
    const option = new Option(d.label || `Device ${i + 1}`, d.deviceId);
    option.selected = d.deviceId === inUse;
    return option;
  }));
  select.disabled = devices.length === 0;
}

// A level meter, so the user sees the microphone hears them before joining.
function startMeter(track) {
  stopMeter();
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const bar = $('level');
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    bar.style.width = `${Math.min(100, Math.round(rms * 300))}%`;
    meter.frame = requestAnimationFrame(draw);
  };
  meter = { ctx, frame: requestAnimationFrame(draw) };
  // Browsers start audio contexts suspended until the user does something
  // on the page; say so rather than show a meter that looks dead.
  $('meter-hint').hidden = ctx.state !== 'suspended';
  ctx.onstatechange = () => { $('meter-hint').hidden = ctx.state !== 'suspended'; };
  for (const type of ['pointerdown', 'keydown', 'click']) {
    document.addEventListener(type, () => ctx.resume(), { once: true });
  }
}

function stopMeter() {
  if (!meter) return;
  cancelAnimationFrame(meter.frame);
  meter.ctx.onstatechange = null;
  meter.ctx.close();
  meter = null;
  $('meter-hint').hidden = true;
}

function stopLocal() {
  stopMeter();
  for (const t of [camera, microphone]) if (t) t.stop();
}

// ---- joining ----------------------------------------------------------------

async function join() {
  $('join').disabled = true;
  stopMeter();
  call = new WadudCall({ token, room });
  window.wadudCall = call;
  call.addEventListener('state', (e) => onState(e.detail));
  call.addEventListener('participantjoined', (e) => addPerson(e.detail.participant));
  call.addEventListener('participantleft', (e) => removePerson(e.detail.participant));
  call.addEventListener('track', (e) => addTrack(e.detail));
  call.addEventListener('trackremoved', (e) => removeTrack(e.detail));
  call.addEventListener('trackmuted', (e) => onMuted(e.detail));
  call.addEventListener('activespeaker', (e) => onSpeaker(e.detail.participant_id));
  call.addEventListener('waiting', renderAdmin);
  call.addEventListener('roomsettings', (e) => { $('require-admission').checked = e.detail.require_admission; });
  call.addEventListener('error', (e) => toast(e.detail.message || e.detail.code));
  call.addEventListener('mediareconnect', (e) => {
    // The room moved to another media server; the call reconnects by itself.
    toast('Reconnecting video…');
    if (window.parent !== window) {
      window.parent.postMessage({ source: 'wadud-call', type: 'media', reason: e.detail.reason }, '*');
    }
  });

  await call.publish({ microphone, camera: wantCamera ? camera : null });
  if (microphone && !wantMic) await call.setMuted('microphone', true);
  if (camera && !wantCamera) { camera.stop(); camera = null; }
  try {
    await call.join();
  } catch (_) { /* the `state` event shows why */ }
}

function onState({ state, reason }) {
  document.body.dataset.state = state;
  tellParent(state, reason);
  if (state === 'waiting') show('waiting');
  else if (state === 'joined') enterCall();
  else if (state === 'reconnecting') toast('Connection lost, reconnecting…');
  else if (ENDINGS[state]) showEnded(state, reason);
}

let entered = false;
function enterCall() {
  show('incall');
  if (entered) return renderAdmin();
  entered = true;
  const self = tile(call.me.id, `${call.me.name || 'You'} (you)`);
  self.el.classList.add('self');
  self.video.muted = true;
  if (camera) self.stream.addTrack(camera);
  self.video.srcObject = self.stream;
  self.el.classList.toggle('video-off', !camera);
  for (const p of call.participants.values()) addPerson(p);
  pressed($('mic'), wantMic && Boolean(microphone), 'Mute', 'Unmute');
  pressed($('cam'), Boolean(camera), 'Stop video', 'Start video');
  $('mic').disabled = !microphone;
  $('mic').onclick = toggleMic;
  $('cam').onclick = toggleCamera;
  $('screen').onclick = toggleScreen;
  $('screen').hidden = !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  $('leave').onclick = () => call.leave();
  $('waiting-leave').onclick = () => call.leave();
  $('admin').hidden = !(call.me.grants && call.me.grants.admin);
  $('end').onclick = () => {
    if (confirmEnd()) call.end().catch((e) => toast(e.message));
  };
  $('require-admission').onchange = (e) => call.setRequireAdmission(e.target.checked).catch((err) => toast(err.message));
  renderAdmin();
}

function confirmEnd() {
  // confirm() is blocked in some sandboxed frames; then just end.
  try { return window.confirm('End the call for everyone?'); } catch (_) { return true; }
}

// ---- controls -----------------------------------------------------------------

async function toggleMic() {
  wantMic = !wantMic;
  pressed($('mic'), wantMic, 'Mute', 'Unmute');
  await call.setMuted('microphone', !wantMic).catch((e) => toast(e.message));
}

// Turning the camera off stops the device (its light goes off) and sends
// nothing; turning it on opens it again without renegotiating.
async function toggleCamera() {
  const self = tiles.get(call.me.id);
  if (camera) {
    self.stream.removeTrack(camera);
    await call.replaceTrack('camera', null);
    camera = null;
    await call.setMuted('camera', true).catch(() => {});
  } else {
    try {
      [camera] = (await navigator.mediaDevices.getUserMedia({ video: VIDEO })).getVideoTracks();
    } catch (e) {
      return toast(`Camera unavailable (${e.name})`);
    }
    self.stream.addTrack(camera);
    await call.replaceTrack('camera', camera);
    await call.setMuted('camera', false).catch(() => {});
  }
  self.el.classList.toggle('video-off', !camera);
  pressed($('cam'), Boolean(camera), 'Stop video', 'Start video');
}

async function toggleScreen() {
  if (call.localTracks.has('screen')) return stopScreen();
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (e) {
    if (e.name !== 'NotAllowedError') toast(`Screen sharing unavailable (${e.name})`);
    return;
  }
  const [track] = stream.getVideoTracks();
  track.contentHint = 'detail';
  // The browser's own "Stop sharing" button ends the track.
  track.onended = () => stopScreen();
  await call.publish({ screen: track });
  pressed($('screen'), true, 'Stop sharing', 'Share screen');
}

async function stopScreen() {
  await call.unpublish('screen');
  pressed($('screen'), false, 'Stop sharing', 'Share screen');
}

function pressed(button, on, textOn, textOff) {
  button.setAttribute('aria-pressed', String(on));
  button.textContent = on ? textOn : textOff;
}

// ---- the grid -----------------------------------------------------------------

function tile(key, label) {
  let t = tiles.get(key);
  if (t) return t;
  const el = document.createElement('figure');
  el.className = 'tile video-off';
  el.dataset.key = key;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  const caption = document.createElement('figcaption');
  caption.textContent = label;
  const initials = document.createElement('div');
  initials.className = 'placeholder';
  initials.textContent = label.split(/\s+/).map((w) => w[0] || '').join('').slice(0, 2).toUpperCase();
  el.append(video, initials, caption);
  $('grid').append(el);
  t = { el, video, stream: new MediaStream(), caption };
  tiles.set(key, t);
  layout();
  return t;
}

function removeTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  t.video.srcObject = null;
  t.el.remove();
  tiles.delete(key);
  layout();
}

function layout() {
  const n = Math.max(1, tiles.size);
  const grid = $('grid');
  grid.style.setProperty('--cols', String(Math.ceil(Math.sqrt(n))));
}

function personLabel(id) {
  const p = call.participants.get(id);
  return p ? p.name || p.identity : 'Guest';
}

function addPerson(p) {
  if (!entered || p.id === call.me.id) return;
  tile(p.id, personLabel(p.id));
  renderAdmin();
}

function removePerson(p) {
  removeTile(p.id);
  removeTile(`${p.id}:screen`);
  renderAdmin();
}

function addTrack(info) {
  const screen = info.source === 'screen' || info.source === 'screen_audio';
  const key = screen ? `${info.participant}:screen` : info.participant;
  const t = tile(key, screen ? `${personLabel(info.participant)} (screen)` : personLabel(info.participant));
  for (const old of t.stream.getTracks()) if (old.kind === info.track.kind) t.stream.removeTrack(old);
  t.stream.addTrack(info.track);
  // Setting srcObject again makes the element pick up the new track.
  t.video.srcObject = t.stream;
  t.video.play().catch(() => { /* autoplay waits for a click; Join was one */ });
  if (info.kind === 'video') t.el.classList.toggle('video-off', Boolean(info.muted));
  if (info.kind === 'audio') t.el.classList.toggle('audio-off', Boolean(info.muted));
  t.el.dataset[`${info.kind}Track`] = info.track_id;
}

function removeTrack({ track_id: trackId }) {
  for (const [key, t] of tiles) {
    for (const kind of ['audio', 'video']) {
      if (t.el.dataset[`${kind}Track`] !== trackId) continue;
      delete t.el.dataset[`${kind}Track`];
      for (const old of t.stream.getTracks()) if (old.kind === kind) t.stream.removeTrack(old);
      if (kind === 'video') t.el.classList.add('video-off');
      if (key.endsWith(':screen') && !t.stream.getTracks().length) removeTile(key);
    }
  }
}

function onMuted({ track_id: trackId, muted, local, by }) {
  if (local) {
    const mine = [...call.localTracks.values()].find((t) => t.track_id === trackId);
    if (mine && mine.source === 'microphone' && by && by !== call.me.id) {
      wantMic = !muted;
      pressed($('mic'), wantMic, 'Mute', 'Unmute');
      if (muted) toast('The doctor muted your microphone');
    }
    return renderAdmin();
  }
  for (const t of tiles.values()) {
    if (t.el.dataset.videoTrack === trackId) t.el.classList.toggle('video-off', muted);
    if (t.el.dataset.audioTrack === trackId) t.el.classList.toggle('audio-off', muted);
  }
  renderAdmin();
}

function onSpeaker(id) {
  for (const [key, t] of tiles) t.el.classList.toggle('speaking', id !== null && key === id);
}

// ---- admin: the waiting room and the people in the call --------------------

function renderAdmin() {
  if (!call || !call.me || !(call.me.grants && call.me.grants.admin)) return;
  const waitingList = $('waiting-list');
  waitingList.replaceChildren(...call.waiting.map((p) => item(p.name || p.identity, [
    ['Admit', () => call.admit(p.id)],
    ['Deny', () => call.deny(p.id)],
  ])));
  if (!call.waiting.length) waitingList.replaceChildren(note('Nobody is waiting.'));
  $('people-list').replaceChildren(...[...call.participants.values()].map((p) => {
    const mic = [...call.roomTracks.values()].find((t) => t.participant === p.id && t.source === 'microphone');
    const actions = [];
    if (mic && !mic.muted) actions.push(['Mute', () => call.muteTrack(mic.track_id, true)]);
    actions.push(['Remove', () => call.remove(p.id)]);
    return item(`${p.name || p.identity} · ${p.role}`, actions);
  }));
}

function item(text, actions) {
  const li = document.createElement('li');
  const label = document.createElement('span');
  label.textContent = text;
  li.append(label);
  for (const [name, act] of actions) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = name;
    b.onclick = () => act().catch((e) => toast(e.message));
    li.append(b);
  }
  return li;
}

function note(text) {
  const li = document.createElement('li');
  li.className = 'muted';
  li.textContent = text;
  return li;
}

// ---- start ------------------------------------------------------------------

$('rejoin').onclick = () => location.reload();
if (!token) {
  showEnded('failed', 'This link has no access token. Use the link you were sent.');
  $('ended-title').textContent = 'This link is incomplete';
} else {
  prejoin().catch((e) => showEnded('failed', String(e)));
}
