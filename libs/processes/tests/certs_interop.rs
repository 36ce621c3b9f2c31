//! Certs Backup / Restore against OpenSSL: the PFX and P7B Ferry writes are read by
//! `openssl pkcs12` / `openssl pkcs7`; PFX and P7B files OpenSSL makes are restored; a wrong
//! password and a corrupt PFX fail clearly.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_processes::certs::{
    CertsBackup, CertsError, OTHER_FILE, PERSONAL_FILE, fingerprint, plan_restore, read_p7b, read_pfx,
    write_p7b, write_pfx,
};
use ferry_processes::keys::{PersonalCert, Secret};
use ferry_processes::testing::Fixture;
use ferry_processes::{MemoryKeys, run_steps};

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A self-signed certificate and key made by OpenSSL: `<name>.pem` (cert), `<name>.key`
/// (PKCS#8 PEM), `<name>.der` (cert DER), `<name>.p8` (key PKCS#8 DER).
struct Made {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    key_pem: String,
}

fn make(dir: &Path, name: &str, cn: &str, rsa: bool) -> Made {
    let alg: &[&str] = if rsa {
        &["-newkey", "rsa:2048"]
    } else {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    let mut args = vec!["req", "-x509", "-nodes", "-days", "30", "-subj"];
    let subj = format!("/CN={cn}");
    let (key, pem, der, p8) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("{name}.der"),
        format!("{name}.p8"),
    );
    args.push(&subj);
    args.extend(alg);
    args.extend(["-keyout", &key, "-out", &pem]);
    openssl(dir, &args);
    openssl(dir, &["x509", "-in", &pem, "-outform", "DER", "-out", &der]);
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &p8,
        ],
    );
    Made {
        cert_der: std::fs::read(dir.join(&der)).expect("der"),
        key_der: std::fs::read(dir.join(&p8)).expect("p8"),
        key_pem: openssl(dir, &["pkey", "-in", &key]),
    }
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn the_backup_is_read_by_openssl_pkcs12_and_pkcs7() {
    let tmp = tempfile::tempdir().expect("temp");
    let d = tmp.path();
    let client = make(d, "client", "ferry-client", false);
    let rsa = make(d, "rsa", "ferry-rsa-client", true);
    let partner = make(d, "partner", "partner-bank", false);
    let other = make(d, "other", "other-bank", false);
    let keys = MemoryKeys {
        personal: vec![
            PersonalCert {
                chain: vec![client.cert_der.clone()],
                key_pkcs8: client.key_der.clone(),
            },
            PersonalCert {
                chain: vec![rsa.cert_der.clone()],
                key_pkcs8: rsa.key_der.clone(),
            },
        ],
        other: vec![partner.cert_der.clone(), other.cert_der.clone()],
        ..Default::default()
    };
    let fx = Fixture::new();
    let ctx = fx.ctx(&keys);
    let backup = CertsBackup::new(Secret::new("S3cret!")).expect("valid");
    let run = run_steps(&[&backup], vec![], &ctx);
    let files = run.files.expect("backed up");
    let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
    assert_eq!(names, [PERSONAL_FILE, OTHER_FILE]);
    assert_eq!(
        run.reports[0].log,
        "2 personal certificates, 2 other certificates\n"
    );

    let pfx = files[0].path().to_str().expect("utf8");
    let info = openssl(
        d,
        &["pkcs12", "-info", "-nodes", "-passin", "pass:S3cret!", "-in", pfx],
    );
    for cn in ["ferry-client", "ferry-rsa-client"] {
        assert!(
            info.contains(&format!("CN = {cn}")) || info.contains(&format!("CN={cn}")),
            "{info}"
        );
    }
    assert!(
        info.contains(client.key_pem.trim()),
        "the EC key is in the PFX:\n{info}"
    );
    assert!(info.contains(rsa.key_pem.trim()), "the RSA key is in the PFX");
    // The wrong password is refused by OpenSSL too.
    let wrong = Command::new("openssl")
        .args(["pkcs12", "-info", "-nodes", "-passin", "pass:nope", "-in", pfx])
        .output()
        .expect("run openssl");
    assert!(!wrong.status.success());

    let p7b = files[1].path().to_str().expect("utf8");
    let certs = openssl(d, &["pkcs7", "-inform", "DER", "-in", p7b, "-print_certs"]);
    for cn in ["partner-bank", "other-bank"] {
        assert!(
            certs.contains(&format!("CN = {cn}")) || certs.contains(&format!("CN={cn}")),
            "{certs}"
        );
    }
    assert_eq!(certs.matches("-----BEGIN CERTIFICATE-----").count(), 2);
}

#[test]
fn pfx_and_p7b_files_made_by_openssl_are_restored_once() {
    let tmp = tempfile::tempdir().expect("temp");
    let d = tmp.path();
    let client = make(d, "client", "ferry-client", true);
    let partner = make(d, "partner", "partner-bank", false);
    let other = make(d, "other", "other-bank", false);
    // OpenSSL 3's default (AES-256, PBKDF2, HMAC-SHA-256) and the older 3DES/SHA-1 form many
    // Windows exports still use.
    for (file, extra) in [
        ("modern.pfx", &[][..]),
        (
            "legacy.pfx",
            &[
                "-certpbe",
                "PBE-SHA1-3DES",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ][..],
        ),
    ] {
        let mut args = vec![
            "pkcs12",
            "-export",
            "-inkey",
            "client.key",
            "-in",
            "client.pem",
            "-passout",
            "pass:pw",
            "-out",
            file,
        ];
        args.extend(extra);
        openssl(d, &args);
        let (personal, loose) =
            read_pfx(&std::fs::read(path(d, file)).expect("read"), &Secret::new("pw")).expect(file);
        assert_eq!(personal.len(), 1, "{file}");
        assert!(loose.is_empty());
        assert_eq!(
            personal[0].chain,
            std::slice::from_ref(&client.cert_der),
            "{file}"
        );
        assert_eq!(personal[0].key_pkcs8, client.key_der, "{file}");

        let (plan, report) = plan_restore(personal.clone(), vec![], &HashSet::new(), &HashSet::new());
        assert_eq!(report.added, [fingerprint(&client.cert_der)]);
        assert_eq!(plan.personal, personal);
        let have: HashSet<String> = report.added.iter().cloned().collect();
        let (plan, report) = plan_restore(personal, vec![], &have, &HashSet::new());
        assert!(plan.personal.is_empty(), "restoring again adds nothing");
        assert_eq!(report.already_present, [fingerprint(&client.cert_der)]);
    }

    openssl(
        d,
        &[
            "crl2pkcs7",
            "-nocrl",
            "-certfile",
            "partner.pem",
            "-certfile",
            "other.pem",
            "-outform",
            "DER",
            "-out",
            "b.p7b",
        ],
    );
    openssl(
        d,
        &[
            "crl2pkcs7",
            "-nocrl",
            "-certfile",
            "partner.pem",
            "-certfile",
            "other.pem",
            "-out",
            "b.pem.p7b",
        ],
    );
    for file in ["b.p7b", "b.pem.p7b"] {
        let mut got = read_p7b(&std::fs::read(path(d, file)).expect("read")).expect(file);
        got.sort();
        let mut want = vec![partner.cert_der.clone(), other.cert_der.clone()];
        want.sort();
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn a_wrong_password_and_a_corrupt_pfx_fail_clearly() {
    let tmp = tempfile::tempdir().expect("temp");
    let d = tmp.path();
    make(d, "client", "ferry-client", false);
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "client.key",
            "-in",
            "client.pem",
            "-passout",
            "pass:right",
            "-out",
            "a.pfx",
        ],
    );
    let bytes = std::fs::read(path(d, "a.pfx")).expect("read");
    assert_eq!(
        read_pfx(&bytes, &Secret::new("wrong")).unwrap_err(),
        CertsError::WrongPassword
    );
    assert_eq!(
        CertsError::WrongPassword.to_string(),
        "wrong password (the PFX's integrity check failed)"
    );
    let e = read_pfx(&bytes[..bytes.len() / 2], &Secret::new("right")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("is not a readable PFX (PKCS#12) file: "),
        "{e}"
    );
    let e = read_pfx(b"this is not a pfx", &Secret::new("right")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("is not a readable PFX (PKCS#12) file: "),
        "{e}"
    );
    let e = read_p7b(b"\x30\x03\x02\x01\x01").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("is not a readable PKCS#7 (.p7b) file: "),
        "{e}"
    );
}

#[test]
fn backup_then_restore_into_empty_stores_gives_identical_stores() {
    let tmp = tempfile::tempdir().expect("temp");
    let d = tmp.path();
    let a = make(d, "a", "node-client-a", false);
    let b = make(d, "b", "node-client-b", true);
    let c = make(d, "c", "partner-c", false);
    let personal = vec![
        PersonalCert {
            chain: vec![a.cert_der.clone()],
            key_pkcs8: a.key_der.clone(),
        },
        PersonalCert {
            chain: vec![b.cert_der.clone()],
            key_pkcs8: b.key_der.clone(),
        },
    ];
    let other = vec![c.cert_der.clone()];
    let pfx = write_pfx(&personal, &Secret::new("pw")).expect("pfx");
    let p7b = write_p7b(&other).expect("p7b");
    let (got_personal, loose) = read_pfx(&pfx, &Secret::new("pw")).expect("read pfx");
    let got_other = read_p7b(&p7b).expect("read p7b");
    let (plan, report) = plan_restore(
        got_personal,
        [loose, got_other].concat(),
        &HashSet::new(),
        &HashSet::new(),
    );
    let fps =
        |v: &[PersonalCert]| -> HashSet<String> { v.iter().map(|p| fingerprint(&p.chain[0])).collect() };
    assert_eq!(fps(&plan.personal), fps(&personal));
    let mut keys_back: Vec<_> = plan.personal.iter().map(|p| p.key_pkcs8.clone()).collect();
    let mut keys_in: Vec<_> = personal.iter().map(|p| p.key_pkcs8.clone()).collect();
    keys_back.sort();
    keys_in.sort();
    assert_eq!(keys_back, keys_in, "the private keys come back byte for byte");
    assert_eq!(plan.other, other);
    assert_eq!(report.added.len(), 3);
    assert!(report.failed.is_empty() && report.already_present.is_empty());
}

#[test]
fn certs_backup_on_one_node_restored_on_another_gives_identical_stores() {
    use ferry_processes::certs::{CertSink, CertsRestore, MemoryCertStore};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("temp");
    let d = tmp.path();
    let a = make(d, "a", "node-client-a", false);
    let b = make(d, "b", "partner-b", true);
    // Node P's stores, read through its key source.
    let p = MemoryKeys {
        personal: vec![PersonalCert {
            chain: vec![a.cert_der.clone()],
            key_pkcs8: a.key_der.clone(),
        }],
        other: vec![b.cert_der.clone()],
        ..Default::default()
    };
    let fx = Fixture::new();
    let ctx_p = fx.ctx(&p);
    let backup = CertsBackup::new(Secret::new("pw")).expect("valid");
    let files = run_steps(&[&backup], vec![], &ctx_p).files.expect("backed up");

    // Node Q's empty stores.
    let q = Arc::new(MemoryCertStore::default());
    let restore = CertsRestore {
        password: Secret::new("pw"),
        sink: q.clone(),
    };
    let ctx_q = fx.ctx(&ferry_processes::NoKeys);
    let lend = |f: &ferry_processes::File| ferry_processes::File::borrowed(f.path(), f.name()).expect("file");
    let run = run_steps(&[&restore], files.iter().map(lend).collect(), &ctx_q);
    run.files.expect("restored");
    assert_eq!(
        q.personal_fingerprints().expect("fps"),
        HashSet::from([fingerprint(&a.cert_der)])
    );
    assert_eq!(
        q.other_fingerprints().expect("fps"),
        HashSet::from([fingerprint(&b.cert_der)])
    );
    assert_eq!(q.personal.lock().expect("lock")[0].key_pkcs8, a.key_der);
    assert!(
        run.reports[0]
            .log
            .contains("CertsPersonal.pfx: added 1, already present 0, failed 0"),
        "{}",
        run.reports[0].log
    );

    // Idempotent: a second restore adds nothing.
    let run = run_steps(&[&restore], files.iter().map(lend).collect(), &ctx_q);
    run.files.expect("restored again");
    assert!(
        run.reports[0]
            .log
            .contains("CertsOtherPeople.p7b: added 0, already present 1, failed 0"),
        "{}",
        run.reports[0].log
    );
    assert_eq!(q.personal.lock().expect("lock").len(), 1);

    // The wrong password fails the file and adds nothing.
    let empty = Arc::new(MemoryCertStore::default());
    let wrong = CertsRestore {
        password: Secret::new("nope"),
        sink: empty.clone(),
    };
    let e = run_steps(&[&wrong], vec![lend(&files[0])], &ctx_q)
        .files
        .expect_err("wrong password");
    assert_eq!(
        e.to_string(),
        "certs-restore \"CertsPersonal.pfx\": wrong password (the PFX's integrity check failed)"
    );
    assert!(empty.personal.lock().expect("lock").is_empty());
}
