// The user's keyboard layout (XKB name). Keys reach the desktop as physical keys, so the desktop
// must use the same layout as the keyboard in front of the user: guessed from the browser's
// language, changeable on the desktops page, remembered in this browser.

export const LAYOUTS = [
  ['us', 'English (US)'], ['gb', 'English (UK)'], ['de', 'German'], ['ch', 'Swiss German'],
  ['fr', 'French'], ['be', 'Belgian'], ['es', 'Spanish'], ['it', 'Italian'], ['pt', 'Portuguese'],
  ['br', 'Portuguese (Brazil)'], ['nl', 'Dutch'], ['se', 'Swedish'], ['no', 'Norwegian'],
  ['dk', 'Danish'], ['fi', 'Finnish'], ['pl', 'Polish'], ['cz', 'Czech'], ['hu', 'Hungarian'],
  ['ru', 'Russian'], ['tr', 'Turkish'], ['jp', 'Japanese'],
];

const BY_LANGUAGE = {
  'en-gb': 'gb', 'en-ie': 'gb', en: 'us', 'de-ch': 'ch', de: 'de', 'fr-ch': 'ch', 'fr-be': 'be',
  fr: 'fr', 'nl-be': 'be', nl: 'nl', es: 'es', it: 'it', 'pt-br': 'br', pt: 'pt', sv: 'se',
  nb: 'no', nn: 'no', no: 'no', da: 'dk', fi: 'fi', pl: 'pl', cs: 'cz', hu: 'hu', ru: 'ru',
  tr: 'tr', ja: 'jp',
};

const KEY = 'atrium.keyboardLayout';

export function guessLayout() {
  for (const lang of navigator.languages || [navigator.language || 'en']) {
    const l = lang.toLowerCase();
    if (BY_LANGUAGE[l]) return BY_LANGUAGE[l];
    const primary = l.split('-')[0];
    if (BY_LANGUAGE[primary]) return BY_LANGUAGE[primary];
  }
  return 'us';
}

export function currentLayout() {
  const saved = localStorage.getItem(KEY);
  return LAYOUTS.some(([id]) => id === saved) ? saved : guessLayout();
}

export function setLayout(id) {
  localStorage.setItem(KEY, id);
}
