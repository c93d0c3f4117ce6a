// The consultation's chat on the call page: the chat protocol of
// docs/protocol.md ("Chat") over /api/v1/calls/chat/ws, authenticated by the
// call's room token and held by the server to the booking's conversation
// (signalling/edge/chat.py). Messages are committed before they are
// acknowledged and kept in the consultation's history; a dropped socket
// resumes after the last sequence seen, so nothing is shown twice or lost.

import { t } from './i18n.js';

const RETRY_MS = [500, 1000, 2000, 4000, 8000];

export class ConsultChat {
  constructor({ token, log, note, form, input, nameOf, onUnread, onUnavailable }) {
    this.token = token;
    this.log = log;
    this.note = note;
    this.form = form;
    this.input = input;
    this.nameOf = nameOf;
    this.onUnread = onUnread;
    this.onUnavailable = onUnavailable;
    this.conversation = null; // {conversation_id, user_id, can_write}
    this.lastSeq = 0;
    this.readSeq = 0;
    this.unread = 0;
    this.visible = false;
    this.unavailable = false;
    this.messages = new Map(); // seq -> {li, event}
    this.pending = new Map(); // client_id -> body, sent and not yet acknowledged
    this.ws = null;
    this.closed = false;
    this.attempt = 0;
  }

  async start() {
    let answer;
    try {
      const response = await fetch('/api/v1/calls/chat', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token: this.token }),
      });
      answer = await response.json();
      if (!response.ok) {
        // No booking (404): this call has no chat, so none is shown.
        if (response.status === 404) return this._unavailable();
        throw new Error(answer.detail || answer.title || response.statusText);
      }
    } catch (e) {
      this.note.textContent = t('chat.unavailable', { error: e.message });
      return;
    }
    this.conversation = answer;
    this.input.disabled = !answer.can_write;
    if (!answer.can_write) this.note.textContent = t('chat.readonly');
    this.form.onsubmit = (e) => {
      e.preventDefault();
      this.send(this.input.value);
    };
    this._connect();
  }

  _unavailable() {
    this.unavailable = true;
    this.onUnavailable();
  }

  _connect() {
    if (this.closed) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/calls/chat/ws?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    ws.onmessage = (e) => this._onFrame(JSON.parse(e.data));
    ws.onclose = () => {
      if (this.ws !== ws || this.closed) return;
      const delay = RETRY_MS[Math.min(this.attempt, RETRY_MS.length - 1)];
      this.attempt += 1;
      setTimeout(() => this._connect(), delay);
    };
  }

  _send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ v: 1, ...frame }));
  }

  _onFrame(f) {
    const cid = this.conversation.conversation_id;
    if (f.type === 'ready') {
      this.attempt = 0;
      this.note.textContent = this.conversation.can_write ? '' : this.note.textContent;
      this._send({ type: 'subscribe', conversation_id: cid, after: this.lastSeq });
      // Anything sent but not acknowledged before the drop goes again, with
      // the same client_id: the server appends it once.
      for (const [clientId, body] of this.pending) {
        this._send({ type: 'send', conversation_id: cid, client_id: clientId, body });
      }
    } else if (f.type === 'event' && f.conversation_id === cid) {
      this._event(f);
    } else if (f.type === 'ack') {
      this.pending.delete(f.client_id);
    } else if (f.type === 'error') {
      this.note.textContent = f.message || f.code;
      if (f.fatal) this.closed = true;
    }
  }

  _event(e) {
    if (e.seq <= this.lastSeq) return;
    this.lastSeq = e.seq;
    const mine = e.sender_id === this.conversation.user_id;
    if (e.kind === 'message') {
      const li = document.createElement('li');
      li.className = mine ? 'mine' : '';
      li.dataset.seq = String(e.seq);
      const from = document.createElement('span');
      from.className = 'from';
      from.dataset.sender = e.sender_id;
      from.textContent = this.nameOf(e.sender_id, mine);
      const text = document.createElement('span');
      text.className = 'text';
      // Each message lays itself out by its own first strong letter: an Urdu
      // message with English words in it reads right to left, punctuation
      // at its end, on an English page too.
      text.dir = 'auto';
      text.textContent = e.attachment ? `${e.body || ''} ${t('chat.attachment')}`.trim() : e.body;
      li.append(from, document.createElement('br'), text);
      this.log.append(li);
      this.messages.set(e.seq, li);
      li.scrollIntoView({ block: 'end' });
      if (!mine) this.unread += 1;
    } else {
      const li = this.messages.get(e.target_seq);
      if (li) li.querySelector('.text').textContent = e.kind === 'delete' ? t('chat.deleted') : e.body;
    }
    this._markRead();
  }

  // Names arrive with people joining: show them on what is already there.
  rename() {
    for (const from of this.log.querySelectorAll('.from')) {
      from.textContent = this.nameOf(from.dataset.sender, from.dataset.sender === this.conversation?.user_id);
    }
  }

  send(text) {
    const body = text.trim();
    if (!body || !this.conversation) return;
    const clientId = `call-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    this.pending.set(clientId, body);
    this._send({ type: 'send', conversation_id: this.conversation.conversation_id, client_id: clientId, body });
    this.input.value = '';
  }

  setVisible(visible) {
    this.visible = visible;
    this._markRead();
  }

  // Shown messages are read: the badge clears and the server keeps the place.
  _markRead() {
    if (this.visible && this.unread) {
      this.unread = 0;
      if (this.lastSeq > this.readSeq) {
        this.readSeq = this.lastSeq;
        this._send({ type: 'read', conversation_id: this.conversation.conversation_id, seq: this.lastSeq });
      }
    }
    this.onUnread(this.unread);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
  }
}
