use std::sync::Mutex;

use atrium_protocol::recording::{Kind, key_parts, parse_chunk};
use futures_util::future::BoxFuture;

use super::*;

/// Keeps what it is sent; refuses or fails as told.
#[derive(Debug, Default)]
struct Kept {
    chunks: Mutex<Vec<(u64, bool, Bytes)>>,
    ended: Mutex<bool>,
    /// Answers to the next puts, in order (then Ok).
    answers: Mutex<Vec<SinkError>>,
}

impl Sink for Kept {
    fn put<'a>(
        &'a self,
        _vm: &'a str,
        _id: &'a str,
        n: u64,
        last: bool,
        chunk: Bytes,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut answers = self.answers.lock().unwrap();
            if !answers.is_empty() {
                return Err(answers.remove(0));
            }
            self.chunks.lock().unwrap().push((n, last, chunk));
            Ok(())
        })
    }

    fn end<'a>(&'a self, _vm: &'a str, _id: &'a str) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            *self.ended.lock().unwrap() = true;
            Ok(())
        })
    }
}

fn recorder(input: bool) -> (Recorder, Arc<Kept>) {
    let kept = Arc::new(Kept::default());
    let record = Record { id: "0a1b".into(), input };
    let r = Recorder::new(record, "vm-1", Arc::clone(&kept) as Arc<dyn Sink>, Arc::default());
    (r, kept)
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn what_the_viewer_is_sent_is_recorded_as_sent_and_leaves_in_numbered_chunks() {
    let (mut r, kept) = recorder(false);
    let image = [0x11u8; 100];
    r.message(&[0x01, 9, 9]); // Hello: not recorded
    r.message(&image);
    r.message(&[0x40, 1, 2]); // sound: not recorded
    r.message(&[0x1f, 0, 0, 0, 0, 0, 0, 0, 0]);
    r.input(&[0x81, 1]); // input is not recorded unless the ticket says so
    assert!(r.due_at().is_some(), "a chunk is open");
    r.tick(Instant::now());
    assert!(r.due_at().is_some(), "not due yet");
    r.tick(Instant::now() + CHUNK_AFTER);
    assert_eq!(r.due_at(), None, "the chunk left");
    r.message(&[0x30, b'x']);
    r.finish();
    settle().await;
    let chunks = kept.chunks.lock().unwrap().clone();
    assert_eq!(chunks.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(), vec![(0, false), (1, true)]);
    let first = parse_chunk(&chunks[0].2, 0).unwrap();
    let kinds: Vec<_> = first.iter().map(|rec| (rec.kind, rec.payload.len())).collect();
    assert_eq!(kinds, vec![(Kind::Message, 100), (Kind::Message, 9)]);
    assert_eq!(first[0].payload, image);
    let second = parse_chunk(&chunks[1].2, first[1].t_ms).unwrap();
    assert_eq!(second[0].payload, [0x30, b'x']);
}

#[tokio::test]
async fn a_big_chunk_leaves_at_once_and_an_empty_end_is_an_end() {
    let (mut r, kept) = recorder(true);
    r.input(&[0x81, 1, 2]);
    r.message(&vec![0x11; CHUNK_BYTES]);
    assert_eq!(r.due_at(), None, "a full chunk does not wait");
    r.finish();
    settle().await;
    let chunks = kept.chunks.lock().unwrap().clone();
    assert_eq!(chunks.len(), 1);
    let recs = parse_chunk(&chunks[0].2, 0).unwrap();
    assert_eq!(recs[0].kind, Kind::Input);
    assert!(*kept.ended.lock().unwrap(), "the end is sent on its own");
}

#[tokio::test]
async fn key_frames_come_when_the_stream_is_ten_times_the_last_one() {
    let (mut r, kept) = recorder(false);
    assert!(!r.key_due(), "nothing sent yet");
    r.first_frame(1000);
    r.message(&vec![0x11; KEY_EVERY * 1000 - 1000]);
    assert!(!r.key_due());
    r.message(&[0x11; 1_000]);
    assert!(r.key_due());
    let parts: Vec<Arc<[u8]>> =
        vec![Arc::from(&[0x02u8, 4, 0, 3, 0][..]), Arc::from(&[0x10u8; 14][..])];
    r.key(&parts);
    assert!(!r.key_due(), "a key frame starts the count again");
    r.finish();
    settle().await;
    let chunks = kept.chunks.lock().unwrap().clone();
    let recs = parse_chunk(&chunks[0].2, 0).unwrap();
    let key = recs.iter().find(|x| x.kind == Kind::Key).expect("a key frame");
    let got: Vec<&[u8]> = key_parts(key.payload).unwrap();
    assert_eq!(got, parts.iter().map(|p| &p[..]).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_sink_out_of_reach_is_tried_again_and_a_refusal_fails_the_recording() {
    let (mut r, kept) = recorder(false);
    kept.answers
        .lock()
        .unwrap()
        .extend([SinkError::Retry("down".into()), SinkError::Retry("down".into())]);
    r.message(&[0x11; 10]);
    r.tick(Instant::now() + CHUNK_AFTER);
    let watch = r.failure_watch();
    // Tried again after 250 and 500 ms.
    for _ in 0..100 {
        if !kept.chunks.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kept.chunks.lock().unwrap().len(), 1, "stored after two tries");
    assert_eq!(r.failure(), None);
    kept.answers.lock().unwrap().push(SinkError::Refused("no such recording".into()));
    r.message(&[0x11; 10]);
    r.tick(Instant::now() + CHUNK_AFTER);
    let why = tokio::time::timeout(Duration::from_secs(5), watch.failed()).await.expect("fails");
    assert!(why.contains("no such recording"), "{why}");
    assert_eq!(r.failure().as_deref(), Some(why.as_str()));
}

#[test]
fn only_what_changes_the_screen_the_pointer_or_the_clipboard_is_recorded() {
    for (t, kept) in [
        (0x01, false),
        (0x02, true),
        (0x03, false),
        (0x10, true),
        (0x11, true),
        (0x12, true),
        (0x13, true),
        (0x1f, true),
        (0x20, true),
        (0x30, true),
        (0x31, false),
        (0x3c, true),
        (0x40, false),
    ] {
        assert_eq!(is_recorded(&[t]), kept, "{t:#x}");
    }
    assert!(!is_recorded(&[]));
}
