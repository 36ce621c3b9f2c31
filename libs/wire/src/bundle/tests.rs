use super::*;

fn parts() -> Vec<Part> {
    PARTS
        .iter()
        .map(|bucket| {
            let mut entries = BTreeMap::new();
            match *bucket {
                topology::KV_CONFIG => {
                    entries.insert("current".into(), config_doc("a", "AAAA").to_vec());
                }
                topology::KV_SCHED => {
                    entries.insert("last.payroll".into(), b"2026-12-02T00:00:00+00:00".to_vec());
                }
                topology::KV_STATE => {
                    for i in 0..50 {
                        let state = crate::FileState {
                            size: i,
                            mtime_ns: 0,
                            sha256: "00".repeat(32),
                            run_id: uuid::Uuid::nil(),
                            delivered_at: DateTime::from_timestamp(1_764_633_600, 0).expect("a valid time"),
                        };
                        entries.insert(format!("nfo.src.file{i:03}_csv"), crate::encode(&state).to_vec());
                    }
                }
                b => {
                    entries.insert("ab12".into(), format!("{{\"store\":\"{b}\"}}").into_bytes());
                }
            }
            Part {
                bucket: bucket.to_string(),
                revision: 7,
                entries,
            }
        })
        .collect()
}

fn config_doc_under(keymat: &str) -> Vec<u8> {
    let mut doc: crate::ConfigDocument = crate::decode(&config_doc("a", "AAAA")).expect("decodes");
    doc.keymat_id = Some(keymat.into());
    crate::encode(&doc).to_vec()
}

fn config_doc(plain: &str, sealed: &str) -> bytes::Bytes {
    use ferry_config::ParamValue;
    let mut config = ferry_config::Config::default();
    config
        .parameters
        .insert("plain".into(), ParamValue::Plain(plain.into()));
    let secret = ferry_config::Secret::try_from(format!("{}km-1:{sealed}", ferry_config::SEALED_PREFIX))
        .expect("well-formed");
    config.parameters.insert("pw".into(), ParamValue::Secure(secret));
    crate::encode(&crate::ConfigDocument {
        applied_at: DateTime::from_timestamp(1_764_633_600, 0).expect("a valid time"),
        applied_by: "me@here".into(),
        source_name: "tasks.toml".into(),
        keymat_id: Some("km-1".into()),
        config,
    })
}

fn bundle_bytes() -> Vec<u8> {
    encode("p", "0.1.0", "km-1", Utc::now(), &parts())
        .expect("encode")
        .1
}

fn error(bytes: &[u8]) -> String {
    verify(bytes).expect_err("refused").to_string()
}

#[test]
fn a_bundle_reads_back_as_written_and_gnu_tar_lists_it() {
    let bytes = bundle_bytes();
    let bundle = verify(&bytes).expect("valid");
    assert_eq!(bundle.manifest.keymat_id, "km-1");
    assert_eq!(bundle.manifest.parts.len(), PARTS.len());
    for part in parts() {
        assert_eq!(bundle.parts[&part.bucket], part);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.tar");
    write(&path, "p", "0.1.0", "km-1", &parts()).expect("write");
    assert_eq!(read(&path).expect("read").parts.len(), PARTS.len());
    let listed = std::process::Command::new("tar")
        .arg("tf")
        .arg(&path)
        .output()
        .expect("tar");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let names = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(names.lines().last(), Some("manifest.json"), "{names}");
    assert!(names.contains("parts/ferry_state.jsonl"), "{names}");
    // No temp file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
}

#[test]
fn every_truncation_is_refused() {
    let bytes = bundle_bytes();
    for len in (0..bytes.len())
        .step_by(97)
        .chain([bytes.len() - 1, bytes.len() - BLOCK])
    {
        assert!(
            verify(&bytes[..len]).is_err(),
            "a copy cut at {len} of {} passed",
            bytes.len()
        );
    }
    assert!(error(&bytes[..bytes.len() - 1]).contains("truncated"));
}

#[test]
fn a_changed_byte_in_a_part_fails_its_digest() {
    let mut bytes = bundle_bytes();
    // The first part's data starts after its header; change a byte inside it.
    bytes[BLOCK + 20] ^= 1;
    let e = error(&bytes);
    assert!(e.contains("part ferry_state") && e.contains("SHA-256"), "{e}");
}

/// Build an archive by hand: `files` in order, then the end marker.
fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        append_entry(&mut out, name, data, Utc::now()).expect("entry");
    }
    out.extend_from_slice(&[0; 2 * BLOCK]);
    out
}

fn parts_and_manifest() -> (Vec<(String, Vec<u8>)>, Manifest) {
    let bundle = verify(&bundle_bytes()).expect("valid");
    let files = PARTS
        .iter()
        .map(|b| (part_path(b), encode_part(&bundle.parts[*b])))
        .collect();
    (files, bundle.manifest)
}

fn with_manifest(files: &[(String, Vec<u8>)], manifest: &Manifest) -> Vec<u8> {
    let mut all: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    all.push((MANIFEST_NAME, serde_json::to_vec(manifest).expect("json")));
    archive(&all)
}

#[test]
fn hostile_manifests_are_refused() {
    let (files, manifest) = parts_and_manifest();
    type Change = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "names part \"ferry_state\" twice",
            Box::new(|m| {
                let first = m.parts[0].clone();
                m.parts.push(first)
            }),
        ),
        (
            "\"ferry_lease\", which is not a bucket",
            Box::new(|m| m.parts[0].name = "ferry_lease".into()),
        ),
        ("at most", Box::new(|m| m.parts[1].bytes = u64::MAX)),
        (
            "does not name part \"ferry_pgp_secret\"",
            Box::new(|m| m.parts.retain(|p| p.name != "ferry_pgp_secret")),
        ),
        ("format 2", Box::new(|m| m.format = 2)),
        (
            "entries, the manifest says",
            Box::new(|m| m.parts[0].entries += 1),
        ),
    ];
    for (expected, change) in cases {
        let mut m = manifest.clone();
        change(&mut m);
        let e = error(&with_manifest(&files, &m));
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
    }
}

#[test]
fn hostile_archives_are_refused() {
    let (files, manifest) = parts_and_manifest();
    // A part twice in the archive.
    let mut twice = files.clone();
    twice.push(files[0].clone());
    assert!(error(&with_manifest(&twice, &manifest)).contains("twice"));
    // A file that is not a part (a path escaping the archive).
    let mut stray = files.clone();
    stray.push(("../../etc/passwd".into(), b"x".to_vec()));
    assert!(error(&with_manifest(&stray, &manifest)).contains("not part of a bundle"));
    // The manifest not last.
    let mut all: Vec<(&str, Vec<u8>)> = vec![(MANIFEST_NAME, serde_json::to_vec(&manifest).expect("json"))];
    all.extend(files.iter().map(|(n, d)| (n.as_str(), d.clone())));
    assert!(error(&archive(&all)).contains("ends with its manifest"));
    // A header whose size runs past the end of the file.
    let mut big = with_manifest(&files, &manifest);
    octal(&mut big[124..136], 0o77777777777);
    big[148..156].copy_from_slice(b"        ");
    let sum: u64 = big[..BLOCK].iter().map(|b| *b as u64).sum();
    big[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    big[154] = 0;
    assert!(error(&big).contains("truncated"), "{}", error(&big));
    // A key a bundle may not write (a node's own scheduler switch), with a matching digest.
    let mut sched = Part {
        bucket: topology::KV_SCHED.into(),
        ..Part::default()
    };
    sched.entries.insert("enabled.s".into(), b"true".to_vec());
    let text = encode_part(&sched);
    let mut files2 = files.clone();
    let at = PARTS
        .iter()
        .position(|b| *b == topology::KV_SCHED)
        .expect("sched");
    files2[at].1 = text.clone();
    let mut m = manifest.clone();
    m.parts[at].bytes = text.len() as u64;
    m.parts[at].sha256 = sha256_hex(&text);
    m.parts[at].entries = 1;
    assert!(error(&with_manifest(&files2, &m)).contains("does not belong in a bundle"));
}

#[test]
fn the_version_rule_is_the_same_version() {
    let bundle = verify(&bundle_bytes()).expect("valid");
    assert!(bundle.manifest.check_version("0.1.0").is_ok());
    let e = bundle
        .manifest
        .check_version("0.2.0")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("made by Ferry 0.1.0, this is Ferry 0.2.0"), "{e}");
}

#[test]
fn compare_lists_each_difference_and_never_a_value_of_a_secret() {
    let bundle = verify(&bundle_bytes()).expect("valid");
    let here = bundle.parts.clone();
    assert_eq!(compare(&here, &here), vec![]);
    let mut there = here.clone();
    there
        .get_mut(topology::KV_STATE)
        .expect("state")
        .entries
        .remove("nfo.src.file000_csv");
    there
        .get_mut(topology::KV_CERTS_OTHER)
        .expect("certs")
        .entries
        .insert("cd34".into(), b"x".to_vec());
    let d = compare(&here, &there);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!((d[0].kind, d[0].name.as_str()), ("certificate", "cd34"));
    assert!(d[0].detail.contains("only there"), "{d:?}");
    assert_eq!(d[1].kind, "new-files-only");
    assert!(
        d[1].detail.contains("50 entries here") && d[1].detail.contains("1 only here"),
        "{d:?}"
    );
}

#[test]
fn compare_shows_a_changed_secret_as_changed_without_its_value() {
    let here = verify(&bundle_bytes()).expect("valid").parts;
    let mut there = here.clone();
    there
        .get_mut(topology::KV_CONFIG)
        .expect("config")
        .entries
        .insert(
            topology::CONFIG_KEY.into(),
            config_doc("b", "BBBBsecretsealedtext").to_vec(),
        );
    let d = compare(&here, &there);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!((d[0].kind, d[0].name.as_str()), ("parameter", "plain"));
    assert!(d[0].detail.contains("here \"a\", there \"b\""), "{d:?}");
    assert_eq!(
        (d[1].kind, d[1].name.as_str(), d[1].detail.as_str()),
        ("parameter", "pw", "different secret")
    );
    assert!(!format!("{d:?}").contains("BBBB"), "{d:?}");
}

#[test]
fn entries_must_decode_as_what_their_bucket_holds() {
    let mut bundle = verify(&bundle_bytes()).expect("valid");
    check_entries(&bundle).expect("the fixture's entries decode");
    let mut bad = |bucket: &str, key: &str, value: &[u8], expected: &str| {
        let saved = bundle.parts[bucket].entries.clone();
        let part = bundle.parts.get_mut(bucket).expect("part");
        part.entries.insert(key.into(), value.to_vec());
        let e = check_entries(&bundle).expect_err("refused").to_string();
        assert!(e.contains(expected), "{bucket}: expected {expected:?} in: {e}");
        bundle.parts.get_mut(bucket).expect("part").entries = saved;
    };
    bad(
        topology::KV_SCHED,
        "last.payroll",
        b"yesterday",
        "not an RFC 3339 time",
    );
    bad(
        topology::KV_STATE,
        "nfo.src.x",
        b"{}",
        "part ferry_state, key \"nfo.src.x\"",
    );
    bad(topology::KV_PGP_SECRET, "ab12", b"\x00binary", "not JSON");
    bad(
        topology::KV_CONFIG,
        "current",
        &config_doc_under("km-2"),
        "sealed under keymat km-2, the manifest says km-1",
    );
}

/// The streaming check (`check_file`, used on a standby's import folder) accepts exactly what
/// `verify` accepts, for every cut, many changed bytes and data after the end marker.
#[test]
fn check_file_agrees_with_verify_on_every_cut_and_changed_byte() {
    let bytes = bundle_bytes();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.tar");
    let agree = |b: &[u8], what: &str| {
        std::fs::write(&path, b).expect("write");
        let (streamed, whole) = (check_file(&path), verify(b));
        assert_eq!(
            streamed.as_ref().map(|_| ()).map_err(|e| e.to_string()).is_ok(),
            whole.is_ok(),
            "{what}: check_file {:?}, verify {:?}",
            streamed.as_ref().err().map(|e| e.to_string()),
            whole.as_ref().err().map(|e| e.to_string())
        );
        if let (Ok(m), Ok(b)) = (streamed, whole) {
            assert_eq!(m, b.manifest, "{what}");
        }
    };
    agree(&bytes, "whole");
    for len in (0..bytes.len())
        .step_by(97)
        .chain([bytes.len() - 1, bytes.len() - BLOCK])
    {
        agree(&bytes[..len], &format!("cut at {len}"));
    }
    for i in (0..bytes.len()).step_by(61) {
        let mut changed = bytes.clone();
        changed[i] ^= 0x20;
        agree(&changed, &format!("byte {i} changed"));
    }
    let mut longer = bytes.clone();
    longer.push(1);
    agree(&longer, "data after the end marker");
    let mut zeros = bytes.clone();
    zeros.extend_from_slice(&[0; 3 * BLOCK]);
    agree(&zeros, "more zero blocks");
}
