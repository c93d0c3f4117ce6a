// The call page, /call/<room>?token=...: a device check, then the call
// (or the waiting room), then an end screen. All protocol work is in
// wadud-call.js (and consult-chat.js for the chat); this file only turns
// their state and events into a telehealth visit:
//
// * 1:1: the other person fills the stage, your own preview is small in a
//   corner; a shared screen takes the stage whole; three or more: a grid.
//   Video is never cropped (letterboxed), so nothing at its edge is lost.
// * People are shown by name, never by id; a link without a name (an
//   anonymous patient) asks for one before joining.
// * The doctor hears a short tone, sees the count in the tab title and a
//   toast with Admit/Deny when someone waits.
// * Connection bars on each tile, a note when the server paused a video for
//   a weak link, an "Audio only" switch, and the consultation's chat beside
//   the video (a slide-over panel on a phone) with an unread badge.
//
// Page options (query string, kept after the token is taken out):
// The camera goes out as three simulcast layers (captured at 1280x720), so
// the server can give each viewer the layer their link and tile fit;
// `simulcast=0` sends one layer (captured at 640x360) instead.
// `relay=1` sends media only through the TURN relay the server names;
// `relay=udp|tcp|tls` only through that one of its listeners (for networks
// that block everything else, and to test those paths).
//
// When a media path dies (a phone leaving Wi-Fi) wadud-call.js restarts ICE
// and, failing that, makes new peer connections, by itself: this page only
// shows "Reconnecting…" on the tiles it affects (everyone's, when it is our
// own path; one person's, when the server says theirs is).
//
// A link opened before its time (the token's `nbf`, by the server's clock)
// shows when the visit opens and a countdown while the device check runs,
// and joins by itself when it opens; an expired link, or one whose booking
// was cancelled, completed or moved, says which and what to do.
//
// An invited guest's link carries `?invite=<id>.<key>` instead of a token:
// the page redeems it once (POST /api/v1/invites/{id}/redeem) for a room
// token and goes on as with any link. What the token's role does not
// grant (its `actions`) the page does not offer: an observer is asked for
// no camera and sees no microphone button; the server refuses it anyway.
// The patient is asked before an invited family member or observer is let
// in; a host invites guests and revokes them from the People panel.
//
// For tests and embedders: `window.wadudCall` is the WadudCall once joining
// starts (see its stats()), and a page that frames this one receives
// {source: 'wadud-call', type: 'state', state, reason} messages, and
// {source: 'wadud-call', type: 'media', state: 'reconnecting' | 'connected',
// reason} when our media path is lost and when it is back.

import { WadudCall, redeemInvite } from './wadud-call.js';
import { ConsultChat } from './consult-chat.js';
import { reportStats } from './call-stats.js';
import { chime, levelMeter } from './sound.js';
import * as i18n from './i18n.js';

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
let token = takeToken();
let claims = readClaims(token);
const options = new URLSearchParams(location.search);
const invite = options.get('invite');
const SIMULCAST = options.get('simulcast') !== '0';
const RELAY = { 1: true, true: true, udp: 'udp', tcp: 'tcp', tls: 'tls' }[options.get('relay')] || null;
// `?connection=pair`: the two peer connections of older clients, not one.
const CONNECTION = options.get('connection') === 'pair' ? 'pair' : 'single';
i18n.translatePage();
const BASE_TITLE = document.title;

// With simulcast Chrome sends three layers only from 960x540 up.
const VIDEO = SIMULCAST
  ? { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24 } }
  : { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
// Who someone is when their link carries no name: a role, never an id.
const ROLE_NAMES = {
  doctor: i18n.t('role.doctor'),
  patient: i18n.t('role.patient'),
  staff: i18n.t('role.staff'),
  family: i18n.t('role.family'),
  interpreter: i18n.t('role.interpreter'),
  clinician: i18n.t('role.clinician'),
  observer: i18n.t('role.observer'),
};
const QUALITY_WORDS = { excellent: 'excellent', good: 'good', poor: 'poor', lost: 'lost' };
const WIDE = window.matchMedia('(min-width: 721px)');

let call = null;
let chat = null;
let camera = null; // local camera track, null while the camera is off
let microphone = null;
let wantCamera = true;
let wantMic = true;
let meter = null;
let typedName = '';
let audioOnly = false;
let cameraBeforeAudioOnly = false;
let alertSound = null; // an AudioContext made on the Join click (a user gesture)
let seenWaiting = new Set();
let endedByMe = false; // the doctor who pressed "End call for everyone"
let clockSkew = 0; // server time minus ours, in ms (from the Date header)
let side = { open: false, tab: 'chat' };
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

// An invite link: one use of it buys this tab a room token, kept like one
// from a link (a reload does not spend another use).
async function takeInvite() {
  const made = await redeemInvite(invite);
  try { sessionStorage.setItem(`wadud-call-token:${room}`, made.token); } catch (_) { /* blocked */ }
  const params = new URLSearchParams(location.search);
  params.delete('invite');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
  return made.token;
}

// Whether the token's role grants `action`; a token of old (no actions)
// grants what its page always offered.
function can(action) {
  return !claims || !Array.isArray(claims.actions) || claims.actions.includes(action);
}

function roleName(role) {
  return ROLE_NAMES[role] || i18n.t('role.guest');
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
  left: [i18n.t('ended.left'), ''],
  'ended-by-me': [i18n.t('ended.ended'), i18n.t('ended.by.you')],
  ended: [i18n.t('ended.ended'), i18n.t('ended.ended.text')],
  denied: [i18n.t('ended.denied'), i18n.t('ended.denied.text')],
  removed: [i18n.t('ended.removed'), ''],
  'removed:invite-revoked': [i18n.t('ended.removed'), i18n.t('ended.invite.revoked')],
  replaced: [i18n.t('ended.replaced'), i18n.t('ended.replaced.text')],
  failed: [i18n.t('ended.failed'), ''],
};

// Why the server refused us, in words for a patient (protocol.md codes).
const REFUSALS = {
  unauthorized: [i18n.t('refused.unauthorized'), i18n.t('refused.unauthorized.text')],
  forbidden: [i18n.t('refused.forbidden'), i18n.t('refused.forbidden.text')],
  'room-full': [i18n.t('refused.full'), i18n.t('refused.full.text')],
  expired: [i18n.t('refused.expired'), i18n.t('refused.expired.text')],
  'invite-closed': [i18n.t('refused.invite'), i18n.t('refused.invite.text')],
};
// A booking's link that no longer opens, by why (booking-closed's reason).
for (const why of ['cancelled', 'completed', 'no_show', 'moved', 'not_open']) {
  REFUSALS[`booking-closed:${why}`] = [i18n.t(`refused.${why}`), i18n.t(`refused.${why}.text`)];
}

function refusalOf(refusal) {
  if (!refusal) return null;
  if (refusal.code === 'unauthorized' && expired()) return REFUSALS.expired;
  return REFUSALS[`${refusal.code}:${refusal.reason}`] || REFUSALS[refusal.code] || null;
}

const EARLY_SLACK = 2000; // ms

function serverNow() {
  return Date.now() + clockSkew;
}

function expired() {
  return Boolean(claims && claims.exp && claims.exp * 1000 <= serverNow());
}

// The server's clock, from the Date header of a request to it: a phone's
// clock may be minutes off, and the token's times are the server's.
async function readServerClock() {
  try {
    const sent = Date.now();
    const answer = await fetch(location.pathname, { method: 'HEAD', cache: 'no-store' });
    const date = Date.parse(answer.headers.get('Date'));
    if (!Number.isNaN(date)) clockSkew = date + 500 - (sent + Date.now()) / 2; // Date is whole seconds
  } catch (_) { /* offline for now: our own clock */ }
}

function showEnded(state, reason) {
  const refusal = call && refusalOf(call.refusal);
  const ending = state === 'ended' && endedByMe ? 'ended-by-me' : state;
  const [title, text] = refusal || ENDINGS[`${ending}:${reason}`] || ENDINGS[ending] || ENDINGS.failed;
  $('ended-title').textContent = title;
  $('ended-reason').textContent = text || reason || '';
  const final = state === 'denied' || state === 'ended' || (call && call.refusal && call.refusal.code !== 'room-full');
  $('rejoin').hidden = !token || final;
  stopLocal();
  if (chat) chat.close();
  hideAlert();
  document.title = BASE_TITLE;
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
  $('check-link').href = `/check?lang=${i18n.lang}`;
  const named = Boolean(claims && claims.name);
  const role = claims ? roleName(claims.role) : '';
  $('who').textContent = claims
    ? (named ? i18n.t('joining.named', { name: claims.name, role: role.toLowerCase() }) : i18n.t('joining.role', { role: role.toLowerCase() }))
    : '';

  // A link without a name (an anonymous patient): ask, so nobody is shown
  // as a number.
  if (claims && !named) {
    $('name-form').hidden = false;
    const input = $('display-name');
    try { input.value = sessionStorage.getItem(`wadud-call-name:${room}`) || ''; } catch (_) { /* blocked */ }
    const sync = () => { $('join').disabled = !input.value.trim(); };
    input.oninput = sync;
    sync();
    $('name-form').onsubmit = (e) => { e.preventDefault(); if (!$('join').disabled) join(); };
  }
  // Early by more than the clock reading's error (its Date header counts
  // whole seconds): a link made just now is not early.
  const opens = claims && claims.nbf ? claims.nbf * 1000 : 0;
  if (opens > serverNow() + EARLY_SLACK) waitUntilOpen(opens);
  // Only the devices the role may send from: an observer is asked for none.
  const wanted = { audio: can('publish_audio') && AUDIO, video: can('publish_video') && VIDEO };
  $('pre-mic').hidden = !wanted.audio;
  $('pre-cam').hidden = !wanted.video;
  if (wanted.audio || wanted.video) await openDevices(wanted);
  await listDevices();
  $('camera-select').onchange = (e) => openDevices({ video: { ...VIDEO, deviceId: { exact: e.target.value } } });
  $('mic-select').onchange = (e) => openDevices({ audio: { ...AUDIO, deviceId: { exact: e.target.value } } });
  $('pre-cam').onclick = () => {
    wantCamera = !wantCamera;
    pressed($('pre-cam'), wantCamera, i18n.t('pre.camera.on'), i18n.t('pre.camera.off'));
    if (camera) camera.enabled = wantCamera;
    $('preview-off').hidden = wantCamera && Boolean(camera);
  };
  $('pre-mic').onclick = () => {
    wantMic = !wantMic;
    pressed($('pre-mic'), wantMic, i18n.t('pre.mic.on'), i18n.t('pre.mic.off'));
    if (microphone) microphone.enabled = wantMic;
  };
  $('join').onclick = join;
}

// Too early: say when the visit opens (in this browser's time zone, the
// patient's), count down, and join by itself once the link is valid. The
// device check goes on meanwhile; Join stays hidden until then.
function waitUntilOpen(opens) {
  // A little after, so a server whose clock we read a second late agrees.
  const at = opens + 1500;
  $('early').hidden = false;
  $('join').hidden = true;
  document.body.dataset.early = '1';
  $('early-opens').textContent = i18n.t('early.opens', { time: i18n.when(new Date(opens).toISOString()) });
  const tick = () => {
    const left = at - serverNow();
    if (left > 0) {
      $('early-left').textContent = i18n.t('early.countdown', { left: i18n.countdown(left / 1000) });
      waitUntilOpen.timer = setTimeout(tick, Math.min(1000, left));
      return;
    }
    // The device check is still opening: join once it is done.
    if (typeof $('join').onclick !== 'function') {
      waitUntilOpen.timer = setTimeout(tick, 200);
      return;
    }
    $('early').hidden = true;
    $('join').hidden = false;
    delete document.body.dataset.early;
    // An anonymous patient still types their name and presses Join.
    if (!call && !$('join').disabled) join();
  };
  tick();
}

// Ask for the devices in `constraints` and make them the ones in use.
async function openDevices(constraints) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(constraints);
  } catch (e) {
    const error = $('device-error');
    error.hidden = false;
    error.textContent = i18n.t('devices.unavailable', { error: e.name });
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
    const option = new Option(d.label || i18n.t('device.n', { n: i + 1 }), d.deviceId);
    option.selected = d.deviceId === inUse;
    return option;
  }));
  select.disabled = devices.length === 0;
}

// A level meter, so the user sees the microphone hears them before joining.
function startMeter(track) {
  stopMeter();
  meter = levelMeter(track, $('level'));
  const { ctx } = meter;
  // Browsers start audio contexts suspended until the user does something
  // on the page; say so rather than show a meter that looks dead.
  $('meter-hint').hidden = ctx.state !== 'suspended';
  ctx.onstatechange = () => { $('meter-hint').hidden = ctx.state !== 'suspended'; };
  // Only while it is this meter's and suspended: the Join click comes after
  // stopMeter() closed it, and resuming a closed context rejects.
  const resume = () => {
    if (meter && meter.ctx === ctx && ctx.state === 'suspended') ctx.resume().catch(() => {});
  };
  for (const type of ['pointerdown', 'keydown', 'click']) {
    document.addEventListener(type, resume, { once: true });
  }
}

function stopMeter() {
  if (!meter) return;
  meter.ctx.onstatechange = null;
  meter.stop();
  meter = null;
  $('meter-hint').hidden = true;
}

function stopLocal() {
  stopMeter();
  for (const t of [camera, microphone]) if (t) t.stop();
}

// ---- joining ----------------------------------------------------------------

async function join() {
  if (!$('name-form').hidden) {
    typedName = $('display-name').value.trim().slice(0, 64);
    if (!typedName) return $('display-name').focus();
    try { sessionStorage.setItem(`wadud-call-name:${room}`, typedName); } catch (_) { /* blocked */ }
  }
  $('join').disabled = true;
  stopMeter();
  // Made on this click, so the waiting-room tone may play later.
  try { alertSound = new AudioContext(); } catch (_) { alertSound = null; }
  call = new WadudCall({
    token, room, simulcast: SIMULCAST, name: typedName || null, relay: RELAY, connection: CONNECTION,
  });
  window.wadudCall = call;
  call.addEventListener('state', (e) => onState(e.detail));
  call.addEventListener('participantjoined', (e) => addPerson(e.detail.participant));
  call.addEventListener('participantleft', (e) => removePerson(e.detail.participant));
  call.addEventListener('track', (e) => addTrack(e.detail));
  call.addEventListener('trackremoved', (e) => removeTrack(e.detail));
  call.addEventListener('trackmuted', (e) => onMuted(e.detail));
  call.addEventListener('activespeaker', (e) => onSpeaker(e.detail.participant_id));
  call.addEventListener('waiting', onWaiting);
  call.addEventListener('quality', (e) => showQuality(e.detail.participant_id, e.detail.quality));
  call.addEventListener('trackpaused', (e) => onPaused(e.detail));
  call.addEventListener('views', () => scheduleViews());
  call.addEventListener('roomsettings', (e) => { $('require-admission').checked = e.detail.require_admission; });
  call.addEventListener('error', (e) => toast(e.detail.message || e.detail.code));
  // The room moved to another media server; the call reconnects by itself.
  call.addEventListener('mediareconnect', () => toast(i18n.t('reconnecting.video')));
  call.addEventListener('media', (e) => onMedia(e.detail));
  call.addEventListener('participantmedia', () => showReconnecting());
  call.addEventListener('recording', (e) => onRecording(e.detail));
  call.addEventListener('recordingasked', (e) => askRecording(e.detail));
  call.addEventListener('phonecall', (e) => onPhoneCall(e.detail));
  call.addEventListener('guestsawaiting', (e) => askGuest(e.detail.guests));
  $('consent-yes').onclick = () => answerRecording(true);
  $('consent-no').onclick = () => answerRecording(false);
  $('guest-yes').onclick = () => answerGuest(true);
  $('guest-no').onclick = () => answerGuest(false);
  reportStats(call, token); // the visit's call report (docs/calls.md)

  await call.publish({
    microphone: can('publish_audio') ? microphone : null,
    camera: wantCamera && can('publish_video') ? camera : null,
  });
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
  else if (state === 'reconnecting') toast(i18n.t('reconnecting.lost'));
  else if (ENDINGS[state]) showEnded(state, reason);
}

let entered = false;
function enterCall() {
  show('incall');
  if (entered) return renderAdmin();
  entered = true;
  const self = tile(call.me.id, i18n.t('you.suffix', { name: myName() }));
  self.el.classList.add('self');
  self.video.muted = true;
  if (camera) self.stream.addTrack(camera);
  self.video.srcObject = self.stream;
  self.el.classList.toggle('video-off', !camera);
  for (const p of call.participants.values()) addPerson(p);
  for (const button of document.querySelectorAll('#controls button[data-icon]')) decorate(button);
  pressed($('mic'), wantMic && Boolean(microphone), i18n.t('mute'), i18n.t('unmute'));
  pressed($('cam'), Boolean(camera), i18n.t('video.stop'), i18n.t('video.start'));
  $('mic').disabled = !microphone;
  $('mic').hidden = !can('publish_audio');
  $('cam').hidden = !can('publish_video');
  $('mic').onclick = toggleMic;
  $('cam').onclick = toggleCamera;
  $('audio-only').onclick = toggleAudioOnly;
  $('screen').onclick = toggleScreen;
  $('screen').hidden = !canShare();
  $('leave').onclick = () => call.leave();
  $('waiting-leave').onclick = () => call.leave();
  const admin = hasPeople();
  $('open-people').hidden = !admin;
  $('tab-people').hidden = !admin;
  $('end').hidden = !call.can('remove');
  $('record').hidden = !call.can('record');
  $('require-admission').parentElement.hidden = !call.can('admit');
  setupInvites();
  $('end').onclick = () => {
    if (!confirmEnd()) return;
    endedByMe = true;
    call.end().catch((e) => { endedByMe = false; toast(e.message); });
  };
  $('record').onclick = () => {
    call.record(call.recording.state === 'off').catch((err) => toast(err.message));
  };
  $('call-phone').hidden = !call.phoneCalls;
  $('call-phone').onclick = () => {
    $('call-phone').disabled = true;
    call.callPhone().catch((err) => { $('call-phone').disabled = false; toast(err.message); });
  };
  $('require-admission').onchange = (e) => call.setRequireAdmission(e.target.checked).catch((err) => toast(err.message));
  $('alert-admit').onclick = () => answerAlert('admit');
  $('alert-deny').onclick = () => answerAlert('deny');
  setupSide();
  startChat();
  new ResizeObserver(() => { layout(); }).observe($('grid'));
  document.addEventListener('visibilitychange', scheduleViews);
  WIDE.addEventListener('change', () => {
    // Narrowed to a phone's width: the panel would cover the video.
    if (!WIDE.matches && side.open) closeSide();
    $('screen').hidden = !canShare();
    layout();
  });
  renderAdmin();
  layout();
}

// ---- recording (docs/recording.md) --------------------------------------------

function onRecording(r) {
  const rec = $('rec');
  rec.hidden = r.state === 'off';
  rec.classList.toggle('asking', r.state === 'asking');
  $('rec-text').textContent = i18n.t(r.state === 'asking' ? 'rec.asking' : 'rec.on');
  $('record').textContent = i18n.t(r.state === 'off' ? 'rec.start' : 'rec.stop');
  document.body.dataset.recording = r.state;
  if (r.state !== 'off') return;
  $('consent').hidden = true;
  if (r.reason === 'refused' || r.reason === 'failed') toast(i18n.t(`rec.off.${r.reason}`));
  else if (r.reason === 'stopped') toast(i18n.t('rec.off.stopped'));
}

// ---- calling the patient's phone (docs/phone.md) ----------------------------

// While these last the button waits: a second call would find the line busy.
const PHONE_LIVE = ['requested', 'dialling', 'ringing', 'answered', 'joined'];

function onPhoneCall({ state, reason }) {
  const line = $('phone-state');
  line.hidden = false;
  line.textContent = i18n.t(`phone.${state}`) + (state === 'failed' && reason ? ` (${reason})` : '');
  $('call-phone').disabled = PHONE_LIVE.includes(state);
  if (['busy', 'no_answer', 'declined', 'failed'].includes(state)) toast(line.textContent);
}

function askRecording({ requested_by: by }) {
  const who = call.participants.get(by);
  const name = (who && who.name) || roleName('doctor');
  $('consent-text').textContent = i18n.t('consent.ask', { name });
  $('consent').hidden = false;
  $('consent-yes').focus();
}

function answerRecording(agree) {
  $('consent').hidden = true;
  call.answerRecording(agree).catch((err) => toast(err.message));
}

function isAdmin() {
  return Boolean(call && call.me && call.me.grants && call.me.grants.admin);
}

// The People panel: for who lets people in, removes them or invites.
function hasPeople() {
  return isAdmin() || Boolean(call && (call.can('remove') || call.can('invite')));
}

function canShare() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia)
    && WIDE.matches && can('share_screen');
}

// ---- guests (docs/guests.md) ---------------------------------------------------

// The patient is asked about each invited family member or observer who
// waits: the first one at a time, the next once answered.
let guestAsked = null;
function askGuest(guests) {
  const next = guests.find((g) => !guestAsked || g.invite_id !== guestAsked.invite_id) || guests[0];
  if (!next || !call.can('approve_guests')) {
    guestAsked = null;
    $('guest-ask').hidden = true;
    return;
  }
  if (guestAsked && guests.some((g) => g.invite_id === guestAsked.invite_id)) return;
  guestAsked = next;
  $('guest-text').textContent = i18n.t('guest.ask', {
    name: next.name || roleName(next.role), role: roleName(next.role).toLowerCase(),
  });
  $('guest-ask').hidden = false;
  beep();
}

function answerGuest(agree) {
  const asked = guestAsked;
  $('guest-ask').hidden = true;
  if (!asked) return;
  call.approveGuest(asked.invite_id, agree).catch((err) => toast(err.message));
}

const INVITE_ROLES = ['interpreter', 'family', 'clinician', 'observer'];

function setupInvites() {
  const form = $('invite-form');
  form.hidden = !call.can('invite');
  $('invite-head').hidden = form.hidden;
  if (form.hidden) return;
  $('invite-role').replaceChildren(...INVITE_ROLES.map((r) => new Option(roleName(r), r)));
  form.onsubmit = async (e) => {
    e.preventDefault();
    const to = $('invite-to').value.trim();
    const channel = to ? (to.includes('@') ? 'email' : $('invite-channel').value) : null;
    const body = {
      token, role: $('invite-role').value, name: $('invite-name').value.trim(), locale: i18n.lang,
    };
    if (channel) Object.assign(body, { channel, address: to });
    try {
      const made = await api('/api/v1/calls/invites', body);
      form.reset();
      if (!channel) copyLink(made.url);
      else toast(i18n.t('invite.sent', { name: made.name }));
    } catch (err) {
      toast(err.message);
    }
    renderInvites();
  };
  renderInvites();
}

async function renderInvites() {
  if (!call || !call.can('invite')) return;
  let invites = [];
  try { invites = await api('/api/v1/calls/invites/list', { token }); } catch (_) { return; }
  const live = invites.filter((i) => i.status === 'open' || i.status === 'approved');
  $('invite-list').replaceChildren(...live.map((i) => item(
    `${i.name} · ${roleName(i.role).toLowerCase()}`,
    [
      [i18n.t('invite.copy'), async () => copyLink(i.url)],
      [i18n.t('invite.revoke'), async () => {
        await api(`/api/v1/calls/invites/${i.id}/revoke`, { token });
        renderInvites();
      }],
    ],
  )));
}

async function copyLink(url) {
  try {
    await navigator.clipboard.writeText(url);
    toast(i18n.t('invite.copied'));
  } catch (_) {
    window.prompt(i18n.t('invite.copy'), url); // no clipboard (an insecure or framed page)
  }
}

async function api(path, body) {
  const answer = await fetch(path, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  if (answer.status === 204) return null;
  const out = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(out.detail || out.title || answer.statusText);
  return out;
}

function myName() {
  return (call.me && call.me.name) || typedName || roleName(call.me && call.me.role);
}

function confirmEnd() {
  // confirm() is blocked in some sandboxed frames; then just end.
  try { return window.confirm(i18n.t('confirm.end')); } catch (_) { return true; }
}

// ---- controls -----------------------------------------------------------------

// Icons are drawn here, so a button's text stays exactly its label.
const ICONS = {
  mic: 'M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3zM5 11a7 7 0 0 0 14 0M12 18v3',
  cam: 'M3 7h12v10H3zM15 10l6-3v10l-6-3',
  audio: 'M4 14v-2a8 8 0 0 1 16 0v2M4 14h3v6H4zM17 14h3v6h-3z',
  screen: 'M3 4h18v12H3zM8 20h8M12 16v4',
  chat: 'M4 5h16v11H9l-5 4z',
  people: 'M9 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM3 20a6 6 0 0 1 12 0M16 5a3 3 0 0 1 0 6M17 14a5 5 0 0 1 4 6',
  leave: 'M10 17l-5-5 5-5M5 12h11M14 4h5v16h-5',
};

function decorate(button) {
  if (button.querySelector('svg')) return;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', ICONS[button.dataset.icon]);
  svg.append(path);
  const label = document.createElement('span');
  label.className = 'label';
  // The first text node is the label; a badge span stays where it is.
  const text = [...button.childNodes].find((n) => n.nodeType === Node.TEXT_NODE);
  label.textContent = text ? text.textContent.trim() : '';
  if (text) text.remove();
  button.prepend(svg, label);
}

async function toggleMic() {
  wantMic = !wantMic;
  pressed($('mic'), wantMic, i18n.t('mute'), i18n.t('unmute'));
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
      return toast(i18n.t('camera.unavailable', { error: e.name }));
    }
    self.stream.addTrack(camera);
    await call.replaceTrack('camera', camera);
    await call.setMuted('camera', false).catch(() => {});
  }
  self.el.classList.toggle('video-off', !camera);
  pressed($('cam'), Boolean(camera), i18n.t('video.stop'), i18n.t('video.start'));
}

// Audio only: for a weak or metered link. We stop sending video (the camera
// goes off) and the server stops sending us any; turning it off brings the
// camera back if it was on.
async function toggleAudioOnly() {
  audioOnly = !audioOnly;
  pressed($('audio-only'), audioOnly, i18n.t('audio.only'), i18n.t('audio.only'));
  document.body.classList.toggle('audio-only', audioOnly);
  if (audioOnly) {
    cameraBeforeAudioOnly = Boolean(camera);
    if (camera) await toggleCamera();
  } else if (cameraBeforeAudioOnly && !camera) {
    await toggleCamera();
  }
  $('cam').disabled = audioOnly;
  call.setAudioOnly(audioOnly);
  for (const t of tiles.values()) if (!t.el.classList.contains('self')) setNote(t);
  scheduleViews();
  toast(audioOnly ? i18n.t('audio.only.on') : i18n.t('video.back'));
}

async function toggleScreen() {
  if (call.localTracks.has('screen')) return stopScreen();
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (e) {
    if (e.name !== 'NotAllowedError') toast(i18n.t('screen.unavailable', { error: e.name }));
    return;
  }
  const [track] = stream.getVideoTracks();
  track.contentHint = 'detail';
  // The browser's own "Stop sharing" button ends the track.
  track.onended = () => stopScreen();
  await call.publish({ screen: track });
  pressed($('screen'), true, i18n.t('screen.stop'), i18n.t('screen.share'));
}

async function stopScreen() {
  await call.unpublish('screen');
  pressed($('screen'), false, i18n.t('screen.stop'), i18n.t('screen.share'));
}

function pressed(button, on, textOn, textOff) {
  button.setAttribute('aria-pressed', String(on));
  const label = button.querySelector('.label');
  (label || button).textContent = on ? textOn : textOff;
}

// ---- the stage ----------------------------------------------------------------

function tile(key, label) {
  let t = tiles.get(key);
  if (t) return t;
  const el = document.createElement('figure');
  el.className = 'tile video-off';
  el.dataset.key = key;
  if (key.endsWith(':screen')) el.classList.add('screen');
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  const caption = document.createElement('figcaption');
  caption.dir = 'auto'; // a name in Urdu on an English page, or the reverse
  caption.textContent = label;
  const initials = document.createElement('div');
  initials.className = 'placeholder';
  initials.textContent = initialsOf(label);
  // A caller through the phone bridge: a telephone, not initials.
  const who = call && call.participants.get(key);
  if (who && who.device === 'phone') {
    el.classList.add('phone');
    initials.textContent = '\u260E';
    initials.setAttribute('role', 'img');
    initials.setAttribute('aria-label', i18n.t('tile.phone'));
  }
  const bars = document.createElement('div');
  bars.className = 'bars';
  bars.dataset.quality = 'unknown';
  bars.setAttribute('role', 'img');
  bars.append(...[1, 2, 3, 4].map(() => document.createElement('i')));
  const note = document.createElement('div');
  note.className = 'note';
  note.hidden = true;
  el.append(video, initials, bars, note, caption);
  $('grid').append(el);
  t = { el, video, stream: new MediaStream(), caption, bars, note, initials };
  tiles.set(key, t);
  const pid = key.split(':')[0];
  if (call && call.quality.has(pid) && !key.endsWith(':screen')) showQuality(pid, call.quality.get(pid));
  if (reconnecting(key)) {
    el.classList.add('reconnecting');
    setNote(t);
  }
  layout();
  return t;
}

function initialsOf(label) {
  return label.replace(/\(.*?\)/g, '').trim().split(/\s+/).map((w) => w[0] || '').join('').slice(0, 2).toUpperCase();
}

function removeTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  t.video.srcObject = null;
  t.el.remove();
  tiles.delete(key);
  layout();
}

// Which tile goes where. 1:1 and a shared screen: "focus" (one tile fills
// the stage, your preview in a corner, any others in a strip); alone:
// your own preview; three or more: a grid sized so 16:9 pictures come out
// as large as the stage allows.
function layout() {
  if (!call || !call.me) return;
  const self = tiles.get(call.me.id);
  const others = [...tiles.values()].filter((t) => t !== self);
  const screens = others.filter((t) => t.el.classList.contains('screen'));
  const cameras = others.filter((t) => !t.el.classList.contains('screen'));
  for (const t of tiles.values()) {
    t.el.classList.remove('main', 'pip', 'strip');
    t.el.style.removeProperty('--slot');
  }
  const grid = $('grid');
  let mode;
  if (!others.length) {
    mode = 'solo';
  } else if (screens.length || cameras.length === 1) {
    mode = 'focus';
    const main = screens[0] || cameras[0];
    main.el.classList.add('main');
    if (self) self.el.classList.add('pip');
    others.filter((t) => t !== main).forEach((t, i) => {
      t.el.classList.add('strip');
      t.el.style.setProperty('--slot', String(i));
    });
  } else {
    mode = 'grid';
  }
  document.body.dataset.layout = mode;
  $('alone').hidden = mode !== 'solo';
  // Others first, you last, in the order they came.
  const order = mode === 'grid' ? [...cameras, ...screens, self] : [...others, self];
  for (const t of order) if (t && t.el.parentNode === grid && grid.lastElementChild !== t.el) grid.append(t.el);
  const n = mode === 'grid' ? order.filter(Boolean).length : 1;
  grid.style.setProperty('--cols', String(bestColumns(n, grid.clientWidth, grid.clientHeight)));
  scheduleViews();
}

function bestColumns(n, width, height) {
  let best = 1;
  let bestArea = 0;
  for (let cols = 1; cols <= n; cols += 1) {
    const rows = Math.ceil(n / cols);
    const w = width / cols;
    const h = height / rows;
    const fit = Math.min(w, (h * 16) / 9); // a 16:9 picture's width in that cell
    if (fit > bestArea + 1) { best = cols; bestArea = fit; }
  }
  return best;
}

function personLabel(id) {
  const p = call.participants.get(id);
  return p ? p.name || roleName(p.role) : i18n.t('role.guest');
}

function addPerson(p) {
  if (!entered || p.id === call.me.id) return;
  tile(p.id, personLabel(p.id));
  renderAdmin();
  if (chat) chat.rename();
}

function removePerson(p) {
  removeTile(p.id);
  removeTile(`${p.id}:screen`);
  renderAdmin();
}

function addTrack(info) {
  const screen = info.source === 'screen' || info.source === 'screen_audio';
  const key = screen ? `${info.participant}:screen` : info.participant;
  const t = tile(key, screen ? i18n.t('screen.caption', { name: personLabel(info.participant) }) : personLabel(info.participant));
  for (const old of t.stream.getTracks()) if (old.kind === info.track.kind) t.stream.removeTrack(old);
  t.stream.addTrack(info.track);
  // Setting srcObject again makes the element pick up the new track.
  t.video.srcObject = t.stream;
  t.video.play().catch(() => { /* autoplay waits for a click; Join was one */ });
  if (info.kind === 'video') t.el.classList.toggle('video-off', Boolean(info.muted));
  if (info.kind === 'audio') t.el.classList.toggle('audio-off', Boolean(info.muted));
  t.el.dataset[`${info.kind}Track`] = info.track_id;
  if (info.kind === 'video' && info.paused) onPaused({ track_id: info.track_id, paused: true, reason: info.paused });
  scheduleViews();
}

function removeTrack({ track_id: trackId }) {
  for (const [key, t] of tiles) {
    for (const kind of ['audio', 'video']) {
      if (t.el.dataset[`${kind}Track`] !== trackId) continue;
      delete t.el.dataset[`${kind}Track`];
      for (const old of t.stream.getTracks()) if (old.kind === kind) t.stream.removeTrack(old);
      if (kind === 'video') {
        t.el.classList.add('video-off');
        t.el.classList.remove('paused');
        setNote(t);
      }
      if (key.endsWith(':screen') && !t.stream.getTracks().length) removeTile(key);
    }
  }
}

function onMuted({ track_id: trackId, muted, local, by }) {
  if (local) {
    const mine = [...call.localTracks.values()].find((t) => t.track_id === trackId);
    if (mine && mine.source === 'microphone' && by && by !== call.me.id) {
      wantMic = !muted;
      pressed($('mic'), wantMic, i18n.t('mute'), i18n.t('unmute'));
      if (muted) toast(i18n.t('doctor.muted.you'));
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

// ---- weak networks: quality bars, paused video, what we show ----------------

function showQuality(participantId, quality) {
  const t = tiles.get(participantId);
  if (!t) return;
  const word = QUALITY_WORDS[quality] || 'unknown';
  t.bars.dataset.quality = word;
  const label = i18n.t('connection.quality', { quality: i18n.t(`quality.${word}`) });
  t.bars.setAttribute('aria-label', label);
  t.bars.title = label;
}

function onPaused({ track_id: trackId, paused, reason }) {
  for (const t of tiles.values()) {
    if (t.el.dataset.videoTrack !== trackId) continue;
    // Hidden tiles are paused because nobody sees them: nothing to say.
    // 'off': the sender's camera is off, which is no weak link of anyone's.
    t.el.classList.toggle('paused', Boolean(paused) && reason !== 'hidden');
    t.pausedFor = paused ? reason : null;
    setNote(t);
  }
}

function setNote(t) {
  let text = '';
  if (reconnecting(t.el.dataset.key)) text = i18n.t('reconnecting');
  else if (audioOnly && !t.el.classList.contains('self')) text = i18n.t('audio.only');
  else if (t.pausedFor === 'bandwidth') text = i18n.t('video.paused.weak');
  else if (t.pausedFor === 'off') text = i18n.t('camera.off');
  t.note.textContent = text;
  t.note.hidden = !text;
}

// ---- a path that died: "Reconnecting…" ----------------------------------------

// Our own path: every tile is affected (we neither see the others nor are
// seen), and the embedding page is told.
function onMedia({ state, reason }) {
  document.body.dataset.media = state;
  showReconnecting();
  if (window.parent !== window) {
    window.parent.postMessage({ source: 'wadud-call', type: 'media', state, reason }, '*');
  }
}

// Someone else's path (the server's participant_media): their tiles only,
// so the doctor sees the patient as reconnecting, not as gone.
function reconnecting(key) {
  if (!call || !key) return false;
  return call.media === 'reconnecting' || call.peerMedia.has(key.split(':')[0]);
}

function showReconnecting() {
  for (const [key, t] of tiles) {
    t.el.classList.toggle('reconnecting', reconnecting(key));
    setNote(t);
  }
}

// Tell the server how large each remote video is shown, so it sends the
// layer that fits (and nothing to a hidden one); debounced.
let viewsTimer = null;
function scheduleViews() {
  clearTimeout(viewsTimer);
  viewsTimer = setTimeout(reportViews, 300);
}

function reportViews() {
  if (!call || call.state !== 'joined') return;
  const dpr = window.devicePixelRatio || 1;
  const pageVisible = document.visibilityState === 'visible';
  for (const r of call.remoteTracks.values()) {
    if (r.kind !== 'video') continue;
    let best = null;
    for (const t of tiles.values()) {
      if (t.el.dataset.videoTrack !== r.track_id) continue;
      const box = t.video.getBoundingClientRect();
      if (!best || box.width * box.height > best.width * best.height) best = box;
    }
    const width = best ? best.width * dpr : 0;
    const height = best ? best.height * dpr : 0;
    call.setView(r.track_id, { width, height, visible: pageVisible && !audioOnly && width > 0 && height > 0 });
  }
}

// ---- admin: the waiting room and the people in the call --------------------

// Someone new waits: a short tone, the count in the tab title (seen from
// another tab), and a toast with Admit and Deny.
function onWaiting() {
  renderAdmin();
  renderInvites();
  const waiting = call.waiting;
  // A guest still waiting for the patient's agreement is not ours to admit.
  const admissible = waiting.filter((p) => !p.awaiting_approval);
  const fresh = admissible.filter((p) => !seenWaiting.has(p.id));
  seenWaiting = new Set(admissible.map((p) => p.id));
  document.title = waiting.length ? i18n.t('title.waiting', { n: waiting.length, title: BASE_TITLE }) : BASE_TITLE;
  const badge = $('waiting-badge');
  badge.textContent = String(waiting.length);
  badge.hidden = !waiting.length;
  if (fresh.length) {
    beep();
    showAlert(fresh[fresh.length - 1]);
  } else if (alertFor && !admissible.some((p) => p.id === alertFor.id)) {
    // Whoever the toast named was let in or left; name the next one.
    if (admissible.length) showAlert(admissible[admissible.length - 1]);
    else hideAlert();
  }
}

let alertFor = null;
function showAlert(person) {
  if (!isAdmin()) return;
  alertFor = person;
  const name = person.name || roleName(person.role);
  const more = call.waiting.length - 1;
  $('alert-text').textContent = more > 0
    ? i18n.t(more === 1 ? 'alert.more1' : 'alert.more', { name, n: more })
    : i18n.t('alert.one', { name });
  $('alert').hidden = false;
  document.body.dataset.alert = '1';
}

function hideAlert() {
  alertFor = null;
  $('alert').hidden = true;
  delete document.body.dataset.alert;
}

function answerAlert(action) {
  const person = alertFor;
  hideAlert();
  if (person) call[action](person.id).catch((e) => toast(e.message));
}

function beep() {
  const ctx = alertSound;
  if (!ctx) return;
  document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
  ctx.resume().catch(() => {});
  const notes = [[0, 880], [0.18, 660]];
  chime(ctx, ctx.currentTime + 0.01, notes, { peak: 0.2, rise: 0.02, fade: 0.15, stop: 0.16 });
}

function renderAdmin() {
  if (!hasPeople()) return;
  const waitingList = $('waiting-list');
  waitingList.replaceChildren(...call.waiting.map((p) => (p.awaiting_approval
    // A guest the patient has not agreed to yet cannot be let in.
    ? item(`${p.name || roleName(p.role)} · ${i18n.t('guest.awaiting').toLowerCase()}`, [])
    : item(p.name || roleName(p.role), [
      [i18n.t('admit'), () => call.admit(p.id)],
      [i18n.t('deny'), () => call.deny(p.id)],
    ]))));
  if (!call.waiting.length) waitingList.replaceChildren(note(i18n.t('nobody.waiting')));
  $('people-list').replaceChildren(...[...call.participants.values()].map((p) => {
    const mic = [...call.roomTracks.values()].find((t) => t.participant === p.id && t.source === 'microphone');
    const actions = [];
    if (call.can('remove')) {
      if (mic && !mic.muted) actions.push([i18n.t('mute'), () => call.muteTrack(mic.track_id, true)]);
      actions.push([i18n.t('remove'), () => call.remove(p.id)]);
    }
    return item(`${p.name || roleName(p.role)} · ${roleName(p.role).toLowerCase()}`, actions);
  }));
}

function item(text, actions) {
  const li = document.createElement('li');
  const label = document.createElement('span');
  label.dir = 'auto';
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

// ---- the side panel: chat and people ------------------------------------------

function setupSide() {
  $('open-chat').onclick = () => toggleSide('chat');
  $('open-people').onclick = () => toggleSide('people');
  $('tab-chat').onclick = () => openSide('chat');
  $('tab-people').onclick = () => openSide('people');
  $('side-close').onclick = closeSide;
  // Wide screens start with the chat (or the doctor's people list) open
  // beside the video; phones start with the video alone.
  const first = hasChat() ? 'chat' : (hasPeople() ? 'people' : null);
  if (first && WIDE.matches) openSide(first);
  else renderSide();
}

function hasChat() {
  return Boolean(claims && claims.booking && claims.booking.id);
}

function toggleSide(tab) {
  if (side.open && side.tab === tab) closeSide();
  else openSide(tab);
}

function openSide(tab) {
  side = { open: true, tab };
  renderSide();
  // Invites made elsewhere (another host, the clinic's server) show up.
  if (tab === 'people' && call) renderInvites();
}

function closeSide() {
  side = { open: false, tab: side.tab };
  renderSide();
}

function renderSide() {
  const chatOn = hasChat() && !(chat && chat.unavailable);
  if (side.tab === 'chat' && !chatOn) side.tab = 'people';
  if (side.tab === 'people' && !hasPeople()) side.open = false;
  $('side').hidden = !side.open;
  $('tab-chat').hidden = !chatOn;
  $('open-chat').hidden = !chatOn;
  $('chat').hidden = side.tab !== 'chat';
  $('admin').hidden = side.tab !== 'people';
  $('tab-chat').setAttribute('aria-selected', String(side.tab === 'chat'));
  $('tab-people').setAttribute('aria-selected', String(side.tab === 'people'));
  $('open-chat').setAttribute('aria-expanded', String(side.open && side.tab === 'chat'));
  $('open-people').setAttribute('aria-expanded', String(side.open && side.tab === 'people'));
  if (chat) chat.setVisible(side.open && side.tab === 'chat');
  layout();
}

function startChat() {
  if (!hasChat()) return;
  chat = new ConsultChat({
    token,
    log: $('chat-log'),
    note: $('chat-note'),
    form: $('chat-form'),
    input: $('chat-input'),
    nameOf: senderName,
    onUnread: (n) => {
      const badge = $('unread');
      badge.textContent = n > 9 ? '9+' : String(n);
      badge.hidden = n === 0;
      $('open-chat').setAttribute('aria-label', n ? i18n.t('chat.unread', { n }) : i18n.t('chat'));
    },
    onUnavailable: () => renderSide(),
  });
  window.wadudChat = chat;
  chat.setVisible(side.open && side.tab === 'chat');
  chat.start();
}

// A chat sender by name: the people in the call are the booking's people
// (their room identity is their user id); anyone else by role.
function senderName(userId, mine) {
  if (mine) return i18n.t('you');
  for (const p of call.participants.values()) if (p.identity === userId) return p.name || roleName(p.role);
  return i18n.t('clinic');
}

// ---- start ------------------------------------------------------------------

$('rejoin').onclick = () => location.reload();
if (!token && invite) {
  takeInvite().then((t) => {
    token = t;
    claims = readClaims(token);
    return readServerClock();
  }).then(() => prejoin()).catch((e) => {
    showEnded('failed', e.message);
    [$('ended-title').textContent, $('ended-reason').textContent] = REFUSALS['invite-closed'];
    $('rejoin').hidden = true;
  });
} else if (!token) {
  showEnded('failed', i18n.t('link.no.token'));
  $('ended-title').textContent = i18n.t('link.incomplete');
} else {
  readServerClock().then(() => {
    // Past its time: say so now, rather than after a device check.
    if (expired()) {
      showEnded('failed');
      [$('ended-title').textContent, $('ended-reason').textContent] = REFUSALS.expired;
      $('rejoin').hidden = true;
      return undefined;
    }
    return prejoin();
  }).catch((e) => showEnded('failed', String(e)));
}
