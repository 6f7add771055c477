//! Tickets against an in-test JWKS server with generated Ed25519 keys.

use std::time::Duration;

use atrium_protocol::ticket::Capabilities;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};

use super::*;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};

async fn setup() -> (TicketIssuer, JwksServer, TicketVerifier) {
    let issuer = TicketIssuer::generate("k1");
    let server = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await.unwrap();
    let mut cfg = VerifierConfig::new(&server.url());
    cfg.min_refresh = Duration::from_secs(3600);
    let verifier = TicketVerifier::new(cfg);
    (issuer, server, verifier)
}

fn claims(vm: &str) -> DisplayClaims {
    TicketIssuer::claims(vm, Capabilities::default(), 30)
}

#[tokio::test]
async fn a_valid_ticket_is_accepted_once() {
    let (issuer, _server, v) = setup().await;
    let t = issuer.ticket("vm-1", Capabilities { view_only: true, ..Default::default() });
    let c = v.verify(&t, "vm-1").await.unwrap();
    assert!(c.caps.view_only);
    assert_eq!(v.verify(&t, "vm-1").await, Err(TicketError::Replayed));
    // A watermarked ticket, with its own audience.
    let mark = atrium_protocol::ticket::Watermark {
        text: "alice\n{time}".into(),
        opacity: 12,
        size: 20,
        angle: 30,
        spacing: 4,
    };
    let wm = TicketIssuer::watermarked_claims("vm-1", Capabilities::default(), 30, mark);
    let c = v.verify(&issuer.sign(&wm), "vm-1").await.unwrap();
    assert_eq!(c.watermark.map(|w| w.text), Some("alice\n{time}".to_owned()));
    // A recorded one, with its own audience too.
    let mut rec = claims("vm-1");
    rec.aud = atrium_protocol::ticket::DISPLAY_AUDIENCE_RECORDED.into();
    rec.record = Some(atrium_protocol::ticket::Record { id: "5f0c-9a1e".into(), input: true });
    let c = v.verify(&issuer.sign(&rec), "vm-1").await.unwrap();
    assert_eq!(c.record.map(|r| (r.id, r.input)), Some(("5f0c-9a1e".to_owned(), true)));
}

#[tokio::test]
async fn bad_tickets_are_refused_with_their_reason() {
    let (issuer, _server, v) = setup().await;
    let other = TicketIssuer::generate("k1"); // same kid, other key: forged signature
    let mut expired = claims("vm-1");
    expired.iat -= 120;
    expired.nbf -= 120;
    expired.exp -= 100;
    let mut aud = claims("vm-1");
    aud.aud = "atrium-broker".into();
    let mut iss = claims("vm-1");
    iss.iss = "someone".into();
    let mut long = claims("vm-1");
    long.exp = long.iat + 3600;
    let mut future = claims("vm-1");
    future.nbf += 600;
    future.iat += 600;
    future.exp += 600;
    let mut no_jti = claims("vm-1");
    no_jti.jti = String::new();
    let mut bad_mark = claims("vm-1");
    bad_mark.watermark = Some(atrium_protocol::ticket::Watermark {
        text: "alice\u{1b}[2J".into(),
        opacity: 12,
        size: 20,
        angle: 30,
        spacing: 4,
    });
    let w = atrium_protocol::ticket::Watermark {
        text: "alice\n{time}".into(),
        opacity: 12,
        size: 20,
        angle: 30,
        spacing: 4,
    };
    let mut plain_aud = claims("vm-1");
    plain_aud.watermark = Some(w);
    let mut wm_aud = claims("vm-1");
    wm_aud.aud = atrium_protocol::ticket::DISPLAY_AUDIENCE_WATERMARKED.into();
    let rec = atrium_protocol::ticket::Record { id: "0f3e".into(), input: false };
    let mut unrecorded = claims("vm-1");
    unrecorded.record = Some(rec);
    let mut rec_aud = claims("vm-1");
    rec_aud.aud = atrium_protocol::ticket::DISPLAY_AUDIENCE_RECORDED.into();
    let mut bad_rec = rec_aud.clone();
    bad_rec.record = Some(atrium_protocol::ticket::Record { id: "../../etc".into(), input: false });
    let audience =
        TicketError::Claims("the audience does not match the watermark or recording".into());
    let cases = [
        (issuer.sign(&plain_aud), audience.clone()),
        (issuer.sign(&wm_aud), audience.clone()),
        (issuer.sign(&unrecorded), audience.clone()),
        (issuer.sign(&rec_aud), audience),
        (issuer.sign(&bad_rec), TicketError::Claims("bad recording id".into())),
        (issuer.sign(&expired), TicketError::Expired),
        (issuer.sign(&aud), TicketError::Audience),
        (issuer.sign(&iss), TicketError::Issuer),
        (issuer.sign(&long), TicketError::TooLong),
        (issuer.sign(&future), TicketError::NotYetValid),
        (issuer.sign(&no_jti), TicketError::Claims("bad jti".into())),
        (
            issuer.sign(&bad_mark),
            TicketError::Claims("watermark text has control characters".into()),
        ),
        (other.sign(&claims("vm-1")), TicketError::BadSignature),
        (issuer.sign(&claims("vm-2")), TicketError::WrongVm),
        (String::new(), TicketError::Missing),
        ("abc".into(), TicketError::Malformed),
        ("a.b.c".into(), TicketError::Malformed),
        ("x".repeat(MAX_TICKET_LEN + 1), TicketError::Malformed),
    ];
    for (token, want) in cases {
        assert_eq!(v.verify(&token, "vm-1").await, Err(want.clone()), "{want}");
    }
}

#[tokio::test]
async fn alg_none_and_hmac_are_refused() {
    let (issuer, _server, v) = setup().await;
    let c = claims("vm-1");
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
    let none_head = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1","typ":"JWT"}"#);
    let none = format!("{none_head}.{body}.");
    assert_eq!(v.verify(&none, "vm-1").await, Err(TicketError::Algorithm("none".into())));
    // HS256 keyed with the public key (the classic confusion attack).
    let public = issuer.jwk()["x"].as_str().unwrap().to_owned();
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(public.as_bytes())).unwrap();
    assert_eq!(v.verify(&hs, "vm-1").await, Err(TicketError::Algorithm("HS256".into())));
    // No kid.
    let mut h = Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = None;
    let no_kid = issuer.sign(&c);
    let (_, rest) = no_kid.split_once('.').unwrap();
    let head = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap());
    assert_eq!(v.verify(&format!("{head}.{rest}"), "vm-1").await, Err(TicketError::NoKeyId));
}

#[tokio::test]
async fn rotation_is_picked_up_and_refreshes_are_rate_limited() {
    let issuer = TicketIssuer::generate("k1");
    let server = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await.unwrap();
    let mut cfg = VerifierConfig::new(&server.url());
    cfg.min_refresh = Duration::from_millis(300);
    let v = TicketVerifier::new(cfg);
    v.verify(&issuer.ticket("vm", Capabilities::default()), "vm").await.unwrap();
    assert_eq!(server.hits(), 1);
    // Cached: no fetch.
    v.verify(&issuer.ticket("vm", Capabilities::default()), "vm").await.unwrap();
    assert_eq!(server.hits(), 1);
    // The broker rotates to k2 (a refresh already happened under 300 ms ago: wait it out).
    let k2 = TicketIssuer::generate("k2");
    server.set(TicketIssuer::jwks(&[&issuer, &k2])).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    v.verify(&k2.ticket("vm", Capabilities::default()), "vm").await.unwrap();
    assert_eq!(server.hits(), 2);
    // A flood of unknown key ids triggers no more than one fetch per interval.
    let k3 = TicketIssuer::generate("k3");
    for _ in 0..20 {
        assert_eq!(
            v.verify(&k3.ticket("vm", Capabilities::default()), "vm").await,
            Err(TicketError::UnknownKey)
        );
    }
    assert!(server.hits() <= 3, "{} fetches", server.hits());
}

#[tokio::test]
async fn node_is_checked_when_configured_and_broken_keys_are_skipped() {
    let issuer = TicketIssuer::generate("k1");
    let mut short = issuer.jwk();
    short["kid"] = "short".into();
    short["x"] = URL_SAFE_NO_PAD.encode([1u8; 5]).into();
    let doc = serde_json::json!({ "keys": [issuer.jwk(), short, {"kty": "RSA", "kid": "r"}] });
    let server = JwksServer::start(doc.to_string()).await.unwrap();
    let mut cfg = VerifierConfig::new(&server.url());
    cfg.node_id = Some("node-9".into());
    let v = TicketVerifier::new(cfg);
    assert_eq!(v.refresh().await, Ok(1), "only the good key is kept");
    let t = issuer.ticket("vm", Capabilities::default());
    assert_eq!(v.verify(&t, "vm").await, Err(TicketError::WrongNode));
    let mut c = claims("vm");
    c.node = "node-9".into();
    v.verify(&issuer.sign(&c), "vm").await.unwrap();
}

#[tokio::test]
async fn without_the_broker_tickets_cannot_be_checked() {
    let issuer = TicketIssuer::generate("k1");
    let cfg = VerifierConfig::new("http://127.0.0.1:9");
    let v = TicketVerifier::new(cfg);
    let t = issuer.ticket("vm", Capabilities::default());
    assert_eq!(v.verify(&t, "vm").await, Err(TicketError::KeysUnavailable));
}

#[test]
fn the_jti_store_is_bounded_and_forgets_expired_tickets() {
    let mut s = JtiStore::default();
    s.insert("a", 100, 50, 2).unwrap();
    s.insert("b", 200, 50, 2).unwrap();
    assert_eq!(s.insert("c", 300, 50, 2), Err(TicketError::Busy));
    assert_eq!(s.insert("a", 300, 150, 2), Err(TicketError::Replayed));
    // At time 150, "a" has expired and makes room.
    s.insert("c", 300, 150, 2).unwrap();
    assert_eq!(s.seen.len(), 2);
}

#[tokio::test]
async fn an_oversized_key_set_is_refused() {
    let (_issuer, server, v) = setup().await;
    let pad = "x".repeat(MAX_JWKS_BYTES);
    server.set(format!("{{\"keys\":[],\"pad\":\"{pad}\"}}")).await;
    let err = v.refresh().await.expect_err("too big");
    assert!(err.contains("over"), "{err}");
}

#[tokio::test]
async fn checks_with_known_keys_do_not_wait_for_a_hanging_broker() {
    // A "broker" that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hang.local_addr().unwrap());
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let issuer = TicketIssuer::generate("k1");
    let v = TicketVerifier::new(VerifierConfig::new(&url));
    v.cache.write().await.keys = parse_jwks(TicketIssuer::jwks(&[&issuer]).as_bytes()).unwrap();
    let stranger = TicketIssuer::generate("k2").ticket("vm", Capabilities::default());
    let known = issuer.ticket("vm", Capabilities::default());
    let unknown_key = v.verify(&stranger, "vm");
    tokio::pin!(unknown_key);
    // Let the unknown key start its fetch, then check a ticket signed with a known key.
    assert!(tokio::time::timeout(Duration::from_millis(200), &mut unknown_key).await.is_err());
    tokio::select! {
        biased;
        r = v.verify(&known, "vm") => assert!(r.is_ok(), "{r:?}"),
        r = &mut unknown_key => panic!("the fetch ended first ({r:?}): the known key waited for it"),
    }
}

#[tokio::test]
async fn a_ticket_issued_before_the_service_started_is_refused() {
    // Spent tickets are remembered in memory only: one from before a restart may have been
    // used already.
    let (issuer, _server, v) = setup().await;
    let mut c = claims("vm");
    c.iat -= 30;
    assert_eq!(v.verify(&issuer.sign(&c), "vm").await, Err(TicketError::BeforeStart));
    v.verify(&issuer.sign(&claims("vm")), "vm").await.unwrap();
}

#[tokio::test]
async fn a_known_key_is_used_however_old_the_cache_without_a_fetch() {
    let issuer = TicketIssuer::generate("k1");
    let server = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await.unwrap();
    let mut cfg = VerifierConfig::new(&server.url());
    // Every cache is "old" at once: the background refresh, not a check, fetches again.
    cfg.max_age = Duration::ZERO;
    cfg.min_refresh = Duration::from_secs(3600);
    let v = TicketVerifier::new(cfg);
    v.verify(&issuer.ticket("vm-1", Capabilities::default()), "vm-1").await.unwrap();
    assert_eq!(server.hits(), 1);
    // The broker stops answering keys: checks with the key in hand go on, with no fetch.
    server.set("not json".into()).await;
    for i in 0..3 {
        let vm = format!("vm-{}", i + 2);
        v.verify(&issuer.ticket(&vm, Capabilities::default()), &vm).await.unwrap();
    }
    assert_eq!(server.hits(), 1, "a check waited on a fetch");
}
