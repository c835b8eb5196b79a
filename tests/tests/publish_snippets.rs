//! Node snippets: every Ignition fragment passes the real
//! `ignition-validate`, and every Butane fragment says the same thing as
//! its Ignition twin (parsed with serde_yaml and translated here, on our
//! own, the way Butane's flatcar 1.0.0 variant translates to Ignition
//! 3.3.0).

mod publish_common;

use std::fs;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use publish_common::*;
use releases::{publish_dir, FeedUrl, ManifestSigner, PublishOptions};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};
use sysupdate::Arch;

const CERT: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQk3X\n-----END CERTIFICATE-----\n";

fn feed_with_snippets(work: &Path, s: &dyn ManifestSigner) -> std::path::PathBuf {
    let feed = work.join("feed");
    let mut o = PublishOptions::new(
        FeedUrl::new("https://github.com/o/r/releases/download/{name}/").unwrap(),
        s,
    );
    o.verity_certificate = Some(CERT.to_string());
    let imgs = vec![
        image(work, "k3s", "v1.30.4+k3s1", Arch::X86_64),
        image(work, "k3s", "v1.31.1+k3s1", Arch::X86_64),
        image(work, "k3s", "v1.31.1+k3s1", Arch::Arm64),
        image(work, "wasmtime", "25.0.1", Arch::X86_64),
    ];
    publish_dir(&feed, &imgs, &o).unwrap();
    feed
}

fn snippet_files(feed: &Path, ext: &str, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(feed.join(ext))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn ignition_validate_accepts_every_fragment() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = feed_with_snippets(work.path(), &s);
    let mut n = 0;
    for ext in ["k3s", "wasmtime"] {
        for ign in snippet_files(&feed, ext, ".ign") {
            let out = Command::new("ignition-validate")
                .arg(&ign)
                .output()
                .expect("run ignition-validate (Debian package ignition)");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && text.trim().is_empty(),
                "{}: {text}",
                ign.display()
            );
            n += 1;
        }
    }
    // k3s: default x86-64 + arm64, v1.30 x86-64, v1.31 x86-64 + arm64; wasmtime: 1.
    assert_eq!(n, 6);

    // And the validator is a real check: a broken hash is refused.
    let ign = snippet_files(&feed, "wasmtime", ".ign").remove(0);
    let bad = fs::read_to_string(&ign)
        .unwrap()
        .replace("sha512-", "sha512-00");
    let p = work.path().join("bad.ign");
    fs::write(&p, bad).unwrap();
    assert!(!Command::new("ignition-validate")
        .arg(&p)
        .output()
        .unwrap()
        .status
        .success());
}

/// Decodes a `data:` URL (percent-encoded or base64) the way Ignition does.
fn decode_data_url(u: &str) -> Vec<u8> {
    let rest = u.strip_prefix("data:").expect("a data URL");
    let (meta, payload) = rest.split_once(',').expect("data URL has a comma");
    if meta.ends_with(";base64") {
        return base64::engine::general_purpose::STANDARD
            .decode(payload)
            .expect("base64");
    }
    let b = payload.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&payload[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Butane (flatcar 1.0.0) → Ignition 3.3.0, for the subset snippets use,
/// written independently of the crate: `inline` becomes a data URL (we
/// compare decoded contents), everything else maps key by key.
fn translate(butane: &serde_yaml::Value) -> Value {
    assert_eq!(butane["variant"].as_str(), Some("flatcar"));
    assert_eq!(butane["version"].as_str(), Some("1.0.0"));
    let as_json = |v: &serde_yaml::Value| serde_json::to_value(v).unwrap();
    let mut files = Vec::new();
    for f in butane["storage"]["files"].as_sequence().unwrap() {
        let mut o = Map::new();
        o.insert("path".into(), as_json(&f["path"]));
        o.insert("mode".into(), as_json(&f["mode"]));
        o.insert("overwrite".into(), as_json(&f["overwrite"]));
        let c = &f["contents"];
        let mut contents = Map::new();
        if let Some(inline) = c["inline"].as_str() {
            contents.insert("inline".into(), json!(inline));
        } else {
            contents.insert("source".into(), as_json(&c["source"]));
        }
        if !c["verification"].is_null() {
            contents.insert("verification".into(), as_json(&c["verification"]));
        }
        o.insert("contents".into(), Value::Object(contents));
        files.push(Value::Object(o));
    }
    let links: Vec<Value> = butane["storage"]["links"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(as_json)
        .collect();
    let units: Vec<Value> = butane["systemd"]["units"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(as_json)
        .collect();
    json!({
        "ignition": { "version": "3.3.0" },
        "storage": { "files": files, "links": links },
        "systemd": { "units": units },
    })
}

/// Replaces Ignition's data-URL sources by what they decode to, in the
/// shape `translate` produces.
fn normalise_ignition(mut ign: Value) -> Value {
    for f in ign["storage"]["files"].as_array_mut().unwrap() {
        let src = f["contents"]["source"].as_str().unwrap().to_string();
        if src.starts_with("data:,") {
            let text = String::from_utf8(decode_data_url(&src)).unwrap();
            f["contents"] = json!({ "inline": text });
        }
    }
    ign
}

#[test]
fn butane_and_ignition_fragments_say_the_same() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = feed_with_snippets(work.path(), &s);
    let mut compared = 0;
    for ext in ["k3s", "wasmtime"] {
        for bu in snippet_files(&feed, ext, ".bu") {
            let ign_path = bu.with_extension("ign");
            let butane: serde_yaml::Value =
                serde_yaml::from_str(&fs::read_to_string(&bu).unwrap()).unwrap();
            let ign: Value = serde_json::from_str(&fs::read_to_string(&ign_path).unwrap()).unwrap();
            assert_eq!(
                translate(&butane),
                normalise_ignition(ign.clone()),
                "{}",
                bu.display()
            );
            compared += 1;

            // Field checks against the feed itself.
            let files = ign["storage"]["files"].as_array().unwrap();
            let image = &files[0];
            let path = image["path"].as_str().unwrap();
            let file = path.rsplit('/').next().unwrap();
            assert_eq!(path, format!("/opt/extensions/{ext}/{file}"));
            let bytes = fs::read(feed.join(ext).join(file)).unwrap();
            assert_eq!(
                image["contents"]["verification"]["hash"],
                json!(format!("sha512-{}", hex::encode(Sha512::digest(&bytes))))
            );
            let url = image["contents"]["source"].as_str().unwrap();
            assert_eq!(
                url,
                format!(
                    "https://github.com/o/r/releases/download/{ext}/{}",
                    file.replace('+', "%2B")
                )
            );
            assert_eq!(image["mode"], json!(0o444));
            let link = &ign["storage"]["links"][0];
            assert_eq!(link["path"], json!(format!("/etc/extensions/{ext}.raw")));
            assert_eq!(link["target"], json!(path));
            let by_path = |p: &str| {
                files
                    .iter()
                    .find(|f| f["path"] == json!(p))
                    .unwrap_or_else(|| panic!("no {p}"))
            };
            let stem = bu
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .rsplit_once('-')
                .unwrap()
                .0
                .to_string();
            let stem = stem.strip_suffix("-x86").unwrap_or(&stem).to_string();
            let conf = decode_data_url(
                by_path(&format!("/etc/sysupdate.{ext}.d/{stem}.conf"))["contents"]["source"]
                    .as_str()
                    .unwrap(),
            );
            assert_eq!(
                conf,
                fs::read(feed.join(ext).join(format!("{stem}.conf"))).unwrap()
            );
            let keyring = decode_data_url(
                by_path("/etc/systemd/import-pubring.gpg")["contents"]["source"]
                    .as_str()
                    .unwrap(),
            );
            assert_eq!(keyring, s.public_keyring());
            let cert = decode_data_url(
                by_path(&format!("/etc/verity.d/{ext}.crt"))["contents"]["source"]
                    .as_str()
                    .unwrap(),
            );
            assert_eq!(cert, CERT.as_bytes());
            let units: Vec<&str> = ign["systemd"]["units"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                units,
                [
                    "systemd-sysext.service",
                    &format!("sysext-update-{ext}.service"),
                    &format!("sysext-update-{ext}.timer")
                ]
            );
            let timer = &ign["systemd"]["units"][2];
            assert_eq!(timer["enabled"], json!(true));
            let service = ign["systemd"]["units"][1]["contents"].as_str().unwrap();
            assert!(
                service.contains(&format!("systemd-sysupdate --component={ext} update")),
                "{service}"
            );
            assert!(service.contains("systemd-sysext refresh"), "{service}");
        }
    }
    assert_eq!(compared, 6);
}

#[test]
fn the_mapping_check_notices_a_difference() {
    // Control: change one field of a Butane fragment and the comparison fails.
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = feed_with_snippets(work.path(), &s);
    let bu = snippet_files(&feed, "wasmtime", ".bu").remove(0);
    let text = fs::read_to_string(&bu)
        .unwrap()
        .replace("OnUnitActiveSec=6h", "OnUnitActiveSec=7h");
    let butane: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let ign: Value =
        serde_json::from_str(&fs::read_to_string(bu.with_extension("ign")).unwrap()).unwrap();
    assert_ne!(translate(&butane), normalise_ignition(ign));
}
