//! Keyboard mapping from the DOM `KeyboardEvent.code` (a physical key, independent of layout)
//! to Linux evdev key codes (virtio-input, builtin VMM) and to QEMU "qnum" scancodes (XT set 1,
//! with `0xE0`-prefixed keys as `0x80 | code`), which QEMU's RFB extended key event takes.
//! Mapping physical keys keeps every layout exact: the guest applies its own layout.

/// `(DOM code, evdev code, qnum)`.
const KEYS: &[(&str, u16, u16)] = &[
    ("Escape", 1, 0x01),
    ("Digit1", 2, 0x02),
    ("Digit2", 3, 0x03),
    ("Digit3", 4, 0x04),
    ("Digit4", 5, 0x05),
    ("Digit5", 6, 0x06),
    ("Digit6", 7, 0x07),
    ("Digit7", 8, 0x08),
    ("Digit8", 9, 0x09),
    ("Digit9", 10, 0x0a),
    ("Digit0", 11, 0x0b),
    ("Minus", 12, 0x0c),
    ("Equal", 13, 0x0d),
    ("Backspace", 14, 0x0e),
    ("Tab", 15, 0x0f),
    ("KeyQ", 16, 0x10),
    ("KeyW", 17, 0x11),
    ("KeyE", 18, 0x12),
    ("KeyR", 19, 0x13),
    ("KeyT", 20, 0x14),
    ("KeyY", 21, 0x15),
    ("KeyU", 22, 0x16),
    ("KeyI", 23, 0x17),
    ("KeyO", 24, 0x18),
    ("KeyP", 25, 0x19),
    ("BracketLeft", 26, 0x1a),
    ("BracketRight", 27, 0x1b),
    ("Enter", 28, 0x1c),
    ("ControlLeft", 29, 0x1d),
    ("KeyA", 30, 0x1e),
    ("KeyS", 31, 0x1f),
    ("KeyD", 32, 0x20),
    ("KeyF", 33, 0x21),
    ("KeyG", 34, 0x22),
    ("KeyH", 35, 0x23),
    ("KeyJ", 36, 0x24),
    ("KeyK", 37, 0x25),
    ("KeyL", 38, 0x26),
    ("Semicolon", 39, 0x27),
    ("Quote", 40, 0x28),
    ("Backquote", 41, 0x29),
    ("ShiftLeft", 42, 0x2a),
    ("Backslash", 43, 0x2b),
    ("KeyZ", 44, 0x2c),
    ("KeyX", 45, 0x2d),
    ("KeyC", 46, 0x2e),
    ("KeyV", 47, 0x2f),
    ("KeyB", 48, 0x30),
    ("KeyN", 49, 0x31),
    ("KeyM", 50, 0x32),
    ("Comma", 51, 0x33),
    ("Period", 52, 0x34),
    ("Slash", 53, 0x35),
    ("ShiftRight", 54, 0x36),
    ("NumpadMultiply", 55, 0x37),
    ("AltLeft", 56, 0x38),
    ("Space", 57, 0x39),
    ("CapsLock", 58, 0x3a),
    ("F1", 59, 0x3b),
    ("F2", 60, 0x3c),
    ("F3", 61, 0x3d),
    ("F4", 62, 0x3e),
    ("F5", 63, 0x3f),
    ("F6", 64, 0x40),
    ("F7", 65, 0x41),
    ("F8", 66, 0x42),
    ("F9", 67, 0x43),
    ("F10", 68, 0x44),
    ("NumLock", 69, 0x45),
    ("ScrollLock", 70, 0x46),
    ("Numpad7", 71, 0x47),
    ("Numpad8", 72, 0x48),
    ("Numpad9", 73, 0x49),
    ("NumpadSubtract", 74, 0x4a),
    ("Numpad4", 75, 0x4b),
    ("Numpad5", 76, 0x4c),
    ("Numpad6", 77, 0x4d),
    ("NumpadAdd", 78, 0x4e),
    ("Numpad1", 79, 0x4f),
    ("Numpad2", 80, 0x50),
    ("Numpad3", 81, 0x51),
    ("Numpad0", 82, 0x52),
    ("NumpadDecimal", 83, 0x53),
    ("IntlBackslash", 86, 0x56),
    ("F11", 87, 0x57),
    ("F12", 88, 0x58),
    ("IntlRo", 89, 0x73),
    ("NumpadEnter", 96, 0x9c),
    ("ControlRight", 97, 0x9d),
    ("NumpadDivide", 98, 0xb5),
    ("PrintScreen", 99, 0xb7),
    ("AltRight", 100, 0xb8),
    ("Home", 102, 0xc7),
    ("ArrowUp", 103, 0xc8),
    ("PageUp", 104, 0xc9),
    ("ArrowLeft", 105, 0xcb),
    ("ArrowRight", 106, 0xcd),
    ("End", 107, 0xcf),
    ("ArrowDown", 108, 0xd0),
    ("PageDown", 109, 0xd1),
    ("Insert", 110, 0xd2),
    ("Delete", 111, 0xd3),
    ("NumpadEqual", 117, 0x59),
    ("Pause", 119, 0xc6),
    ("NumpadComma", 121, 0x7e),
    ("IntlYen", 124, 0x7d),
    ("MetaLeft", 125, 0xdb),
    ("MetaRight", 126, 0xdc),
    ("ContextMenu", 127, 0xdd),
];

/// The Linux evdev key code of a DOM `code`, if it is a key Atrium maps.
pub fn evdev_code(dom_code: &str) -> Option<u16> {
    KEYS.iter().find(|k| k.0 == dom_code).map(|k| k.1)
}

/// The QEMU qnum scancode of a DOM `code`.
pub fn qnum(dom_code: &str) -> Option<u16> {
    KEYS.iter().find(|k| k.0 == dom_code).map(|k| k.2)
}

/// The QEMU qnum of a Linux evdev code.
pub fn evdev_to_qnum(code: u16) -> Option<u16> {
    KEYS.iter().find(|k| k.1 == code).map(|k| k.2)
}

/// Every evdev key code in the map (a virtio-input keyboard announces these).
pub fn all_evdev_codes() -> impl Iterator<Item = u16> {
    KEYS.iter().map(|k| k.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_known() {
        for (i, a) in KEYS.iter().enumerate() {
            for b in &KEYS[i + 1..] {
                assert_ne!(a.0, b.0);
                assert_ne!(a.1, b.1, "{} and {}", a.0, b.0);
                assert_ne!(a.2, b.2, "{} and {}", a.0, b.0);
            }
        }
        assert_eq!(evdev_code("KeyA"), Some(30));
        assert_eq!(qnum("ControlRight"), Some(0x9d));
        assert_eq!(evdev_to_qnum(28), Some(0x1c));
        assert_eq!(evdev_code("NoSuchKey"), None);
    }
}
