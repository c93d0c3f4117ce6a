// The pages around paying for a visit (booking/payments/pages.py): the
// sandbox checkout and the confirmation after it. The server sends the
// words as i18n keys and the facts as one JSON block (#facts); this puts
// both in the patient's language, the amount and times in their way and
// their time zone.

import * as i18n from './i18n.js';

const facts = JSON.parse(document.getElementById('facts').textContent);
const FILL = {
  doctor: () => facts.doctor,
  amount: () => i18n.money(facts.amount_minor, facts.currency),
  starts: () => i18n.when(facts.starts_at, facts.time_zone),
  expires: () => i18n.when(facts.expires_at, facts.time_zone),
};

i18n.translatePage();
for (const el of document.querySelectorAll('[data-fill]')) {
  el.textContent = FILL[el.dataset.fill]();
}
document.body.dataset.ready = '1';
