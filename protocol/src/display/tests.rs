use super::*;

fn all_server() -> Vec<ServerMessage> {
    let rect = Rect { x: 1, y: 2, w: 64, h: 48 };
    vec![
        ServerMessage::Hello {
            version: VERSION,
            width: 1280,
            height: 800,
            caps: caps::VIEW_ONLY | caps::SHADOW,
            max_frames_in_flight: 2,
            name: "alice — desktop".into(),
        },
        ServerMessage::Resize { width: 1920, height: 1080 },
        ServerMessage::Resizable { max_width: 2560, max_height: 1440 },
        ServerMessage::Fill { rect, rgba: [1, 2, 3, 255] },
        ServerMessage::Image { rect, format: ImageFormat::Png, data: vec![9; 100] },
        ServerMessage::Copy { rect, src_x: 0, src_y: 16 },
        ServerMessage::FrameEnd { frame: 42, input_seq: 7 },
        ServerMessage::Cursor { hot_x: 3, hot_y: 4, png: vec![] },
        ServerMessage::Clipboard { text: "grüße".into() },
        ServerMessage::Pong { id: 99 },
        ServerMessage::FileProgress { id: 5, done: 3 << 30 },
        ServerMessage::FileSaved {
            id: 5,
            sha256: [7; 32],
            path: "/home/alice/Transfer/ä.pdf".into(),
        },
        ServerMessage::FileRefused {
            id: 6,
            message: "the scanner found Eicar-Test-Signature".into(),
        },
        ServerMessage::FileList {
            message: String::new(),
            files: vec![
                crate::agent::FileEntry { name: "bericht.pdf".into(), size: 1 << 33, modified: 9 },
                crate::agent::FileEntry { name: "a".into(), size: 0, modified: 0 },
            ],
        },
        ServerMessage::FileList { message: "nobody is signed in".into(), files: vec![] },
        ServerMessage::FileStart { id: 7, size: 1 << 30 },
        ServerMessage::FileChunk { id: 7, data: vec![1, 2, 3] },
        ServerMessage::FileDone { id: 7, sha256: [3; 32] },
        ServerMessage::FileLink { id: 7, size: 1 << 33, token: [0xab; 16] },
        ServerMessage::FileUnlinked { id: 8 },
        ServerMessage::ClipboardImage { png: b"\x89PNG\r\n\x1a\n".to_vec() },
        ServerMessage::Audio { at: 48_000, packet: vec![0xfc, 1, 2, 3] },
        ServerMessage::Video { rect, key: true, data: vec![0x9d, 1, 0x2a] },
        ServerMessage::Video { rect, key: false, data: vec![7; 40] },
    ]
}

fn all_client() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Key { seq: 1, down: true, keysym: 0x61, code: "KeyA".into() },
        ClientMessage::Pointer { seq: 2, x: 10, y: 20, buttons: 5, wheel_x: 0, wheel_y: -3 },
        ClientMessage::Clipboard { text: "hello ✓".into() },
        ClientMessage::ClipboardImage { png: vec![0x89; 40] },
        ClientMessage::FrameAck { frame: 3 },
        ClientMessage::Ping { id: 4 },
        ClientMessage::Refresh,
        ClientMessage::Resize { width: 1366, height: 768 },
        ClientMessage::Audio { enabled: true },
        ClientMessage::Audio { enabled: false },
        ClientMessage::Video { enabled: true },
        ClientMessage::Video { enabled: false },
        ClientMessage::FileOpen { id: 1, size: 1 << 30, name: "Übersicht.xlsx".into() },
        ClientMessage::FileData { id: 1, data: vec![0, 1, 2, 0xff] },
        ClientMessage::FileData { id: 1, data: vec![] },
        ClientMessage::FileCancel { id: 1 },
        ClientMessage::FileList,
        ClientMessage::FileGet { id: 2, name: "bericht.pdf".into() },
        ClientMessage::FileFetch { id: 3, name: "bericht.pdf".into() },
        ClientMessage::FilePut { id: 4, size: 1 << 31, name: "Übersicht.xlsx".into() },
        ClientMessage::FileTaken { id: 2, done: 1 << 32 },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in all_server() {
        assert_eq!(ServerMessage::decode(&m.encode()).unwrap(), m);
    }
    for m in all_client() {
        assert_eq!(ClientMessage::decode(&m.encode()).unwrap(), m);
    }
}

#[test]
fn every_truncation_and_extension_is_an_error() {
    for m in all_client() {
        let b = m.encode();
        for n in 0..b.len() {
            assert!(ClientMessage::decode(&b[..n]).is_err(), "{m:?} cut at {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(ClientMessage::decode(&longer), Err(DecodeError::Trailing(1)));
    }
    for m in all_server() {
        let b = m.encode();
        for n in 0..b.len() {
            assert!(ServerMessage::decode(&b[..n]).is_err(), "{m:?} cut at {n}");
        }
    }
}

#[test]
fn malformed_client_messages_are_refused() {
    assert_eq!(ClientMessage::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(ClientMessage::decode(&[0x01]), Err(DecodeError::UnknownType(1)));
    assert_eq!(ClientMessage::decode(&[0xff]), Err(DecodeError::UnknownType(0xff)));
    // Key state other than 0/1.
    let mut k = ClientMessage::Key { seq: 1, down: true, keysym: 1, code: "KeyA".into() }.encode();
    k[5] = 2;
    assert!(ClientMessage::decode(&k).is_err());
    // Non-alphanumeric key code.
    let k = [0x81, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, b'<', b'>'];
    assert_eq!(ClientMessage::decode(&k), Err(DecodeError::BadValue("key code")));
    // Clipboard longer than the limit, and invalid UTF-8.
    let mut c = vec![0x83];
    c.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(ClientMessage::decode(&c), Err(DecodeError::TooLarge(_))));
    let c = [0x83, 2, 0, 0, 0, 0xff, 0xfe];
    assert_eq!(ClientMessage::decode(&c), Err(DecodeError::BadValue("UTF-8 text")));
    let huge = vec![0x83; MAX_CLIENT_MESSAGE + 1];
    assert!(matches!(ClientMessage::decode(&huge), Err(DecodeError::TooLarge(_))));
    // The largest image fits in a client message; one byte more is refused.
    let max = ClientMessage::ClipboardImage { png: vec![0x89; MAX_CLIPBOARD_IMAGE] };
    assert_eq!(ClientMessage::decode(&max.encode()), Ok(max));
    let mut i = vec![0x92];
    i.extend_from_slice(&u32::try_from(MAX_CLIPBOARD_IMAGE + 1).unwrap().to_le_bytes());
    i.resize(i.len() + MAX_CLIPBOARD_IMAGE + 1, 0x89);
    assert!(matches!(ClientMessage::decode(&i), Err(DecodeError::TooLarge(_))));
    assert_eq!(ClientMessage::decode(&[0x88, 2]), Err(DecodeError::BadValue("audio state")));
    assert_eq!(ClientMessage::decode(&[0x87, 0, 4]), Err(DecodeError::Truncated));
    assert_eq!(ClientMessage::decode(&[0x89, 3]), Err(DecodeError::BadValue("video state")));
    // A file chunk over the limit, a name over 255 bytes or not UTF-8.
    let mut d = vec![0x8b, 1, 0, 0, 0];
    d.extend_from_slice(&u32::try_from(MAX_FILE_CHUNK + 1).unwrap().to_le_bytes());
    d.resize(d.len() + MAX_FILE_CHUNK + 1, 0);
    assert!(matches!(ClientMessage::decode(&d), Err(DecodeError::TooLarge(_))));
    let mut o = vec![0x8a, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
    o.extend_from_slice(&256u16.to_le_bytes());
    o.resize(o.len() + 256, b'a');
    assert!(matches!(ClientMessage::decode(&o), Err(DecodeError::TooLarge(256))));
    let o = [0x8a, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xff];
    assert_eq!(ClientMessage::decode(&o), Err(DecodeError::BadValue("UTF-8 text")));
}

#[test]
fn video_frames_that_are_empty_flagged_oddly_or_too_large_are_refused() {
    let rect = Rect { x: 0, y: 0, w: 64, h: 64 };
    let good = ServerMessage::Video { rect, key: false, data: vec![1] }.encode();
    let mut flag = good.clone();
    flag[9] = 2;
    assert_eq!(ServerMessage::decode(&flag), Err(DecodeError::BadValue("key frame flag")));
    let empty = ServerMessage::Video { rect, key: true, data: vec![] }.encode();
    assert_eq!(ServerMessage::decode(&empty), Err(DecodeError::BadValue("video frame")));
    let flat = ServerMessage::Video { rect: Rect { h: 0, ..rect }, key: true, data: vec![1] };
    assert_eq!(ServerMessage::decode(&flat.encode()), Err(DecodeError::BadValue("video frame")));
    let mut huge = good[..10].to_vec();
    huge.extend_from_slice(&u32::try_from(MAX_VIDEO_FRAME + 1).unwrap().to_le_bytes());
    assert!(matches!(ServerMessage::decode(&huge), Err(DecodeError::TooLarge(_))));
}

#[test]
fn audio_packets_of_no_length_or_over_the_limit_are_refused() {
    for len in [0u16, 4001] {
        let mut m = vec![0x40, 0, 0, 0, 0];
        m.extend_from_slice(&len.to_le_bytes());
        m.resize(m.len() + usize::from(len), 0xfc);
        assert_eq!(
            ServerMessage::decode(&m),
            Err(DecodeError::BadValue("audio packet length")),
            "{len}"
        );
    }
}

#[test]
fn truncate_keeps_char_boundaries() {
    assert_eq!(truncate_utf8("aé", 2), "a");
    assert_eq!(truncate_utf8("abc", 5), "abc");
}
