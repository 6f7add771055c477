//! The policy folder's loading, decisions and the capabilities they grant.

use super::*;

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn temp_with(extra: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("atrium-pol-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(policies_dir().join(SCHEMA_FILE), dir.join(SCHEMA_FILE)).unwrap();
    for (name, text) in extra {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

fn ctx(ip: &str, now_secs: i64) -> RequestContext {
    RequestContext { client_ip: ip.parse().unwrap(), now_secs }
}

const POOL: Resource<'static> =
    Resource::Pool { name: "finance", kind: "floating", image: "console" };
// 2026-11-26 is a Thursday; 10:00 UTC.
const THU_10: i64 = 1_795_687_200;

#[test]
fn default_policies_load_and_decide() {
    let p = Policies::load(&policies_dir(), "+00:00").unwrap();
    let users = vec!["atrium-users".to_owned()];
    let admins = vec!["atrium-admins".to_owned()];
    let alice = Principal { username: "alice", groups: &users };
    let root = Principal { username: "root", groups: &admins };
    let c = ctx("127.0.0.1", THU_10);
    assert!(p.is_allowed(&alice, Action::Connect, POOL, &c));
    assert!(!p.is_allowed(&alice, Action::Administer, Resource::Broker, &c));
    assert!(p.is_allowed(&root, Action::Administer, Resource::Broker, &c));
    assert!(!p.is_allowed(&root, Action::Connect, POOL, &c));
    let caps = p.capabilities(&alice, POOL, &c);
    assert!(caps.clipboard_copy_out && caps.clipboard_paste_in && !caps.file_upload);
    let nobody = Principal { username: "eve", groups: &[] };
    assert!(!p.is_allowed(&nobody, Action::Connect, POOL, &c));
}

#[test]
fn address_and_time_are_policy() {
    let example = std::fs::read_to_string(policies_dir().join("examples.cedar.example")).unwrap();
    let default = std::fs::read_to_string(policies_dir().join("default.cedar")).unwrap();
    let dir = temp_with(&[("default.cedar", &default), ("examples.cedar", &example)]);
    let p = Policies::load(&dir, "+00:00").unwrap();
    let users = vec!["atrium-users".to_owned()];
    let alice = Principal { username: "alice", groups: &users };
    assert!(p.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10)));
    assert!(!p.is_allowed(&alice, Action::Connect, POOL, &ctx("192.168.1.2", THU_10)));
    assert!(!p.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10 + 10 * 3600)));
    assert!(
        !p.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10 + 2 * 86_400)),
        "Saturday"
    );
    let other = Resource::Pool { name: "general", kind: "floating", image: "console" };
    assert!(p.is_allowed(&alice, Action::Connect, other, &ctx("192.168.1.2", THU_10)));
    // The offset moves the clock policies see: 10:00 UTC is 19:00 at +09:00.
    let tokyo = Policies::load(&dir, "+09:00").unwrap();
    assert!(!tokyo.is_allowed(&alice, Action::Connect, POOL, &ctx("10.1.2.3", THU_10)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn upload_rules_come_from_the_permits_that_allow_uploads() {
    let limited = "@id(\"staff\") @max_file_mb(\"500\") @max_session_mb(\"2000\") \
                   @file_types(\"pdf, image, office\") permit(principal in \
                   Atrium::Group::\"staff\", action == Atrium::Action::\"file_upload\", resource);\n\
                   @id(\"temps\") @max_file_mb(\"20\") @scan(\"off\") @file_types(\"text,pdf\") \
                   permit(principal in \
                   Atrium::Group::\"temps\", action == Atrium::Action::\"file_upload\", resource);\n\
                   @id(\"out\") @max_file_mb(\"7\") @scan(\"off\") permit(principal in \
                   Atrium::Group::\"temps\", action == Atrium::Action::\"file_download\", resource);\n";
    let dir = temp_with(&[("up.cedar", limited)]);
    let p = Policies::load(&dir, "+00:00").unwrap();
    let c = ctx("127.0.0.1", THU_10);
    let caps = |groups: &[&str]| {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        p.capabilities(&Principal { username: "u", groups: &groups }, POOL, &c)
    };
    let staff = caps(&["staff"]);
    assert!(staff.file_upload && staff.scan_files);
    assert_eq!(staff.upload_max_bytes, 500 << 20);
    let temp = caps(&["temps"]);
    assert!(temp.file_upload && !temp.scan_files, "scanning off where the permit says so");
    assert!(temp.file_download && !temp.scan_downloads && temp.download_max_bytes == 7 << 20);
    assert!(!staff.file_download && staff.scan_downloads, "downloads have rules of their own");
    // Both apply: the smaller limit, and scanning unless every permit turns it off.
    let both = caps(&["staff", "temps"]);
    assert_eq!(both.upload_max_bytes, 20 << 20);
    assert!(both.scan_files);
    assert!(!caps(&["others"]).file_upload);
    // Kinds: only those every such permit names; a session total likewise the smallest.
    use atrium_protocol::filetype::{Kind, allows};
    assert!(allows(staff.upload_types, Kind::Office) && !allows(staff.upload_types, Kind::Program));
    assert_eq!(staff.upload_session_max_bytes, 2000 << 20);
    assert_eq!(both.upload_types, Kind::Pdf.bit(), "pdf is what both permits allow");
    assert_eq!((temp.download_types, temp.upload_session_max_bytes), (0, 0), "no annotation: any");
    for bad in [
        "@file_types(\"pdf, movies\")",
        "@max_session_mb(\"-1\")",
        "@max_file_mb(\"0\")",
        "@max_file_mb(\"lots\")",
        "@scan(\"maybe\")",
        "@max_bytes(\"1048577\")",
        "@images(\"no\")",
    ] {
        let text = format!("{bad} permit(principal, action, resource);\n");
        std::fs::write(dir.join("up.cedar"), text).unwrap();
        let e = Policies::load(&dir, "+00:00").expect_err(bad).to_string();
        assert!(
            e.contains("up.cedar")
                && e.contains(bad.trim_start_matches('@').split('(').next().unwrap()),
            "{e}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn clipboard_limits_come_from_the_permits_that_allow_it() {
    let text = "@id(\"short\") @max_bytes(\"1024\") @images(\"off\") permit(principal in \
                Atrium::Group::\"temps\", action == Atrium::Action::\"clipboard_copy_out\", resource);\n";
    let dir = temp_with(&[
        ("default.cedar", &std::fs::read_to_string(policies_dir().join("default.cedar")).unwrap()),
        ("clip.cedar", text),
    ]);
    let p = Policies::load(&dir, "+00:00").unwrap();
    let c = ctx("127.0.0.1", THU_10);
    let groups = vec!["atrium-users".to_owned()];
    let user = p.capabilities(&Principal { username: "u", groups: &groups }, POOL, &c);
    assert!(user.clipboard_copy_out && user.clipboard_paste_in);
    assert_eq!((user.clipboard_out_max_bytes, user.clipboard_in_max_bytes), (0, 0));
    assert!(user.clipboard_out_images && user.clipboard_in_images, "images: on unless said");
    let groups = vec!["atrium-users".to_owned(), "temps".to_owned()];
    let temp = p.capabilities(&Principal { username: "t", groups: &groups }, POOL, &c);
    assert_eq!(temp.clipboard_out_max_bytes, 1024, "the smaller limit of the two permits");
    assert_eq!(temp.clipboard_in_max_bytes, 0);
    assert!(!temp.clipboard_out_images, "one permit that applies says text only");
    assert!(temp.clipboard_in_images, "pasting in: no permit says so");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_file_is_named_with_its_line() {
    let dir = temp_with(&[
        ("ok.cedar", "permit(principal, action, resource);\n"),
        ("bad.cedar", "\n\npermit(principal, action, resource) when { context.nope == 1 };\n"),
    ]);
    let e = Policies::load(&dir, "+00:00").expect_err("must fail").to_string();
    assert!(e.contains("bad.cedar:3:"), "{e}");
    std::fs::write(dir.join("bad.cedar"), "permit(principal,\n action resource);").unwrap();
    let e = Policies::load(&dir, "+00:00").expect_err("must fail").to_string();
    assert!(e.contains("bad.cedar:2:"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reload_keeps_old_policies_on_error() {
    let default = std::fs::read_to_string(policies_dir().join("default.cedar")).unwrap();
    let dir = temp_with(&[("default.cedar", &default)]);
    let p = Policies::load(&dir, "+00:00").unwrap();
    std::fs::write(dir.join("default.cedar"), "garbage").unwrap();
    assert!(p.reload().is_err());
    let users = vec!["atrium-users".to_owned()];
    assert!(p.is_allowed(
        &Principal { username: "a", groups: &users },
        Action::Connect,
        POOL,
        &ctx("127.0.0.1", THU_10)
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn offsets_parse() {
    assert_eq!(parse_utc_offset("+01:30"), Ok(5400));
    assert_eq!(parse_utc_offset("-05:00"), Ok(-18000));
    assert!(parse_utc_offset("01:00").is_err());
    assert!(parse_utc_offset("+25:00").is_err());
}
