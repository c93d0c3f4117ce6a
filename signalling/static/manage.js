// The page a manage link opens (booking/pages.py, manage()): the booking in
// the patient's words and what the link may do to it, through the link's
// own API: POST .../cancel, and POST .../reschedule to one of the doctor's
// free slots (GET /api/v1/doctors/{id}/slots). After a change the page
// loads itself again (?done=...), so everything it shows, the way into the
// visit included, is what the server says now.

import * as i18n from './i18n.js';
import { facts } from './pay.js';

const $ = (id) => document.getElementById(id);
const { t } = i18n;
// The link's own resource: /api/v1/manage/{token}.
const resource = location.pathname.replace(/\/+$/, '');
const allowed = new Set(facts.allowed_events);
// How far ahead free times are offered.
const AHEAD_DAYS = 14;

$('status').textContent = t(`manage.status.${facts.booking_status}`);
$('cancel-open').hidden = !allowed.has('cancel_by_patient');
$('reschedule-open').hidden = !allowed.has('reschedule');
$('closed').hidden = !$('cancel-open').hidden || !$('reschedule-open').hidden;
$('actions').hidden = !$('closed').hidden;

const money = (minor) => i18n.money(minor, facts.currency);

function refundText() {
  if (!facts.paid_minor) return '';
  const amount = money(facts.refund_now_minor);
  if (facts.refund_now_minor >= facts.paid_minor) return t('manage.refund.full', { amount });
  if (facts.refund_now_minor > 0) return t('manage.refund.part', { amount, paid: money(facts.paid_minor) });
  return t('manage.refund.none');
}
const refund = document.querySelector('[data-fill=refund]');
refund.textContent = refundText();
refund.hidden = !refund.textContent;

function say(text) {
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

const done = new URLSearchParams(location.search).get('done');
if (done === 'cancelled' && facts.booking_status === 'cancelled') {
  say(facts.refunded_minor > 0
    ? t('manage.done.refunded', { amount: money(facts.refunded_minor) })
    : t('manage.done.cancelled'));
} else if (done === 'moved') {
  say(t('manage.done.moved', { time: i18n.when(facts.starts_at, facts.time_zone) }));
}

// One step open at a time: the buttons, picking a time, or cancelling.
function show(step) {
  $('actions').hidden = step !== null;
  $('reschedule').hidden = step !== 'reschedule';
  $('cancel').hidden = step !== 'cancel';
  $('failed').hidden = true;
  if (step) $(step).scrollIntoView({ block: 'nearest' });
}

function failed(code) {
  const key = `manage.failed.${code}`;
  $('failed').textContent = t(key) === key ? t('manage.failed') : t(key);
  $('failed').hidden = false;
}

async function send(action, body, button) {
  button.disabled = true;
  let resp;
  try {
    resp = await fetch(`${resource}/${action}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
    });
  } catch (_) { // no answer: whatever happened, the server knows
    location.reload();
    return;
  }
  if (resp.ok) {
    const query = new URLSearchParams(location.search);
    query.set('done', action === 'cancel' ? 'cancelled' : 'moved');
    location.replace(`${resource}?${query}`);
    return;
  }
  const problem = await resp.json().catch(() => ({}));
  button.disabled = false;
  failed(problem.code || '');
}

// -- cancelling --------------------------------------------------------------

$('cancel-open').addEventListener('click', () => show('cancel'));
$('cancel-back').addEventListener('click', () => show(null));
$('cancel-confirm').addEventListener('click', (event) => {
  send('cancel', { reason: $('cancel-reason').value.trim() }, event.currentTarget);
});

// -- another time ------------------------------------------------------------

let picked = null;
const byDay = new Map(); // the day, in the patient's words -> its slots' starts

function pick(start, button) {
  picked = start;
  for (const b of $('slots').querySelectorAll('button')) b.setAttribute('aria-checked', String(b === button));
  $('picked').textContent = t('manage.picked', { time: i18n.when(start, facts.time_zone) });
  $('picked').hidden = false;
  $('reschedule-confirm').disabled = false;
  // On a phone the day's times fill the screen: bring the button to it.
  $('reschedule-confirm').scrollIntoView({ block: 'nearest' });
}

function showDay(label) {
  $('slots').replaceChildren(...(byDay.get(label) || []).map((start) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.setAttribute('role', 'radio');
    b.setAttribute('aria-checked', String(start === picked));
    b.dataset.start = start;
    b.textContent = i18n.clock(start, facts.time_zone);
    b.addEventListener('click', () => pick(start, b));
    return b;
  }));
}

async function loadSlots() {
  $('slots-note').textContent = t('manage.slots.loading');
  const now = new Date();
  const query = new URLSearchParams({
    type: facts.type,
    from: now.toISOString(),
    to: new Date(now.getTime() + AHEAD_DAYS * 86400e3).toISOString(),
  });
  let slots;
  try {
    const resp = await fetch(`/api/v1/doctors/${facts.doctor_id}/slots?${query}`, {
      headers: { Accept: 'application/json' },
    });
    if (!resp.ok) throw new Error(String(resp.status));
    slots = (await resp.json()).slots;
  } catch (_) {
    $('slots-note').textContent = t('manage.slots.failed');
    return;
  }
  byDay.clear();
  for (const slot of slots) {
    const label = i18n.day(slot.start, facts.time_zone);
    if (!byDay.has(label)) byDay.set(label, []);
    byDay.get(label).push(slot.start);
  }
  if (!byDay.size) {
    $('slots-note').textContent = t('manage.slots.none');
    return;
  }
  $('day').replaceChildren(...[...byDay.keys()].map((label) => new Option(label, label)));
  $('day-field').hidden = false;
  $('slots-note').textContent = '';
  showDay($('day').value);
}

$('day').addEventListener('change', () => showDay($('day').value));
$('reschedule-open').addEventListener('click', () => {
  show('reschedule');
  if (!byDay.size) loadSlots();
});
$('reschedule-back').addEventListener('click', () => show(null));
$('reschedule-confirm').addEventListener('click', (event) => {
  if (picked) send('reschedule', { starts_at: picked }, event.currentTarget);
});

document.body.dataset.manage = 'ready';
