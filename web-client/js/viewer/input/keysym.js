// X keysyms for KeyboardEvent.key: named keys from a table, characters from their code point
// (Latin-1 directly, others as 0x01000000 + code point, as X defines).
const NAMED = {
  Backspace: 0xff08, Tab: 0xff09, Enter: 0xff0d, Escape: 0xff1b, Delete: 0xffff,
  Home: 0xff50, ArrowLeft: 0xff51, ArrowUp: 0xff52, ArrowRight: 0xff53, ArrowDown: 0xff54,
  PageUp: 0xff55, PageDown: 0xff56, End: 0xff57, Insert: 0xff63, Pause: 0xff13,
  ScrollLock: 0xff14, PrintScreen: 0xff61, ContextMenu: 0xff67, NumLock: 0xff7f, CapsLock: 0xffe5,
  F1: 0xffbe, F2: 0xffbf, F3: 0xffc0, F4: 0xffc1, F5: 0xffc2, F6: 0xffc3,
  F7: 0xffc4, F8: 0xffc5, F9: 0xffc6, F10: 0xffc7, F11: 0xffc8, F12: 0xffc9,
  Dead: 0,
};

// Modifiers depend on the side (the DOM code).
const MODIFIERS = {
  ShiftLeft: 0xffe1, ShiftRight: 0xffe2, ControlLeft: 0xffe3, ControlRight: 0xffe4,
  AltLeft: 0xffe9, AltRight: 0xfe03, MetaLeft: 0xffeb, MetaRight: 0xffec,
};

export function keysymOf(key, code) {
  if (code in MODIFIERS) return MODIFIERS[code];
  if (key in NAMED) return NAMED[key];
  if (typeof key === 'string' && [...key].length === 1) {
    const cp = key.codePointAt(0);
    if (cp >= 0x20 && cp <= 0xff) return cp;
    return 0x01000000 + cp;
  }
  return 0;
}
