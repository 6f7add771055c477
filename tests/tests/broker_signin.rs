//! Directory sign-in through the real broker against a real slapd: credentials, hostile
//! usernames, directory outages, lockout, cookies and CSRF, token tampering, group modes,
//! Active Directory by configuration, LDAPS and StartTLS, key rotation, policy files.

use std::time::{Duration, Instant};

use atrium_tests::broker::{ApiClient, Broker, BrokerOptions, policies_with};
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, bin_path, skip, workspace_root};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn login_status(c: &mut ApiClient, user: &str, pw: &str) -> (StatusCode, Value) {
    let r = c.login(user, pw).await.expect("request");
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn right_wrong_unknown_and_empty_credentials() {
    if skip(Group::Ldap, "right_wrong_unknown_and_empty_credentials") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let mut c = broker.client();

    let r = c.login("alice", "alice-pw").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookies: Vec<String> =
        r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let session =
        cookies.iter().find(|c| c.starts_with("atrium_session=")).expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
    assert!(!session.contains("Secure"), "no Secure over plain http: {session}");
    let csrf = cookies.iter().find(|c| c.starts_with("atrium_csrf=")).expect("csrf cookie");
    assert!(!csrf.contains("HttpOnly"), "the page must read the CSRF cookie: {csrf}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["username"], "alice");
    assert_eq!(body["user"]["display_name"], "Alice Andersen");
    assert!(body["user"]["groups"].as_array().unwrap().contains(&json!("atrium-users")));
    assert_eq!(body["user"]["is_admin"], false);
    let me = c.get_json("/api/v1/me", StatusCode::OK).await;
    assert_eq!(me["username"], "alice");

    let mut other = broker.client();
    let (s, wrong) = login_status(&mut other, "alice", "nope").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s2, unknown) = login_status(&mut other, "nobody", "whatever").await;
    assert_eq!(s2, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong, unknown, "wrong password and unknown user must read the same");
    assert_eq!(wrong["error"], "invalid username or password");
    // An empty password would be an unauthenticated bind, which slapd answers with success.
    let (s, _) = login_status(&mut other, "alice", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(other.get("/api/v1/me").await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // Malformed bodies are 400 with a message, never a panic.
    for body in [
        "{",
        "[]",
        r#"{"username":"alice"}"#,
        r#"{"username":1,"password":"x"}"#,
        r#"{"username":"a","password":"b","x":1}"#,
    ] {
        let r = other
            .http
            .post(format!("{}/api/v1/auth/login", broker.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("invalid request body"), "{v}");
    }

    // Every attempt is audited, failures included (read as the administrator).
    let mut admin = broker.client();
    admin.login_ok("carol", "carol-pw").await;
    let events = admin.get_json("/api/v1/admin/audit?action=login.failed", StatusCode::OK).await;
    assert!(events.as_array().unwrap().len() >= 3, "{events}");
    assert!(events.as_array().unwrap().iter().all(|e| e["client_addr"] == "127.0.0.1"));
}

#[tokio::test]
async fn hostile_and_international_usernames() {
    if skip(Group::Ldap, "hostile_and_international_usernames") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    // Filter metacharacters must not widen the search (which would match alice or everyone).
    for user in [
        "*",
        "al*",
        "*)(uid=*",
        "alice)(|(uid=*",
        "alice\\",
        "\\2a",
        "(",
        ")",
        "a\0b",
        "alice\0",
        "élodie",
        &"x".repeat(300),
    ] {
        let mut c = broker.client();
        let (s, body) = login_status(&mut c, user, "alice-pw").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{user:?}: {body}");
    }
    let mut c = broker.client();
    let body = c.login_ok("émile", "émile-pw").await;
    assert_eq!(body["user"]["username"], "émile");
    let body = broker.client().login_ok("frank", "p\"a's ü ß").await;
    assert_eq!(body["user"]["username"], "frank");
    // The directory's canonical spelling wins.
    let body = broker.client().login_ok("ALICE", "alice-pw").await;
    assert_eq!(body["user"]["username"], "alice");
    // The service stayed healthy throughout.
    let h: Value =
        reqwest::get(format!("{}/healthz", broker.url)).await.unwrap().json().await.unwrap();
    assert_eq!(h["status"], "ok");
}

#[tokio::test]
async fn directory_down_or_hung_is_503_not_a_hang() {
    if skip(Group::Ldap, "directory_down_or_hung_is_503_not_a_hang") {
        return;
    }
    // Nothing listens on this port.
    let closed = atrium_tests::free_port();
    let broker =
        Broker::start(BrokerOptions::new(&format!("ldap://127.0.0.1:{closed}"))).await.unwrap();
    let mut c = broker.client();
    let (s, body) = login_status(&mut c, "alice", "alice-pw").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("directory is unavailable"), "{body}");
    drop(broker);

    // A directory that stops answering (SIGSTOP) mid-way.
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    slapd.pause();
    let started = Instant::now();
    let mut c = broker.client();
    let (s, _) = login_status(&mut c, "bob", "bob-pw").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // timeout_secs = 2 in the harness: the answer comes after the timeout, not never.
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    slapd.resume();
    // And it recovers without a restart.
    let mut ok = false;
    for _ in 0..50 {
        if login_status(&mut broker.client(), "bob", "bob-pw").await.0 == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "sign-in did not recover after the directory came back");

    // The directory is killed (kill -9): sign-ins get a clear 503, running sessions go on.
    // SAFETY: kill(2) on the test's own slapd.
    unsafe { libc::kill(i32::try_from(slapd.pid()).unwrap(), libc::SIGKILL) };
    let (s, body) = login_status(&mut broker.client(), "bob", "bob-pw").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("directory is unavailable"), "{body}");
    alice.get_json("/api/v1/pools", StatusCode::OK).await;
    alice.get_json("/api/v1/me", StatusCode::OK).await;
}

#[tokio::test]
async fn failed_sign_ins_lock_out_username_and_address() {
    if skip(Group::Ldap, "failed_sign_ins_lock_out_username_and_address") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[login]\nmax_failures_per_user = 3\nmax_failures_per_address = 100\nwindow_secs = 60\nlockout_secs = 60\n".into();
    let broker = Broker::start(opts).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            login_status(&mut broker.client(), "bob", "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Locked: even the right password is refused, with Retry-After.
    let r = broker.client().login("bob", "bob-pw").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("too many failed sign-ins"), "{body}");
    // The lockout is per username (case folded)...
    assert_eq!(
        login_status(&mut broker.client(), "BOB", "bob-pw").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(login_status(&mut broker.client(), "alice", "alice-pw").await.0, StatusCode::OK);
    // Spaces and case do not make a new account to guess at: the directory ignores them.
    for variant in [" carol", "CAROL  ", "car  OL"] {
        assert_eq!(
            login_status(&mut broker.client(), variant, "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // " carol" and "CAROL  " counted against carol ("car  OL" is another name): one more does it.
    assert_eq!(
        login_status(&mut broker.client(), "carol", "wrong").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_status(&mut broker.client(), "carol", "carol-pw").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(broker);

    // Per client address: failures on any names add up.
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[login]\nmax_failures_per_user = 100\nmax_failures_per_address = 4\nwindow_secs = 60\nlockout_secs = 60\n".into();
    let broker = Broker::start(opts).await.unwrap();
    for u in ["x1", "x2", "x3", "x4"] {
        assert_eq!(
            login_status(&mut broker.client(), u, "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_status(&mut broker.client(), "alice", "alice-pw").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_burst_of_parallel_guesses_cannot_pass_the_limit() {
    if skip(Group::Ldap, "a_burst_of_parallel_guesses_cannot_pass_the_limit") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[login]\nmax_failures_per_user = 3\nmax_failures_per_address = 1000\nwindow_secs = 60\nlockout_secs = 60\n".into();
    let broker = Broker::start(opts).await.unwrap();
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let mut c = broker.client();
            tokio::spawn(async move { login_status(&mut c, "bob", &format!("guess-{i}")).await.0 })
        })
        .collect();
    let mut results = Vec::new();
    for g in guesses {
        results.push(g.await.unwrap());
    }
    let checked = results.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert_eq!(checked, 3, "exactly the limit reached the directory: {results:?}");
    assert!(
        results
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(
        login_status(&mut broker.client(), "bob", "bob-pw").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn cookies_csrf_and_server_side_sign_out() {
    if skip(Group::Ldap, "cookies_csrf_and_server_side_sign_out") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let mut c = broker.client();
    c.login_ok("alice", "alice-pw").await;
    let token = c.csrf.clone().unwrap();

    // The raw session cookie, to replay after sign-out.
    let jar_cookie = {
        let r = broker.client().login("alice", "alice-pw").await.unwrap();
        r.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    };

    // No header, a wrong header: 403, nothing changes.
    let no_header = c.http.post(format!("{}/api/v1/auth/logout", broker.url)).send().await.unwrap();
    assert_eq!(no_header.status(), StatusCode::FORBIDDEN);
    let wrong = c
        .http
        .post(format!("{}/api/v1/auth/logout", broker.url))
        .header("X-CSRF-Token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    // A token from another session (cookie tossing: an attacker sets both the cookie and the
    // header to a pair of their own) does not fit this session's token.
    let mut other = broker.client();
    other.login_ok("bob", "bob-pw").await;
    let foreign = other.csrf.clone().unwrap();
    let own_session =
        jar_cookie.split("; ").find(|c| c.starts_with("atrium_session=")).unwrap().to_owned();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/logout", broker.url))
        .header("X-CSRF-Token", &foreign)
        .header("cookie", format!("{own_session}; atrium_csrf={foreign}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(c.get("/api/v1/me").await.unwrap().status(), StatusCode::OK);
    // GET needs no CSRF header.
    let r = c.http.get(format!("{}/api/v1/me", broker.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = c
        .http
        .post(format!("{}/api/v1/auth/logout", broker.url))
        .header("X-CSRF-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(c.get("/api/v1/me").await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // The other sign-in's cookie still works until it signs out; a revoked one never again.
    let replay = reqwest::Client::new();
    let r = replay
        .get(format!("{}/api/v1/me", broker.url))
        .header("cookie", &jar_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csrf_of_jar =
        jar_cookie.split("; ").find_map(|c| c.strip_prefix("atrium_csrf=")).unwrap().to_owned();
    let r = replay
        .post(format!("{}/api/v1/auth/logout", broker.url))
        .header("cookie", &jar_cookie)
        .header("X-CSRF-Token", &csrf_of_jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = replay
        .get(format!("{}/api/v1/me", broker.url))
        .header("cookie", &jar_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a signed-out session must not come back");
}

fn session_token(cookies: &str) -> String {
    cookies.split("; ").find_map(|c| c.strip_prefix("atrium_session=")).unwrap().to_owned()
}

#[tokio::test]
async fn tampered_expired_and_unsigned_tokens_are_refused() {
    if skip(Group::Ldap, "tampered_expired_and_unsigned_tokens_are_refused") {
        return;
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let r = broker.client().login("alice", "alice-pw").await.unwrap();
    let cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let token = session_token(&cookies);
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 900);
    let me = |tok: String| {
        let url = format!("{}/api/v1/me", broker.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .header("cookie", format!("atrium_session={tok}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(me(token.clone()).await, StatusCode::OK);

    // Tampered: another user in the payload, same signature.
    claims["sub"] = json!("carol");
    let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
    assert_eq!(me(forged).await, StatusCode::UNAUTHORIZED);
    // alg: none.
    let none = format!(
        "{}.{}.",
        b64.encode(json!({"alg":"none","kid":header["kid"]}).to_string()),
        b64.encode(claims.to_string())
    );
    assert_eq!(me(none).await, StatusCode::UNAUTHORIZED);
    // HS256 keyed with the public key (algorithm confusion).
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", broker.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let hs =
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()))
            .unwrap();
    assert_eq!(me(hs).await, StatusCode::UNAUTHORIZED);
    // Expired, but signed with the broker's own key (read from its key folder).
    // (The signing key is the .pem file; the folder also holds mfa.key.)
    let key_file = std::fs::read_dir(broker.keys_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pem"))
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(key_file).unwrap()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let mut old: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    old["iat"] = json!(now - 4000);
    old["exp"] = json!(now - 3000);
    let expired = jsonwebtoken::encode(&h, &old, &key).unwrap();
    assert_eq!(me(expired).await, StatusCode::UNAUTHORIZED);
    // The same key with fresh times is accepted: the refusal above was the expiry.
    old["iat"] = json!(now);
    old["exp"] = json!(now + 60);
    assert_eq!(me(jsonwebtoken::encode(&h, &old, &key).unwrap()).await, StatusCode::OK);
    // Garbage.
    assert_eq!(me("garbage".into()).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn groups_from_member_of_or_from_a_group_search() {
    if skip(Group::Ldap, "groups_from_member_of_or_from_a_group_search") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let body = broker.client().login_ok("carol", "carol-pw").await;
    let groups = body["user"]["groups"].as_array().unwrap().clone();
    assert_eq!(groups, vec![json!("atrium-admins"), json!("atrium-users")]);
    assert_eq!(body["user"]["is_admin"], true);
    drop(broker);

    // Search mode finds groupOfNames/member and posixGroup/memberUid alike.
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[ldap]\ngroup_mode = \"search\"\n".into();
    let broker = Broker::start(opts).await.unwrap();
    let body = broker.client().login_ok("alice", "alice-pw").await;
    let groups = body["user"]["groups"].as_array().unwrap().clone();
    assert_eq!(groups, vec![json!("atrium-users"), json!("developers")]);
    let body = broker.client().login_ok("dave", "dave-pw").await;
    assert_eq!(body["user"]["groups"], json!([]));
    drop(broker);

    // A group of the right name outside group_base grants nothing (memberOf mode).
    slapd
        .apply("dn: ou=self-service,dc=example,dc=com\nobjectClass: organizationalUnit\nou: self-service\n\n\
                dn: cn=atrium-admins,ou=self-service,dc=example,dc=com\nobjectClass: groupOfNames\ncn: atrium-admins\n\
                member: uid=dave,ou=people,dc=example,dc=com\n")
        .unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let body = broker.client().login_ok("dave", "dave-pw").await;
    assert_eq!(body["user"]["groups"], json!([]), "{body}");
    assert_eq!(body["user"]["is_admin"], false);
}

#[tokio::test]
async fn active_directory_attributes_by_configuration_alone() {
    if skip(Group::Ldap, "active_directory_attributes_by_configuration_alone") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    slapd.ldapmodify(&workspace_root().join("tests/fixtures/ad-users.ldif")).unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml = "[ldap]\nuser_filter = \"(&(objectClass=atriumAdUser)(sAMAccountName={username}))\"\nusername_attribute = \"sAMAccountName\"\ndisplay_name_attribute = \"displayName\"\nmember_of_attribute = \"memberOf\"\n".into();
    let broker = Broker::start(opts).await.unwrap();
    let body = broker.client().login_ok("ghopper", "grace-pw").await;
    assert_eq!(body["user"]["username"], "ghopper");
    assert_eq!(body["user"]["display_name"], "Grace Hopper (AD)");
    assert!(body["user"]["groups"].as_array().unwrap().contains(&json!("atrium-users")));
    // uid-based names do not match the AD filter.
    assert_eq!(
        login_status(&mut broker.client(), "alice", "alice-pw").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn ldaps_and_starttls_with_a_ca_file() {
    if skip(Group::Ldap, "ldaps_and_starttls_with_a_ca_file") {
        return;
    }
    let slapd = Slapd::start_with(true).unwrap();
    let ca = slapd.ca_file.clone().unwrap();
    let mut opts = BrokerOptions::new(&slapd.ldaps_url().unwrap());
    opts.extra_toml = format!("[ldap]\nca_file = {:?}\n", ca.display().to_string());
    let broker = Broker::start(opts).await.unwrap();
    broker.client().login_ok("alice", "alice-pw").await;
    drop(broker);

    let mut opts = BrokerOptions::new(&slapd.url());
    opts.extra_toml =
        format!("[ldap]\nstarttls = true\nca_file = {:?}\n", ca.display().to_string());
    let broker = Broker::start(opts).await.unwrap();
    broker.client().login_ok("bob", "bob-pw").await;
    drop(broker);

    // Without the CA, the certificate is not trusted: no sign-in over an unverified channel.
    let broker = Broker::start(BrokerOptions::new(&slapd.ldaps_url().unwrap())).await.unwrap();
    assert_eq!(
        login_status(&mut broker.client(), "alice", "alice-pw").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn keys_are_published_and_rotate_without_signing_anyone_out() {
    if skip(Group::Ldap, "keys_are_published_and_rotate_without_signing_anyone_out") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let jwks = |url: String| async move {
        reqwest::get(format!("{url}/.well-known/jwks.json"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = jwks(broker.url.clone()).await;
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    let k = &before["keys"][0];
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert!(k.get("d").is_none(), "no private part in the JWKS");
    // (The signing key is the .pem file; the folder also holds mfa.key.)
    let key_file = std::fs::read_dir(broker.keys_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pem"))
        .unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let mut c = broker.client();
    c.login_ok("alice", "alice-pw").await;
    let out = std::process::Command::new(bin_path("atrium-broker"))
        .arg("--config")
        .arg(broker.dir().join("broker.toml"))
        .arg("rotate-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    broker.signal(libc::SIGHUP);
    let mut n = 0;
    for _ in 0..50 {
        n = jwks(broker.url.clone()).await["keys"].as_array().unwrap().len();
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 2, "old and new keys are both published");
    // The session signed by the old key still works.
    assert_eq!(c.get("/api/v1/me").await.unwrap().status(), StatusCode::OK);
    // New sign-ins use the new key.
    let r = broker.client().login("bob", "bob-pw").await.unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("atrium_session="))
        .unwrap();
    let tok = cookie.trim_start_matches("atrium_session=").split(';').next().unwrap().to_owned();
    let kid = jsonwebtoken::decode_header(&tok).unwrap().kid.unwrap();
    assert_ne!(Some(kid.as_str()), before["keys"][0]["kid"].as_str());
}

#[tokio::test]
async fn a_bad_policy_file_stops_the_start_and_a_bad_reload_keeps_the_old_policies() {
    if skip(
        Group::Ldap,
        "a_bad_policy_file_stops_the_start_and_a_bad_reload_keeps_the_old_policies",
    ) {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let dir = policies_with(
        "broken",
        "// line 1\npermit(principal, action, resource)\n  when { context.nosuch > 1 };\n",
    );
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(dir.path().to_owned());
    let e = Broker::start(opts.clone()).await.expect_err("a bad policy must stop the start");
    let msg = e.to_string();
    assert!(msg.contains("broken.cedar:2:") || msg.contains("broken.cedar:3:"), "{msg}");

    std::fs::remove_file(dir.path().join("broken.cedar")).unwrap();
    let broker = Broker::start(opts).await.unwrap();
    // Now break the defaults and reload: the old policies stay in force.
    std::fs::write(dir.path().join("default.cedar"), "this is not cedar").unwrap();
    broker.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = broker.client();
    c.login_ok("carol", "carol-pw").await;
    assert_eq!(c.get("/api/v1/admin/pools").await.unwrap().status(), StatusCode::OK);
    assert!(broker.log().contains("policy reload refused"), "{}", broker.log());
}
