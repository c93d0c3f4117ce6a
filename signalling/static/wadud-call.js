// Wadud call client: the browser side of the signalling protocol in
// docs/protocol.md, "Calls (signalling)". A plain ES module, no build step:
//
//   import { WadudCall } from '/static/call/wadud-call.js';
//   const call = new WadudCall({ token, room });
//   call.addEventListener('track', (e) => show(e.detail));
//   await call.join();                       // 'joined' or 'waiting'
//   await call.publish({ microphone: micTrack, camera: camTrack });
//
// Media uses one peer connection to the server's SFU (`connection:
// 'single'`, the default): we offer what we send and room for what we
// receive, the server answers and asks for another offer (`renegotiate`)
// when the room's tracks change. `connection: 'pair'` uses two, as older
// clients do: `publish` (we offer what we send) and `subscribe` (the server
// offers what we receive). The server is ICE-lite, so its candidates come
// in its SDP.
//
// Events (CustomEvent, data in `detail`):
//   state              {state, reason}  connecting | waiting | joined |
//                      reconnecting | left | ended | denied | removed |
//                      replaced | failed
//   participantjoined  {participant}     participantleft {participant, reason}
//   track              a remote track we now receive (see `remoteTracks`)
//   trackremoved       {track_id, participant}
//   trackmuted         {track_id, muted, by, local}
//   activespeaker      {participant_id}
//   waiting            {waiting}         (admins) who waits to be admitted
//   roomsettings       {require_admission}
//   connection         {transport, state} a peer connection's connectionState
//   quality            {participant_id, quality} excellent | good | poor | lost
//   trackpaused        {track_id, paused, reason} the server stopped (or
//                      resumed) sending us that video: bandwidth | hidden |
//                      audio_only | off (its sender sends none: camera off)
//   encodings          {track_id, encodings} which simulcast layers of our
//                      own track the server asked us to send (applied)
//   error              {code, message}   a request failed or a frame was odd
//   media              {state, reason}   our own media: reconnecting (a path
//                      died; the module is restarting ICE or making new
//                      peer connections) | connected (back)
//   participantmedia   {participant_id, state} the same for someone else,
//                      from the server: reconnecting | connected
//
// Options: `simulcast` publishes the camera as three layers (rid q, h, f at
// 1/4, 1/2 and full resolution); `name` is the display name sent with
// `join`, used only when the token names nobody (an anonymous patient);
// `relay` sends all media through the TURN relay of `joined.ice_servers`
// (true), or through its `udp`, `tcp` or `tls` listener only (a network
// that lets nothing else through).
// The page tells the server what it shows with setView() and audio only
// with setAudioOnly().
//
// After a refusal (`state` failed or ended), `refusal` holds the error
// frame's {code, message}: unauthorized, forbidden, room-full, ...
//
// When a path dies (a phone leaves Wi-Fi, a carrier's NAT moves): a peer
// connection `disconnected` for DISCONNECTED_GRACE_MS or `failed`, one that
// was receiving steadily and has received nothing for SILENT_MS, the
// browser going `online` again, `navigator.connection` changing, or the
// signalling socket resuming after a drop with the media stalled too (a
// socket whose API replica died while media flowed changes nothing) make
// the module restart ICE on both connections at once (new credentials,
// same DTLS and tracks: nothing visible changes). A restart not connected within RESTART_WITHIN_MS falls
// back to new peer connections (`reconnect_media`, the same local tracks);
// the two alternate until media is back or the call ends. No page reload,
// no new camera prompt.

const PROTOCOL = 1;
// Close codes after which coming back makes no sense (protocol.md).
const FINAL_CLOSES = {
  4401: 'failed', 4403: 'removed', 4408: 'failed', 4409: 'replaced',
  4410: 'ended', 4429: 'failed',
};
// Reconnect this long after a dropped socket; the server keeps us in the
// room for `call_resume_grace` (20 s by default).
const RESUME_FOR_MS = 30000;
// A placed phone call's steps, in order; the ending ones last.
const PHONE_STEPS = ['requested', 'dialling', 'ringing', 'answered', 'joined', 'ended', 'busy', 'no_answer', 'declined', 'failed'];
// A join answered with an error that is no refusal (the server busy) is sent
// again this many times, backing off, before the call fails.
const JOIN_TRIES = 10;
// A connection `disconnected` this long is taken as a dead path (Chrome says
// `disconnected` after about 2.5 s without a packet; a blip is shorter).
const DISCONNECTED_GRACE_MS = 2000;
// Chrome says `disconnected` only some 7 s into a dead path (measured, 156),
// so the bytes each connection receives are watched too: one that received
// all the time (media, RTCP feedback) and then nothing for this long has
// lost its path. Idle connections (nothing to receive) are left to the
// browser's own states.
const SILENT_MS = 2000;
const WATCH_EVERY_MS = 500;
// An ICE restart that has not connected by then falls back to new peer
// connections; new connections get a little longer (DTLS on top of ICE).
const RESTART_WITHIN_MS = 5000;
const RECONNECT_WITHIN_MS = 8000;
// Network events come in bursts (offline, online, a connection change):
// one restart for a burst.
const NETWORK_DEBOUNCE_MS = 1000;
// After the socket resumes, how long to look for media still flowing
// before restarting ICE (see _afterResume).
const RESUME_LOOK_MS = 700;
// The camera as three simulcast layers, lowest first (Chrome sends all three
// from a 960x540 capture up; the page captures 1280x720 with simulcast on).
export const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

export class WadudCallError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = 'WadudCallError';
    this.code = code;
    this.frame = frame;
  }
}

export class WadudCall extends EventTarget {
  // token: the room token. room: the room named in the page's URL; the
  // server then refuses a token for another room. url: the /ws endpoint
  // (default: this page's server). rtcConfig: extra RTCPeerConnection settings.
  constructor({
    token, room = null, url = null, rtcConfig = {}, simulcast = false, name = null, relay = null,
    connection = 'single',
  }) {
    super();
    this.token = token;
    // One peer connection both ways, as asked; `joined.connection` decides.
    this.connection = connection === 'pair' ? 'pair' : 'single';
    this.single = false;
    this._slots = { audio: 0, video: 0 }; // recvonly sections the next offer adds
    this.simulcast = simulcast;
    this.relay = relay || null;
    this.name = name;
    this.quality = new Map(); // participant id -> excellent | good | poor | lost
    this.audioOnly = false;
    this._views = new Map(); // track_id -> last track_view sent, as JSON
    this._pausedEarly = new Map(); // track_id -> reason, paused before we had the track
    this.room = room;
    this.url = url || defaultUrl(room);
    this.rtcConfig = rtcConfig;
    this.state = 'new';
    this.me = null; // our participant: {id, identity, name, role, grants}
    this.participants = new Map(); // id -> {id, identity, name, role}
    this.roomTracks = new Map(); // track_id -> track as in `joined.tracks`
    this.remoteTracks = new Map(); // track_id -> {..., mid, track, transceiver}
    this.localTracks = new Map(); // source -> {source, track, transceiver, track_id}
    this.waiting = [];
    this.recording = { state: 'off' }; // the visit's recording (`recording` events)
    this.recordingAsk = null; // a `recording_asked` not answered yet
    this.phoneCalls = false; // whether we may have the bridge call the patient
    this.phoneCall = null; // the last such call's step
    this._recordingHold = false;
    this.activeSpeaker = null;
    this.refusal = null; // {code, message} of a fatal error frame
    this.iceServers = [];
    this.resumeGrace = 20; // seconds our place is kept after a drop (`joined`)
    this.session = null;
    this.publishPc = null;
    this.subscribePc = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // request id -> {resolve, reject, type}
    this._midMap = new Map(); // subscribe mid -> track info from the last offer
    this._pubChain = Promise.resolve(); // publish renegotiations, one at a time
    this._subChain = Promise.resolve(); // subscribe offers, in arrival order
    this._mediaGen = 0; // bumped when media restarts: older queued work stops
    this._leaving = false;
    this._resumeUntil = 0;
    this._joinWaiter = null;
    this.media = 'connected'; // our own media: connected | reconnecting
    this.peerMedia = new Map(); // participant id -> 'reconnecting', as the server says
    this.iceRestarts = 0; // recoveries so far: ICE restarts, new peer connections
    this.mediaReconnects = 0;
    this._recovery = null; // {attempt, started, timer} while media is being recovered
    this._awaitSubscribe = false; // new connections: media is back once the server's offer is
    this._unlisten = null; // removes the window's network listeners
  }

  // ---- joining, leaving, resuming ----------------------------------------

  // Connect and join; resolves with 'joined' or 'waiting' (then a `state`
  // event says 'joined' once an admin admits us), rejects on a refusal.
  join() {
    return new Promise((resolve, reject) => {
      this._joinWaiter = { resolve, reject };
      this._connect(null);
    });
  }

  // Leave the room: the server closes the socket, media stops.
  async leave() {
    if (this._leaving) return;
    this._leaving = true;
    try {
      if (this._ws && this._ws.readyState === WebSocket.OPEN) {
        await withTimeout(this.request('leave'), 2000);
      }
    } catch (_) { /* leaving anyway */ }
    this._finish('left', 'left');
  }

  _connect(resume) {
    this._setState(resume ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(this.url);
    this._ws = ws;
    this._joinTries = 0;
    ws.onopen = () => this._sendJoin(ws, resume);
    ws.onmessage = (e) => this._onFrame(e.data);
    ws.onclose = (e) => this._onClose(ws, e.code, e.reason);
  }

  _sendJoin(ws, resume) {
    if (ws !== this._ws || ws.readyState !== WebSocket.OPEN || this._leaving) return;
    // The protocol version this client speaks (docs/protocol.md, "Versions").
    const frame = { type: 'join', token: this.token, protocol: PROTOCOL, connection: this.connection };
    if (resume) frame.resume = resume;
    if (this.name) frame.name = this.name;
    this._joinId = this._send(frame, 'join');
    this._joinResume = resume;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return; // an older socket we already replaced
    for (const p of this._pending.values()) {
      p.reject(new WadudCallError('disconnected', 'the connection dropped'));
    }
    this._pending.clear();
    if (this._leaving || isFinal(this.state)) return this._finish(this.state, reason);
    // 4408 after a join is the server's ping timeout (we were silent, a
    // throttled tab): our place is kept, so resume; before one, a join timeout.
    const final = FINAL_CLOSES[code] && !(code === 4408 && this.session);
    if (final) return this._finish(FINAL_CLOSES[code], reason || String(code));
    if (code === 1000 || !this.session) return this._finish('failed', reason || `closed ${code}`);
    // A dropped socket (network change, proxy timeout): the server keeps our
    // place and our media for a grace period; come back with `resume`.
    if (!this._resumeUntil) {
      // The server says how long it keeps our place (`joined.resume_grace`).
      this._resumeUntil = Date.now() + Math.max(RESUME_FOR_MS, this.resumeGrace * 1000 + 10000);
      this._attempt = 0;
    }
    if (Date.now() > this._resumeUntil) return this._finish('failed', 'could not reconnect');
    this._setState('reconnecting');
    // Back off (0.25, 0.5, 1, 2, 2... s, jittered) so that a replica that
    // died does not get every client back at the same instant; the load
    // balancer sends the retries to a live replica.
    const delay = Math.min(250 * 2 ** (this._attempt || 0), 2000) * (0.75 + Math.random() * 0.5);
    this._attempt = (this._attempt || 0) + 1;
    setTimeout(() => {
      if (!this._leaving && !isFinal(this.state)) this._connect(this.session);
    }, delay);
  }

  _finish(state, reason) {
    this._leaving = true;
    clearInterval(this._watchdog);
    this._stopRecovery();
    if (this._unlisten) this._unlisten();
    clearInterval(this._pathWatch);
    if (this._ws) {
      this._ws.onclose = null;
      try { this._ws.close(1000); } catch (_) { /* already closed */ }
    }
    for (const t of this.localTracks.values()) if (t.track) t.track.stop();
    for (const [, pc] of this._pcs()) pc.close();
    if (this._joinWaiter) {
      this._joinWaiter.reject(new WadudCallError(state, reason));
      this._joinWaiter = null;
    }
    this._setState(state, reason);
  }

  _setState(state, reason = '') {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state, reason });
  }

  // ---- frames ------------------------------------------------------------

  // Send a request; resolves with the server's answer (the frame whose `ref`
  // is our id), rejects with a WadudCallError on an `error` frame.
  request(type, fields = {}) {
    return new Promise((resolve, reject) => {
      const id = this._send({ type, ...fields }, type);
      this._pending.set(id, { resolve, reject, type });
    });
  }

  // Send a frame whose answer (if any) nobody waits for: track_view, and
  // audio_only. Silently skipped while disconnected: the state is sent again
  // after a resume.
  notify(type, fields = {}) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN || this.state !== 'joined') return false;
    this._send({ type, ...fields }, type);
    return true;
  }

  _send(frame, what) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      throw new WadudCallError('disconnected', `cannot send ${what}: not connected`);
    }
    const id = String(this._nextId++);
    const out = { v: PROTOCOL, ...frame };
    if (frame.type !== 'pong') out.id = id;
    this._ws.send(JSON.stringify(out));
    return id;
  }

  _onFrame(data) {
    this._lastFrameAt = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch (_) {
      return this._emit('error', { code: 'bad-frame', message: 'server sent non-JSON' });
    }
    const waiter = f.ref !== undefined ? this._pending.get(f.ref) : undefined;
    if (waiter && f.type !== 'joined' && f.type !== 'waiting') {
      this._pending.delete(f.ref);
      if (f.type === 'error') waiter.reject(new WadudCallError(f.code, f.message, f));
      else waiter.resolve(f);
      return;
    }
    const handler = this[`_on_${f.type}`];
    if (handler) handler.call(this, f);
  }

  _on_ping() { this._send({ type: 'pong' }, 'pong'); }

  // Fresh TURN credentials, sent before the old ones expire: the peer
  // connections take them for their next ICE restart, new ones from the start.
  _on_ice_servers(f) { this._useIceServers(f.ice_servers || []); }

  _useIceServers(servers) {
    this.iceServers = servers;
    for (const [, pc] of this._pcs()) {
      if (pc.signalingState === 'closed') continue;
      const iceServers = this.relay ? relayServers(servers, this.relay) : servers;
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
      } catch (err) {
        this._emit('error', { code: 'ice-servers', message: String(err) });
      }
    }
  }

  _on_error(f) {
    if (!f.fatal && f.ref !== undefined && f.ref === this._joinId
        && (this.state === 'connecting' || this.state === 'reconnecting')) {
      // The join was not refused but could not be served now (the server
      // is busy: its Redis failing over): send it again, backing off
      // (0.25, 0.5, 1, 2, 2... s) for about 15 s before giving up.
      this._joinTries = (this._joinTries || 0) + 1;
      if (this._joinTries > JOIN_TRIES) return this._finish('failed', f.message);
      const delay = Math.min(250 * 2 ** (this._joinTries - 1), 2000);
      const ws = this._ws;
      setTimeout(() => this._sendJoin(ws, this._joinResume), delay);
      return;
    }
    if (f.fatal) {
      // A refusal: keep its code (unauthorized, forbidden, room-full, ...)
      // for the page to explain; the server closes the socket next.
      // A closed booking's `reason` says why (cancelled, completed, ...).
      this.refusal = { code: f.code, message: f.message, reason: f.reason || null };
      return this._finish(f.code === 'room-ended' ? 'ended' : 'failed', f.message);
    }
    this._emit('error', { code: f.code, message: f.message });
  }

  _on_waiting(f) {
    if (f.participant) { // our own answer: we wait to be admitted
      this._takeSession(f);
      this._setState('waiting');
      this._settleJoin('waiting');
    } else { // to admins: the list of those waiting changed
      this.waiting = f.waiting || [];
      this._emit('waiting', { waiting: this.waiting });
    }
  }

  _on_joined(f) {
    // The same participant id after `resume` (or after waiting): our peer
    // connections still stand. Another id: the server forgot us (the grace
    // period ran out) and media must start over.
    const forgotten = this.me && this.me.id !== f.participant.id && this.publishPc;
    const resumed = !forgotten && Boolean(this.publishPc || this.subscribePc);
    this._takeSession(f);
    if (!resumed) this.single = f.connection === 'single';
    this._useIceServers(f.ice_servers || []);
    if (typeof f.resume_grace === 'number') this.resumeGrace = f.resume_grace;
    this.waiting = f.waiting || [];
    // A visit being recorded (or asked about): a newcomer answers before it
    // sends anything (`recording_asked` follows), see answerRecording().
    this.recording = f.recording || { state: 'off' };
    this.phoneCalls = Boolean(f.phone_calls);
    this.guestsAwaiting = f.guests_awaiting || [];
    if (this.guestsAwaiting.length) this._emit('guestsawaiting', { guests: this.guestsAwaiting });
    this._recordingHold = Boolean(this.recording.asked) && this.recording.state === 'on';
    this._emit('recording', this.recording);
    this._syncParticipants(f.participants || []);
    this.roomTracks = new Map((f.tracks || []).map((t) => [t.track_id, t]));
    for (const t of this.roomTracks.values()) this._applyMuted(t.track_id, t.muted);
    if (this.waiting.length) this._emit('waiting', { waiting: this.waiting });
    this._resumeUntil = 0;
    this._watch((f.ping_interval || 15) * 1000);
    this._setState('joined');
    this._settleJoin('joined');
    // A new connection knows nothing of what we showed: tell it again.
    this._views.clear();
    if (this.audioOnly) this.notify('audio_only', { enabled: true });
    this._emit('views', {});
    // Whoever is speaking as we arrive: later changes come as events.
    if ((f.active_speaker || null) !== this.activeSpeaker) {
      this._on_active_speaker({ participant_id: f.active_speaker || null });
    }
    this._listenToNetwork();
    if (!this._pathWatch) this._pathWatch = setInterval(() => this._watchTraffic(), WATCH_EVERY_MS);
    if (forgotten) this._restartMedia();
    else if (this.publishPc && this.publishPc.signalingState !== 'stable') this._renegotiate();
    else if (this.single && !this.publishPc) this._firstOffer();
    else this._publishNow();
    // A socket that dropped and came back: the network most likely changed
    // under us (Wi-Fi to mobile data), and the media path with it.
    if (resumed) this._afterResume();
  }

  // Unless the media kept flowing: then only the socket died (the API
  // replica that held it went away), and restarting ICE on connections
  // that work would only disturb them. Each connected connection must have
  // received something within RESUME_LOOK_MS of the resume.
  async _afterResume() {
    const gen = this._mediaGen;
    const pcs = this._pcs().map(([, pc]) => pc).filter((pc) => pc.connectionState === 'connected');
    try {
      if (pcs.length) {
        const before = await Promise.all(pcs.map(receivedBytes));
        await new Promise((resolve) => setTimeout(resolve, RESUME_LOOK_MS));
        const after = await Promise.all(pcs.map(receivedBytes));
        if (gen === this._mediaGen && after.every((bytes, i) => bytes > before[i])) return;
      }
    } catch (_) {
      /* a connection closed while we looked: restart */
    }
    if (gen === this._mediaGen) this._networkChanged('signalling resumed');
  }

  // The server pings every `ping_interval`; three silent intervals mean the
  // socket is dead even if the browser has not noticed (a half-open TCP
  // connection after a network change): drop it and resume.
  _watch(intervalMs) {
    clearInterval(this._watchdog);
    this._lastFrameAt = Date.now();
    this._watchdog = setInterval(() => {
      if (isFinal(this.state)) return clearInterval(this._watchdog);
      const ws = this._ws;
      if (Date.now() - this._lastFrameAt <= 3 * intervalMs || !ws) return;
      this._dropSocket(ws, 'the server went silent');
    }, intervalMs);
  }

  // Give up on a socket that still looks open and resume on a new one. Its
  // handlers go first: a late close event or frame from it must not count.
  _dropSocket(ws, reason) {
    ws.onclose = null;
    ws.onmessage = null;
    try { ws.close(4000, 'silent'); } catch (_) { /* already closing */ }
    this._onClose(ws, 4000, reason);
  }

  _takeSession(f) {
    this.me = f.participant;
    this.session = f.session;
  }

  _settleJoin(state) {
    if (this._joinWaiter) {
      this._joinWaiter.resolve(state);
      this._joinWaiter = null;
    }
  }

  _syncParticipants(list) {
    const now = new Map(list.map((p) => [p.id, p]));
    for (const [id, p] of this.participants) {
      if (!now.has(id)) {
        this.participants.delete(id);
        this._emit('participantleft', { participant: p, reason: 'left' });
      }
    }
    for (const [id, p] of now) {
      if (!this.participants.has(id)) {
        this.participants.set(id, p);
        this._emit('participantjoined', { participant: p });
      }
    }
  }

  _on_participant_joined(f) {
    this.participants.set(f.participant.id, f.participant);
    this._emit('participantjoined', { participant: f.participant });
  }

  _on_participant_left(f) {
    const p = this.participants.get(f.participant_id) || { id: f.participant_id };
    this.participants.delete(f.participant_id);
    this.peerMedia.delete(f.participant_id);
    this._emit('participantleft', { participant: p, reason: f.reason });
  }

  // Someone else's media path died and they are restarting it: they are
  // still in the call, their picture is frozen for a moment.
  _on_participant_media(f) {
    if (f.state === 'reconnecting') this.peerMedia.set(f.participant_id, 'reconnecting');
    else this.peerMedia.delete(f.participant_id);
    this._emit('participantmedia', { participant_id: f.participant_id, state: f.state });
  }

  _on_track_published(f) { this.roomTracks.set(f.track.track_id, f.track); }

  _on_track_unpublished(f) {
    this.roomTracks.delete(f.track_id);
    // Its m= section stays (port 0) until the next offer; the picture is gone now.
    const r = this.remoteTracks.get(f.track_id);
    if (r) {
      this.remoteTracks.delete(f.track_id);
      this._emit('trackremoved', { track_id: f.track_id, participant: r.participant });
    }
  }

  _on_track_muted(f) { this._applyMuted(f.track_id, f.muted, f.by); }

  _applyMuted(trackId, muted, by = null) {
    const room = this.roomTracks.get(trackId);
    if (room) room.muted = muted;
    const remote = this.remoteTracks.get(trackId);
    if (remote) remote.muted = muted;
    const local = [...this.localTracks.values()].find((t) => t.track_id === trackId);
    if (local) {
      local.muted = muted;
      // An admin muted us: stop sending too, so unmuting is our own choice.
      if (local.track && local.source === 'microphone') local.track.enabled = !muted;
    }
    this._emit('trackmuted', { track_id: trackId, muted, by, local: Boolean(local) });
  }

  _on_active_speaker(f) {
    this.activeSpeaker = f.participant_id;
    this._emit('activespeaker', { participant_id: f.participant_id });
  }

  _on_room_settings(f) { this._emit('roomsettings', { require_admission: f.require_admission }); }

  // ---- weak networks -----------------------------------------------------

  _on_connection_quality(f) {
    this.quality.set(f.participant_id, f.quality);
    this._emit('quality', { participant_id: f.participant_id, quality: f.quality });
  }

  _on_track_paused(f) {
    const r = this.remoteTracks.get(f.track_id);
    if (r) r.paused = f.paused ? f.reason : null;
    // The server may pause a video as it subscribes us, before the offer
    // that carries it is applied: kept for the `track` event (its `paused`).
    else if (f.paused) this._pausedEarly.set(f.track_id, f.reason);
    else this._pausedEarly.delete(f.track_id);
    this._emit('trackpaused', { track_id: f.track_id, paused: f.paused, reason: f.reason });
  }

  // Dynacast: keep sending only the layers somebody wants.
  // One change at a time per sender: Chromium forgets the parameters that
  // getParameters() returned once any setParameters() completes, so a second
  // set_encodings read while the first was pending failed ("getParameters()
  // has never been called") and its layers stayed as they were.
  _on_set_encodings(f) {
    const local = [...this.localTracks.values()].find((t) => t.track_id === f.track_id);
    if (!local || !local.transceiver) return Promise.resolve();
    local.encodingsChange = (local.encodingsChange || Promise.resolve())
      .then(() => this._set_encodings(local, f))
      .catch((e) => this._emit('error', { code: 'set-encodings-failed', message: String(e.message || e) }));
    return local.encodingsChange;
  }

  async _set_encodings(local, f) {
    const sender = local.transceiver.sender;
    const params = sender.getParameters();
    const wanted = new Map(f.encodings.map((e) => [e.rid, e.active]));
    let changed = false;
    for (const enc of params.encodings || []) {
      const key = enc.rid || null;
      if (key !== null && wanted.has(key) && enc.active !== wanted.get(key)) {
        enc.active = wanted.get(key);
        changed = true;
      }
    }
    try {
      if (changed) await sender.setParameters(params);
      local.encodings = (params.encodings || []).map((e) => ({ rid: e.rid, active: e.active }));
      this._emit('encodings', { track_id: f.track_id, encodings: local.encodings });
    } catch (e) {
      this._emit('error', { code: 'set-encodings-failed', message: String(e.message || e) });
    }
  }

  // How large a remote video is shown ({width, height} in device pixels,
  // visible false when nobody can see it). Sent only when it changed; the
  // page debounces resizes.
  setView(trackId, { width, height, visible }) {
    const view = {
      track_id: trackId,
      width: Math.max(0, Math.min(16384, Math.round(width))),
      height: Math.max(0, Math.min(16384, Math.round(height))),
      visible: Boolean(visible),
    };
    const key = JSON.stringify(view);
    if (this._views.get(trackId) === key) return false;
    if (!this.notify('track_view', view)) return false;
    this._views.set(trackId, key);
    return true;
  }

  // Audio only: the server forwards us no video, and we send none (the page
  // stops the camera). False turns video back on.
  setAudioOnly(enabled) {
    this.audioOnly = Boolean(enabled);
    this.notify('audio_only', { enabled: this.audioOnly });
  }
  _on_removed() { this._finish('removed', 'removed by the host'); }
  _on_denied() { this._finish('denied', 'the host did not admit you'); }
  _on_room_ended() { this._finish('ended', 'the host ended the call'); }
  _on_replaced() { this._finish('replaced', 'you joined from another window'); }

  // ---- publishing --------------------------------------------------------

  // Send these tracks: {microphone, camera, screen, screen_audio} ->
  // MediaStreamTrack (or null for "not now"). Before `joined` they are kept
  // and published on joining.
  publish(tracks) {
    for (const [source, track] of Object.entries(tracks)) {
      if (track) this.localTracks.set(source, { source, track, transceiver: null, track_id: null, muted: false });
    }
    if (this.state === 'joined') return this._publishNow();
    return Promise.resolve();
  }

  // Stop sending one source (e.g. 'screen'): its transceiver stops and the
  // server learns it from the renegotiation.
  async unpublish(source) {
    const local = this.localTracks.get(source);
    if (!local) return;
    this.localTracks.delete(source);
    if (local.track) local.track.stop();
    if (local.transceiver) {
      local.transceiver.stop();
      await this._renegotiate();
    }
  }

  // Switch what a source sends without renegotiating (another camera, or
  // null to stop the device, e.g. to turn the camera light off).
  async replaceTrack(source, track) {
    const local = this.localTracks.get(source);
    if (!local || !local.transceiver) return this.publish({ [source]: track });
    if (local.track && local.track !== track) local.track.stop();
    local.track = track;
    await local.transceiver.sender.replaceTrack(track);
  }

  // Mute or unmute one of our sources; everyone gets `track_muted`.
  async setMuted(source, muted) {
    const local = this.localTracks.get(source);
    if (!local) return;
    local.muted = muted;
    if (local.track) local.track.enabled = !muted;
    if (local.track_id) await this.request('mute', { track_id: local.track_id, muted });
  }

  // A single connection's first offer, right after `joined`: what we send
  // and a receiving section for each track in the room (one audio one in an
  // empty room, so the connection is up before anyone sends).
  _firstOffer() {
    const kinds = { audio: 0, video: 0 };
    const receives = Boolean(this.me && this.me.grants && this.me.grants.subscribe);
    for (const t of this.roomTracks.values()) {
      if (receives && t.participant !== this.me.id) kinds[t.kind] = (kinds[t.kind] || 0) + 1;
    }
    if (receives && !kinds.audio && !kinds.video) kinds.audio = 1;
    this._slots = kinds;
    if (!kinds.audio && !kinds.video && !this.localTracks.size) return Promise.resolve();
    return this._renegotiate();
  }

  // The server has more (or other) tracks for our single connection.
  _on_renegotiate(f) {
    for (const kind of ['audio', 'video']) this._slots[kind] += Number(f[kind]) || 0;
    this._renegotiate().catch((e) => {
      this._emit('error', { code: e.code || 'negotiation-failed', message: String(e.message || e) });
    });
  }

  // Our peer connections, each once: [transport, pc].
  _pcs() {
    const out = [];
    if (this.publishPc) out.push(['publish', this.publishPc]);
    if (this.subscribePc && this.subscribePc !== this.publishPc) out.push(['subscribe', this.subscribePc]);
    return out;
  }

  _publishNow() {
    if (this._recordingHold) return Promise.resolve(); // sent once answered
    const fresh = [...this.localTracks.values()].some((t) => !t.transceiver);
    return fresh ? this._renegotiate() : Promise.resolve();
  }

  // `restart`: the offer carries new ICE credentials (an ICE restart, RFC
  // 8445 section 9); the DTLS association and the tracks stay.
  _renegotiate({ restart = false } = {}) {
    const gen = this._mediaGen;
    const run = async () => {
      if (this.state !== 'joined' || gen !== this._mediaGen) return;
      if (!this.publishPc) {
        this.publishPc = this._newPc('publish');
        if (this.single) this.subscribePc = this.publishPc;
      }
      const pc = this.publishPc;
      if (restart) pc.restartIce();
      if (this.single) {
        for (const kind of ['audio', 'video']) {
          for (let i = 0; i < this._slots[kind]; i += 1) pc.addTransceiver(kind, { direction: 'recvonly' });
        }
        this._slots = { audio: 0, video: 0 };
      }
      // Held while a recording waits for our answer (a single connection
      // still offers, to receive).
      const hold = this.single && this._recordingHold;
      for (const local of this.localTracks.values()) {
        if (!local.transceiver && !hold) {
          const init = { direction: 'sendonly' };
          if (this.simulcast && local.source === 'camera') {
            init.sendEncodings = SIMULCAST.map((e) => ({ ...e }));
          } else if (local.source === 'screen') {
            // One layer, sharp text over smooth motion.
            init.sendEncodings = [{ maxBitrate: 2500000 }];
          }
          local.transceiver = pc.addTransceiver(local.track, init);
          if (local.source === 'screen') {
            const params = local.transceiver.sender.getParameters();
            params.degradationPreference = 'maintain-resolution';
            local.transceiver.sender.setParameters(params).catch(() => { /* not everywhere */ });
          }
        }
      }
      const offer = await pc.createOffer();
      if (gen !== this._mediaGen) return;
      await pc.setLocalDescription(offer);
      if (gen !== this._mediaGen) return;
      // Mids exist only once the offer is applied.
      const sources = {};
      for (const local of this.localTracks.values()) {
        if (local.transceiver) sources[local.transceiver.mid] = local.source;
      }
      let answer;
      try {
        answer = restart
          ? await this._ask('publish', { sdp: pc.localDescription.sdp, sources })
          : await this.request('publish', { sdp: pc.localDescription.sdp, sources });
      } catch (e) {
        // Back to the last agreed state, so the next offer starts clean
        // (it still restarts ICE: restartIce() holds until an answer).
        if (restart && gen === this._mediaGen && pc.signalingState === 'have-local-offer') {
          await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
        }
        throw e;
      }
      if (gen !== this._mediaGen) return;
      // Which receiving section carries whose track: before `track` fires.
      if (this.single) this._midMap = new Map((answer.receiving || []).map((t) => [t.mid, t]));
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      if (this.single) this._syncRemoteTracks(pc);
      for (const t of answer.tracks || []) {
        const local = [...this.localTracks.values()].find((l) => l.transceiver && l.transceiver.mid === t.mid);
        if (!local) continue;
        local.track_id = t.track_id;
        this.roomTracks.set(t.track_id, t);
        // Muted before the server knew the track: tell it now.
        if (local.muted) await this.request('mute', { track_id: t.track_id, muted: true });
      }
      this._trickle(pc, 'publish');
    };
    this._pubChain = this._pubChain.then(run, run);
    return this._pubChain;
  }

  // The room moved to another media worker (its worker died or is being
  // drained): the same participant, new peer connections to the new worker.
  _on_media_reconnect(f) {
    this.mediaMoves = (this.mediaMoves || 0) + 1;
    this._emit('mediareconnect', { reason: f.reason || '' });
    this._setMedia('reconnecting', f.reason || 'media moved');
    return this._restartMedia();
  }

  // After the server counted us as a new participant (resume came too late):
  // fresh peer connections, same local tracks.
  _restartMedia() {
    // Work queued on the old connections may never settle once they close
    // (a closed RTCPeerConnection leaves pending operations hanging): start
    // fresh chains, and let old runs see they belong to an older generation.
    this._mediaGen += 1;
    this._pubChain = Promise.resolve();
    this._subChain = Promise.resolve();
    // Media is back once the server's offer has a new subscribe connection
    // up too, not as soon as the publish one connects.
    this._awaitSubscribe = Boolean(this.subscribePc);
    for (const [, pc] of this._pcs()) pc.close();
    this.publishPc = this.subscribePc = null;
    this._dropRemoteTracks();
    this._midMap.clear();
    for (const local of this.localTracks.values()) {
      local.transceiver = null;
      local.track_id = null;
    }
    if (this.single) {
      this._awaitSubscribe = false;
      return this._firstOffer();
    }
    return this._renegotiate();
  }

  // ---- receiving ---------------------------------------------------------

  _on_offer(f) {
    const gen = this._mediaGen;
    const run = async () => {
      if (isFinal(this.state) || gen !== this._mediaGen) return;
      if (!this.subscribePc) {
        this.subscribePc = this._newPc('subscribe');
        this._awaitSubscribe = false;
      }
      let pc = this.subscribePc;
      // Which m= section carries whose track; needed before `track` fires
      // inside setRemoteDescription.
      this._midMap = new Map((f.tracks || []).map((t) => [t.mid, t]));
      try {
        await pc.setRemoteDescription({ type: 'offer', sdp: f.sdp });
      } catch (e) {
        // An offer this connection cannot take: the server replaced our
        // subscribe transport (another replica took the room over) and
        // offers on the new one, its sections in another order ("the order
        // of m-lines ... doesn't match"). A new receiving connection takes
        // it; what we send is not touched.
        if (gen !== this._mediaGen || pc !== this.subscribePc) throw e;
        pc.close();
        this._dropRemoteTracks();
        pc = this.subscribePc = this._newPc('subscribe');
        await pc.setRemoteDescription({ type: 'offer', sdp: f.sdp });
      }
      if (gen !== this._mediaGen) return;
      const answer = await pc.createAnswer();
      if (gen !== this._mediaGen) return;
      await pc.setLocalDescription(answer);
      if (gen !== this._mediaGen) return;
      await this.request('answer', { sdp: pc.localDescription.sdp });
      this._syncRemoteTracks(pc);
      this._trickle(pc, 'subscribe');
    };
    this._subChain = this._subChain.then(run, run).catch((e) => {
      this._emit('error', { code: e.code || 'negotiation-failed', message: String(e.message || e) });
    });
  }

  // Every track we receive is gone (its connection closed).
  _dropRemoteTracks() {
    for (const [id, r] of this.remoteTracks) {
      this._emit('trackremoved', { track_id: id, participant: r.participant });
    }
    this.remoteTracks.clear();
  }

  // Bring `remoteTracks` in line with the last offer: a section can go quiet
  // (port 0) when its track ends, and one mid maps to one track at a time.
  _syncRemoteTracks(pc) {
    const live = new Map();
    const transceivers = pc.getTransceivers();
    for (const tr of transceivers) {
      const info = tr.mid !== null ? this._midMap.get(tr.mid) : undefined;
      if (info && !tr.stopped && tr.currentDirection !== 'inactive') live.set(info.track_id, [info, tr]);
      // A single connection's section whose track went never carries
      // another (docs/protocol.md): stopped, the next offer gives its
      // m= line back (port 0, then reused for a new section), so offers do
      // not grow with every track that came and went. Not the first one:
      // it carries the BUNDLE tag, which must not move.
      if (this.single && tr !== transceivers[0] && tr.mid !== null && !tr.stopped && tr.direction === 'recvonly') {
        if (info) (this._carried || (this._carried = new Set())).add(tr.mid);
        else if (this._carried && this._carried.has(tr.mid)) tr.stop();
      }
    }
    for (const [id, r] of this.remoteTracks) {
      if (!live.has(id)) {
        this.remoteTracks.delete(id);
        this._emit('trackremoved', { track_id: id, participant: r.participant });
      }
    }
    for (const [id, [info, tr]] of live) {
      if (this.remoteTracks.has(id)) continue;
      const room = this.roomTracks.get(id);
      const paused = this._pausedEarly.get(id) || null;
      this._pausedEarly.delete(id);
      const remote = { ...info, muted: room ? room.muted : false, paused, track: tr.receiver.track, transceiver: tr };
      this.remoteTracks.set(id, remote);
      this._emit('track', remote);
    }
  }

  // ---- peer connections and ICE ------------------------------------------

  _newPc(transport) {
    const config = { iceServers: this.iceServers, bundlePolicy: 'max-bundle' };
    if (this.relay) {
      config.iceServers = relayServers(this.iceServers, this.relay);
      config.iceTransportPolicy = 'relay';
    }
    const pc = new RTCPeerConnection({ ...config, ...this.rtcConfig });
    pc._wadudCandidates = [];
    pc._wadudReady = false;
    // Candidates found before the server has this transport would be refused;
    // they wait until the offer/answer is done (see _trickle).
    pc.onicecandidate = (e) => {
      const c = e.candidate ? e.candidate.toJSON() : null;
      if (pc._wadudReady) this._sendCandidate(transport, c);
      else pc._wadudCandidates.push(c);
    };
    pc.onconnectionstatechange = () => {
      this._emit('connection', { transport, state: pc.connectionState });
      this._watchPc(pc, transport);
    };
    pc.oniceconnectionstatechange = () => this._watchPc(pc, transport);
    return pc;
  }

  // The server is ICE-lite and learns our addresses from our checks, so
  // candidates are a courtesy; they go once the transport exists on its side.
  _trickle(pc, transport) {
    if (pc._wadudReady) return;
    pc._wadudReady = true;
    for (const c of pc._wadudCandidates.splice(0)) this._sendCandidate(transport, c);
  }

  _sendCandidate(transport, candidate) {
    if (this.state !== 'joined') return;
    this.request('candidate', { transport, candidate }).catch(() => { /* optional */ });
  }

  // ---- when the path dies --------------------------------------------------

  // The whole machine: a dead path (_pathLost) or a changed network
  // (_networkChanged) starts a recovery; each attempt is an ICE restart on
  // both connections or, every second attempt, new peer connections; an
  // attempt that has not brought every connection to `connected` by its
  // deadline makes the next one. One attempt runs at a time. Media counts as
  // back (`media` connected) when every peer connection is connected.

  _watchPc(pc, transport) {
    if (pc !== this.publishPc && pc !== this.subscribePc) return; // an old one
    const states = [pc.connectionState, pc.iceConnectionState];
    if (states.includes('failed')) {
      clearTimeout(pc._wadudLost);
      pc._wadudLost = null;
      this._pathLost(`${transport} connection failed`);
    } else if (states.includes('disconnected')) {
      if (pc._wadudLost) return;
      pc._wadudLost = setTimeout(() => {
        pc._wadudLost = null;
        const now = [pc.connectionState, pc.iceConnectionState];
        if (now.includes('disconnected') || now.includes('failed')) {
          this._pathLost(`${transport} connection lost`);
        }
      }, DISCONNECTED_GRACE_MS);
    } else {
      clearTimeout(pc._wadudLost);
      pc._wadudLost = null;
      if (pc.connectionState === 'connected') this._checkMedia();
    }
  }

  // A connection stopped carrying anything: recover, unless a recovery is
  // already under way (its deadline decides what comes next).
  _pathLost(reason) {
    if (!this._hasMedia()) return;
    this._setMedia('reconnecting', reason);
    if (!this._recovery) this._recover(reason, true);
  }

  // The network itself changed (online again, another network, a resumed
  // socket): the path we use may be gone even if no connection noticed yet,
  // so restart ICE now, once per burst of events.
  _networkChanged(reason) {
    if (!this._hasMedia()) return;
    const rec = this._recovery;
    if (rec && rec.timer && Date.now() - rec.started < NETWORK_DEBOUNCE_MS) return;
    this._recover(reason, true);
  }

  _recover(reason, fresh) {
    const rec = this._recovery || (this._recovery = { attempt: 0, started: 0, timer: null });
    clearTimeout(rec.timer);
    rec.timer = null;
    if (fresh) rec.attempt = 0;
    // Without signalling nothing can be renegotiated; the socket resumes by
    // itself and _on_joined calls _networkChanged.
    if (this.state !== 'joined' || !this._hasMedia()) return;
    rec.attempt += 1;
    const started = rec.started = Date.now();
    const renew = rec.attempt % 2 === 0;
    const attempt = renew ? this._reconnectMedia() : this._restartIce();
    attempt.catch((e) => {
      this.recoveryError = String(e.message || e);
      // Failed outright (most often with the socket): the next trigger, a
      // resumed socket, goes at once rather than waiting out the deadline.
      if (this._recovery === rec && rec.started === started) rec.started = 0;
    });
    rec.timer = setTimeout(() => {
      rec.timer = null;
      if (this._recovery !== rec || isFinal(this.state)) return;
      if (this._mediaConnected()) this._checkMedia();
      else this._recover(reason, false);
    }, renew ? RECONNECT_WITHIN_MS : RESTART_WITHIN_MS);
  }

  // New ICE credentials on both connections: publish offers them itself;
  // for subscribe the server sends an offer that carries them. Nothing else
  // changes (DTLS, SRTP, tracks, simulcast), so the picture comes back
  // without a keyframe wait on a new decoder.
  async _restartIce() {
    this.iceRestarts += 1;
    const steps = [];
    if (this.publishPc) steps.push(this._renegotiate({ restart: true }));
    // On a single connection our own offer restarts it; the frame tells the others.
    if (this.subscribePc) steps.push(this._ask('ice_restart'));
    const failed = (await Promise.allSettled(steps)).find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  // The fallback: new peer connections (new DTLS), the same local tracks.
  // The server closes our subscribe transport and offers everything on a
  // new one once it answers `ok`: the old connection must be gone by then.
  async _reconnectMedia() {
    this.mediaReconnects += 1;
    await this._ask('reconnect_media');
    await this._restartMedia();
  }

  // A request made while recovering media: a socket that does not answer
  // in time has most likely died with the path (a half-open TCP connection
  // the browser has not noticed), so drop it; the resume that follows
  // restarts media again.
  async _ask(type, fields = {}) {
    const ws = this._ws;
    try {
      return await withTimeout(this.request(type, fields), RESTART_WITHIN_MS - 1000);
    } catch (e) {
      if (e.message === 'timeout' && ws === this._ws && ws.readyState === WebSocket.OPEN) {
        this._dropSocket(ws, 'no answer while reconnecting media');
      }
      throw e;
    }
  }

  _checkMedia() {
    if (!this._mediaConnected()) return;
    this._stopRecovery();
    this._setMedia('connected', '');
  }

  _stopRecovery() {
    if (this._recovery) clearTimeout(this._recovery.timer);
    this._recovery = null;
  }

  _hasMedia() {
    return !this._leaving && !isFinal(this.state) && Boolean(this.publishPc || this.subscribePc);
  }

  _mediaConnected() {
    if (this._awaitSubscribe && !this.subscribePc) return false;
    const pcs = this._pcs().map(([, pc]) => pc);
    return pcs.length > 0 && pcs.every((pc) => pc.connectionState === 'connected'
      && !['disconnected', 'failed'].includes(pc.iceConnectionState) && !pc._wadudSilent);
  }

  // What each connection received since the last look (getStats: the
  // transport's bytesReceived). `streak`: looks in a row that saw bytes.
  async _watchTraffic() {
    if (this._watching || isFinal(this.state)) return;
    this._watching = true;
    try {
      for (const [transport, pc] of this._pcs()) {
        if (pc.connectionState !== 'connected') continue;
        const bytes = await receivedBytes(pc);
        const now = Date.now();
        const seen = pc._wadudSeen || (pc._wadudSeen = { bytes, at: now, streak: 0 });
        if (bytes !== seen.bytes) {
          Object.assign(seen, { bytes, at: now, streak: seen.streak + 1 });
          if (pc._wadudSilent) {
            pc._wadudSilent = false;
            this._checkMedia();
          }
        } else if (seen.streak < SILENT_MS / WATCH_EVERY_MS) {
          seen.streak = 0; // not a steady receiver: a gap means nothing
        } else if (now - seen.at >= SILENT_MS) {
          seen.streak = 0;
          pc._wadudSilent = true;
          if (pc === this.publishPc || pc === this.subscribePc) this._pathLost(`${transport} connection silent`);
        }
      }
    } catch (_) {
      /* a connection closed under getStats: the next look sees the new one */
    } finally {
      this._watching = false;
    }
  }

  _setMedia(state, reason) {
    if (this.media === state) return;
    this.media = state;
    this._emit('media', { state, reason });
  }

  // The browser's own word on the network: `offline` (nothing can work;
  // shown at once), `online` and `navigator.connection` changes (a new
  // network: the old path is probably gone).
  _listenToNetwork() {
    if (this._unlisten || typeof window === 'undefined') return;
    const offline = () => this._pathLost('offline');
    const online = () => this._networkChanged('online');
    const changed = () => this._networkChanged('network changed');
    const connection = typeof navigator !== 'undefined' ? navigator.connection : null;
    window.addEventListener('offline', offline);
    window.addEventListener('online', online);
    if (connection && connection.addEventListener) connection.addEventListener('change', changed);
    this._unlisten = () => {
      window.removeEventListener('offline', offline);
      window.removeEventListener('online', online);
      if (connection && connection.removeEventListener) connection.removeEventListener('change', changed);
      this._unlisten = null;
    };
  }

  // ---- recording (docs/protocol.md, "Recording") ---------------------------

  // The server asks whether the visit may be recorded: the page asks the
  // person (`recordingasked`) and answers with answerRecording().
  _on_recording_asked(f) {
    this.recordingAsk = f;
    this._emit('recordingasked', { recording_id: f.recording_id, requested_by: f.requested_by });
  }

  // The recording's state changed: asking, on, or off with its reason.
  _on_recording(f) {
    this.recording = f;
    if (f.state === 'off') {
      this.recordingAsk = null;
      this._releaseRecordingHold();
    }
    this._emit('recording', f);
  }

  async answerRecording(agree) {
    const ask = this.recordingAsk;
    if (!ask) return;
    this.recordingAsk = null;
    try {
      await this.request('recording_consent', { recording_id: ask.recording_id, agree: Boolean(agree) });
    } finally {
      this._releaseRecordingHold();
    }
  }

  _releaseRecordingHold() {
    if (!this._recordingHold) return;
    this._recordingHold = false;
    if (this.state === 'joined') this._publishNow();
  }

  // Admins: ask everyone to agree to recording the visit (true), or stop it.
  record(on) { return this.request('record', { on: Boolean(on) }); }

  // ---- guests (docs/guests.md) ---------------------------------------------

  // Whether our role grants `action` (publish_video, invite, record, ...):
  // the server checks each one anyway; a page hides what it cannot do.
  can(action) {
    return Boolean(this.me && (this.me.actions || []).includes(action));
  }

  // The patient (a role with approve_guests) hears which invited guests
  // wait for their agreement: each with its `invite_id`.
  _on_guests_awaiting(f) {
    this.guestsAwaiting = f.guests || [];
    this._emit('guestsawaiting', { guests: this.guestsAwaiting });
  }

  // Let an invited family member or observer in (true), or turn them away
  // for good (false: their link stops working).
  approveGuest(inviteId, agree) {
    return this.request('approve_guest', { invite_id: inviteId, agree: Boolean(agree) });
  }

  // ---- calling the patient's phone (docs/phone.md) ---------------------------

  // Admins of a booked visit, where a bridge places calls (`phoneCalls`):
  // the bridge calls the patient's phone (or `number`, if the clinic's trunk
  // allows it) into the room. Resolves with the call; `phonecall` events follow.
  callPhone(number) {
    return this.request('call_phone', number ? { number } : {}).then((f) => {
      this._on_phone_call(f.call);
      return f.call;
    });
  }

  // A step of the call: dialling, ringing, answered, joined; then ended,
  // busy, no_answer, declined or failed (with `reason`).
  _on_phone_call(f) {
    const call = f.call || f.id;
    const was = this.phoneCall;
    // The answer to callPhone and the bridge's first step may cross.
    if (was && was.call === call && PHONE_STEPS.indexOf(f.state) < PHONE_STEPS.indexOf(was.state)) return;
    this.phoneCall = { call, state: f.state, reason: f.reason || null };
    this._emit('phonecall', this.phoneCall);
  }

  // ---- admin -------------------------------------------------------------

  admit(participantId) { return this.request('admit', { participant_id: participantId }); }
  deny(participantId) { return this.request('deny', { participant_id: participantId }); }
  remove(participantId) { return this.request('remove', { participant_id: participantId }); }
  muteTrack(trackId, muted = true) { return this.request('mute', { track_id: trackId, muted }); }
  setRequireAdmission(on) { return this.request('room_settings', { require_admission: on }); }
  async end() {
    await this.request('end');
  }

  // ---- stats -------------------------------------------------------------

  // What is arriving from whom, from getStats(): per remote participant the
  // video frames decoded and the audio packets and samples received, plus
  // what we send. Rising numbers mean media flows.
  async stats() {
    // sentByRid: packets sent per simulcast layer (rid), for dynacast checks.
    const out = { participants: {}, sent: { audio: 0, video: 0 }, sentByRid: {} };
    for (const r of this.remoteTracks.values()) {
      const p = out.participants[r.participant] || (out.participants[r.participant] = {
        framesDecoded: 0, videoPackets: 0, audioPackets: 0, totalSamplesReceived: 0,
        frameWidth: 0, frameHeight: 0, freezeCount: 0, totalFreezesDuration: 0,
      });
      const report = await r.transceiver.receiver.getStats();
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        if (s.kind === 'video') {
          p.framesDecoded += s.framesDecoded || 0;
          p.videoPackets += s.packetsReceived || 0;
          // The camera's, not the screen's: the larger of what arrives.
          if ((s.frameWidth || 0) > p.frameWidth) {
            p.frameWidth = s.frameWidth || 0;
            p.frameHeight = s.frameHeight || 0;
          }
          p.freezeCount += s.freezeCount || 0;
          p.totalFreezesDuration += s.totalFreezesDuration || 0;
        } else {
          p.audioPackets += s.packetsReceived || 0;
          p.totalSamplesReceived += s.totalSamplesReceived || 0;
        }
      });
    }
    if (this.publishPc) {
      (await this.publishPc.getStats()).forEach((s) => {
        if (s.type !== 'outbound-rtp') return;
        out.sent[s.kind] += s.packetsSent || 0;
        if (s.rid) out.sentByRid[s.rid] = (out.sentByRid[s.rid] || 0) + (s.packetsSent || 0);
      });
    }
    return out;
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}

function defaultUrl(room) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = room ? `?room=${encodeURIComponent(room)}` : '';
  return `${scheme}//${location.host}/ws${query}`;
}

// The TURN servers whose URLs use `transport` (udp, tcp, tls; true: all).
function relayServers(servers, transport) {
  if (transport === true || !['udp', 'tcp', 'tls'].includes(transport)) return servers;
  const keep = (url) => {
    if (transport === 'tls') return url.startsWith('turns:');
    if (url.startsWith('turns:')) return false;
    const named = /[?&]transport=(\w+)/.exec(url);
    return (named ? named[1] : 'udp') === transport;
  };
  return servers
    .map((s) => ({ ...s, urls: [].concat(s.urls).filter(keep) }))
    .filter((s) => s.urls.length);
}

function isFinal(state) {
  return ['left', 'ended', 'denied', 'removed', 'replaced', 'failed'].includes(state);
}

// What a connection's transport has received so far (getStats).
async function receivedBytes(pc) {
  let bytes = 0;
  (await pc.getStats()).forEach((st) => { if (st.type === 'transport') bytes += st.bytesReceived || 0; });
  return bytes;
}

function withTimeout(promise, ms) {
  return Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), ms))]);
}

// ---- the pre-call check (docs/calls.md, "Before the visit: the check") ----
//
//   import { checkConnection } from '/static/call/wadud-call.js';
//   const { verdict, details } = await checkConnection({ onProgress });
//
// verdict: ready | ready-relay | audio-only | blocked. The work is in
// wadud-check.js; it joins a throwaway room twice with this module's
// WadudCall, so it is handed the class rather than importing it back.
import { runCheck } from './wadud-check.js';

// An invite link's `invite` (`<id>.<key>`, docs/guests.md) for one use:
// the guest's room token and call page, from the server at `base` ('' is
// this page's). Rejects with a WadudCallError (invite-closed, ...).
export async function redeemInvite(invite, base = '') {
  const [id, key] = String(invite).split('.');
  const answer = await fetch(`${base}/api/v1/invites/${encodeURIComponent(id)}/redeem`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ key: key || '' }),
  });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new WadudCallError(body.code || 'invite-closed', body.detail || answer.statusText, body);
  return body;
}

export function checkConnection(options = {}) {
  return runCheck(WadudCall, options);
}
