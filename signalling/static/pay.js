// The patient's pages outside the call (booking/pages.py): the sandbox
// checkout, the confirmation after it and the manage link's page. The
// server sends the words as i18n keys and the facts as one JSON block
// (#facts); this puts both in the patient's language, the amount and times
// in their way and their time zone. A page's own script (manage.js) imports
// the facts from here.

import * as i18n from './i18n.js';

export const facts = JSON.parse(document.getElementById('facts').textContent);

// The host of the client's page is a name in Latin letters inside a
// sentence that may run right to left: isolated, it keeps its own order.
const isolate = (text) => `\u2068${text}\u2069`;

const FILL = {
  doctor: () => facts.doctor,
  amount: () => i18n.money(facts.amount_minor, facts.currency),
  starts: () => i18n.when(facts.starts_at, facts.time_zone),
  expires: () => i18n.when(facts.expires_at, facts.time_zone),
  continue: () => i18n.t('done.continue', { host: isolate(facts.continue_host) }),
};

i18n.translatePage();
for (const el of document.querySelectorAll('[data-fill]')) {
  const fill = FILL[el.dataset.fill];
  if (fill) el.textContent = fill();
}
document.body.dataset.ready = '1';
