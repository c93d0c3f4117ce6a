// The demo page: POST /api/v1/calls/demo makes a room and two join links.

const $ = (id) => document.getElementById(id);

$('create').onclick = async () => {
  $('create').disabled = true;
  $('error').hidden = true;
  try {
    const response = await fetch('/api/v1/calls/demo', { method: 'POST' });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || body.title || response.statusText);
    $('room').textContent = body.room;
    $('doctor').href = body.doctor_url;
    $('patient').href = body.patient_url;
    $('links').hidden = false;
  } catch (e) {
    $('error').textContent = `Could not make a room: ${e.message}`;
    $('error').hidden = false;
  } finally {
    $('create').disabled = false;
  }
};
