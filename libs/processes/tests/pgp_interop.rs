//! PGP interoperability with GnuPG (an isolated `--homedir`): each direction of encrypt+sign /
//! decrypt+verify, sign / verify, and the failures an operator must see clearly.

mod common;

use common::{Gpg, Key};
use ferry_processes::keys::{PgpSecretKey, Secret};
use ferry_processes::openpgp::{Decrypt, Encrypt, Sign, Verify};
use ferry_processes::testing::Fixture;
use ferry_processes::{ErrorClass, File, MemoryKeys, Process, run_steps};

/// GnuPG holds the partner's and Mallory's secret keys and Ferry's public key; Ferry's ring
/// holds its own secret key and the public keys of all three.
struct World {
    gpg: Gpg,
    partner: Key,
    ferry: Key,
    mallory: Key,
    keys: MemoryKeys,
}

fn world() -> World {
    let gpg = Gpg::new();
    let partner = gpg.generate("Partner Bank <partner@example.com>");
    let ferry = gpg.generate("Ferry Node <ferry@example.com>");
    let mallory = gpg.generate("Mallory <mallory@example.com>");
    let keys = MemoryKeys {
        public: vec![
            gpg.export_public(&partner),
            gpg.export_public(&mallory),
            gpg.export_public(&ferry),
        ],
        secret: vec![PgpSecretKey {
            key: gpg.export_secret(&ferry),
            passphrase: Secret::default(),
        }],
        ..Default::default()
    };
    World {
        gpg,
        partner,
        ferry,
        mallory,
        keys,
    }
}

fn content() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

fn gpg_status(w: &World, args: &[&str]) -> (bool, String, String) {
    let out = w
        .gpg
        .cmd()
        .args(["--status-fd", "1"])
        .args(args)
        .output()
        .expect("run gpg");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ferry_encrypts_and_signs_and_gpg_decrypts_and_verifies() {
    let w = world();
    let data = content();
    for armor in [true, false] {
        let fx = Fixture::new();
        let ctx = fx.ctx(&w.keys);
        let enc = Encrypt {
            recipients: vec!["partner@example.com".into()],
            signer: Some(w.ferry.fpr.clone()),
            armor,
            name: None,
        };
        let run = run_steps(&[&enc], vec![fx.input("payroll.csv", &data)], &ctx);
        let files = run.files.expect("encrypted");
        let msg = &files[0];
        assert_eq!(
            msg.name(),
            if armor {
                "payroll.csv.asc"
            } else {
                "payroll.csv.pgp"
            }
        );
        let head = std::fs::read(msg.path()).expect("read");
        assert_eq!(head.starts_with(b"-----BEGIN PGP MESSAGE-----"), armor);

        let out = fx.src_path("decrypted");
        let (ok, status, stderr) = gpg_status(
            &w,
            &[
                "-o",
                out.to_str().expect("utf8"),
                "--decrypt",
                msg.path().to_str().expect("utf8"),
            ],
        );
        assert!(ok, "{status}{stderr}");
        assert!(status.contains("DECRYPTION_OKAY"), "{status}");
        assert!(status.contains(&format!("VALIDSIG {}", w.ferry.fpr)), "{status}");
        assert!(status.contains("GOODSIG"), "{status}");
        assert_eq!(std::fs::read(&out).expect("read"), data);
    }
}

#[test]
fn gpg_encrypts_and_signs_and_ferry_decrypts_and_verifies() {
    // GnuPG's default cipher (AES-256 with these keys) and AES are decrypted by Ferry's own
    // thread (openpgp/open.rs), the other ciphers by rPGP: both paths, armored or not,
    // compressed or not.
    let w = world();
    let data = content();
    let fx = Fixture::new();
    let plain = fx.src_path("plain.bin");
    std::fs::write(&plain, &data).expect("write");
    let cases = [
        (false, None, "report.bin.gpg"),
        (true, None, "report.bin.asc"),
        (false, Some("AES"), "aes128.bin.gpg"),
        (false, Some("AES192"), "aes192.bin.gpg"),
        (false, Some("CAMELLIA256"), "camellia.bin.gpg"),
        (false, Some("TWOFISH"), "twofish.bin.gpg"),
        (false, Some("3DES"), "3des.bin.gpg"),
        (false, Some("CAST5"), "cast5.bin.gpg"),
    ];
    for (i, (armor, cipher, name)) in cases.into_iter().enumerate() {
        let msg = fx.src_path(name);
        let mut args = vec![
            "-z",
            if i % 2 == 0 { "0" } else { "6" },
            "-o",
            msg.to_str().expect("utf8"),
            "-r",
            "ferry@example.com",
            "-u",
            "partner@example.com",
        ];
        if armor {
            args.push("--armor");
        }
        if let Some(cipher) = cipher {
            args.extend(["--cipher-algo", cipher]);
        }
        args.extend(["--encrypt", "--sign", plain.to_str().expect("utf8")]);
        w.gpg.ok(&args);

        let ctx = fx.ctx(&w.keys);
        let dec = Decrypt {
            require_signer: Some("partner@example.com".into()),
            name: None,
            max_bytes: None,
        };
        let run = run_steps(&[&dec], vec![File::borrowed(&msg, name).expect("file")], &ctx);
        let files = run.files.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            files[0].name(),
            name.trim_end_matches(".gpg").trim_end_matches(".asc")
        );
        assert_eq!(std::fs::read(files[0].path()).expect("read"), data, "{name}");
        // The step's hash (computed on the step's thread, not by the file) is the content's.
        assert_eq!(
            files[0].known_sha256().expect("the step reports it"),
            ferry_processes::file::sha256_file(files[0].path()).expect("read"),
            "{name}"
        );
        assert_eq!(
            run.reports[0].log,
            "good signature from \"partner@example.com\"\n"
        );
    }
}

#[test]
fn a_message_for_a_key_not_in_the_ring_fails_clearly_and_leaves_nothing() {
    let w = world();
    let fx = Fixture::new();
    let plain = fx.src_path("plain.txt");
    std::fs::write(&plain, b"for the partner only").expect("write");
    let msg = fx.src_path("msg.gpg");
    w.gpg.ok(&[
        "-o",
        msg.to_str().expect("utf8"),
        "-r",
        "partner@example.com",
        "--encrypt",
        plain.to_str().expect("utf8"),
    ]);
    let ctx = fx.ctx(&w.keys);
    let run = run_steps(
        &[&Decrypt::default()],
        vec![File::borrowed(&msg, "msg.gpg").expect("file")],
        &ctx,
    );
    let e = run.files.expect_err("not for us");
    assert_eq!(
        e.to_string(),
        format!(
            "pgp-decrypt \"msg.gpg\": is encrypted for key {}, which is not in the node's PGP key ring",
            w.partner.enc_keyid
        )
    );
    assert_eq!(e.class(), ErrorClass::BadInput);
    assert!(fx.work_entries().is_empty());
    assert!(msg.exists(), "the source is kept");
}

#[test]
fn a_bad_or_missing_signature_when_one_is_required_fails_and_leaves_no_output() {
    let w = world();
    let fx = Fixture::new();
    let plain = fx.src_path("plain.txt");
    std::fs::write(&plain, vec![b'x'; 2_000_000]).expect("write");
    let p = |n: &str| fx.src_path(n).to_str().expect("utf8").to_string();
    let plain_s = p("plain.txt");
    // Signed by Mallory, whose key Ferry knows, instead of the partner.
    w.gpg.ok(&[
        "-o",
        &p("mallory.gpg"),
        "-r",
        "ferry@example.com",
        "-u",
        "mallory@example.com",
        "--encrypt",
        "--sign",
        &plain_s,
    ]);
    // Not signed at all.
    w.gpg.ok(&[
        "-o",
        &p("unsigned.gpg"),
        "-r",
        "ferry@example.com",
        "--encrypt",
        &plain_s,
    ]);
    let dec = Decrypt {
        require_signer: Some("partner@example.com".into()),
        name: None,
        max_bytes: None,
    };
    let ctx = fx.ctx(&w.keys);
    for (file, want) in [
        (
            "mallory.gpg",
            format!(
                "pgp-decrypt \"mallory.gpg\": has no valid signature from \"partner@example.com\" (signed by key {}",
                w.mallory.fpr
            ),
        ),
        (
            "unsigned.gpg",
            "pgp-decrypt \"unsigned.gpg\": is not signed, and a signature from \"partner@example.com\" is required".to_string(),
        ),
    ] {
        let run = run_steps(&[&dec], vec![File::borrowed(fx.src_path(file), file).expect("file")], &ctx);
        let e = run.files.expect_err(file);
        assert!(e.to_string().starts_with(&want), "{e}\nwant: {want}");
        assert_eq!(e.class(), ErrorClass::BadInput);
        assert!(fx.work_entries().is_empty(), "{file}: {:?}", fx.work_entries());
    }
    // Without a required signer, Mallory's (valid) signature is reported, not trusted silently.
    let run = run_steps(
        &[&Decrypt::default()],
        vec![File::borrowed(fx.src_path("mallory.gpg"), "mallory.gpg").expect("file")],
        &ctx,
    );
    run.files.expect("decrypted");
    assert!(
        run.reports[0].log.starts_with("good signature from key "),
        "{}",
        run.reports[0].log
    );
}

#[test]
fn a_tampered_message_fails_its_integrity_check_and_leaves_no_output() {
    let w = world();
    let fx = Fixture::new();
    let plain = fx.src_path("plain.bin");
    std::fs::write(&plain, content()).expect("write");
    let msg = fx.src_path("msg.gpg");
    w.gpg.ok(&[
        "-z",
        "0",
        "-o",
        msg.to_str().expect("utf8"),
        "-r",
        "ferry@example.com",
        "--encrypt",
        plain.to_str().expect("utf8"),
    ]);
    let good = std::fs::read(&msg).expect("read");
    let n = good.len();
    let mut damaged = Vec::new();
    // A byte changed in the first chunk of plaintext, the middle, the last plaintext byte, the
    // MDC's tag and its hash (the message is 3 MB: several of the decrypting thread's chunks).
    for at in [600, n / 2, n - 23, n - 22, n - 21, n - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        damaged.push((format!("byte {at} changed"), bytes));
    }
    // Cut short, and with bytes after the encrypted packet.
    damaged.push(("cut short".into(), good[..n - 10].to_vec()));
    damaged.push((
        "bytes after it".into(),
        [good.as_slice(), &[0xD3, 0x01, 0x00]].concat(),
    ));
    for (what, bytes) in damaged {
        std::fs::write(&msg, &bytes).expect("write");
        let ctx = fx.ctx(&w.keys);
        let e = Decrypt::default()
            .run(vec![File::borrowed(&msg, "msg.gpg").expect("file")], &ctx)
            .expect_err(&what);
        assert_eq!(e.class(), ErrorClass::BadInput, "{what}: {e}");
        assert!(
            e.to_string()
                .starts_with("pgp-decrypt \"msg.gpg\": could not be decrypted: "),
            "{what}: {e}"
        );
        assert!(
            fx.work_entries().is_empty(),
            "{what}: no unauthenticated plaintext left: {:?}",
            fx.work_entries()
        );
    }
}

#[test]
fn ferry_signs_and_gpg_verifies_and_the_reverse() {
    let w = world();
    let fx = Fixture::new();
    let ctx = fx.ctx(&w.keys);
    let data = b"statement of account\n".repeat(1000);

    // Inline, armored: gpg verifies and extracts.
    let sign = Sign {
        signer: "ferry@example.com".into(),
        armor: true,
        detached: false,
        name: None,
    };
    let files = run_steps(&[&sign], vec![fx.input("stmt.txt", &data)], &ctx)
        .files
        .expect("signed");
    assert_eq!(files[0].name(), "stmt.txt.asc");
    let out = fx.src_path("extracted");
    let (ok, status, stderr) = gpg_status(
        &w,
        &[
            "-o",
            out.to_str().expect("utf8"),
            "--decrypt",
            files[0].path().to_str().expect("utf8"),
        ],
    );
    assert!(
        ok && status.contains(&format!("VALIDSIG {}", w.ferry.fpr)),
        "{status}{stderr}"
    );
    assert_eq!(std::fs::read(&out).expect("read"), data);

    // Detached, binary: the file passes through, gpg verifies the .sig against it.
    let sign = Sign {
        signer: "ferry@example.com".into(),
        armor: false,
        detached: true,
        name: None,
    };
    let files = run_steps(&[&sign], vec![fx.input("stmt.txt", &data)], &ctx)
        .files
        .expect("signed");
    let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
    assert_eq!(names, ["stmt.txt", "stmt.txt.sig"]);
    let (ok, status, stderr) = gpg_status(
        &w,
        &[
            "--verify",
            files[1].path().to_str().expect("utf8"),
            files[0].path().to_str().expect("utf8"),
        ],
    );
    assert!(
        ok && status.contains(&format!("VALIDSIG {}", w.ferry.fpr)),
        "{status}{stderr}"
    );

    // gpg signs, Ferry verifies (required signer) and hands on the content.
    let plain = fx.src_path("in.txt");
    std::fs::write(&plain, &data).expect("write");
    let signed = fx.src_path("in.txt.gpg");
    w.gpg.ok(&[
        "-o",
        signed.to_str().expect("utf8"),
        "-u",
        "partner@example.com",
        "--sign",
        plain.to_str().expect("utf8"),
    ]);
    let verify = Verify {
        signer: Some("partner@example.com".into()),
        name: None,
        max_bytes: None,
    };
    let run = run_steps(
        &[&verify],
        vec![File::borrowed(&signed, "in.txt.gpg").expect("file")],
        &ctx,
    );
    let files = run.files.expect("verified");
    assert_eq!(files[0].name(), "in.txt");
    assert_eq!(std::fs::read(files[0].path()).expect("read"), data);

    // …and refuses it when another signer is required, adding nothing to the work folder.
    let before = fx.work_entries();
    let verify = Verify {
        signer: Some(w.ferry.fpr.clone()),
        name: None,
        max_bytes: None,
    };
    let e = verify
        .run(vec![File::borrowed(&signed, "in.txt.gpg").expect("file")], &ctx)
        .expect_err("wrong signer");
    assert!(
        e.to_string()
            .contains(&format!("has no valid signature from \"{}\"", w.ferry.fpr)),
        "{e}"
    );
    assert_eq!(fx.work_entries(), before);
}

#[test]
fn a_key_source_that_does_not_answer_is_retryable_and_an_unknown_recipient_is_not() {
    let w = world();
    let fx = Fixture::new();
    let down = MemoryKeys {
        unavailable: Some("cert-handler: no responders".into()),
        ..Default::default()
    };
    let enc = Encrypt {
        recipients: vec!["partner@example.com".into()],
        signer: None,
        armor: false,
        name: None,
    };
    let e = enc
        .run(vec![fx.input("a", b"x")], &fx.ctx(&down))
        .expect_err("down");
    assert_eq!(e.class(), ErrorClass::KeysUnavailable);
    assert!(e.is_retryable());
    assert_eq!(
        e.to_string(),
        "pgp-encrypt \"a\": the key source did not answer: cert-handler: no responders"
    );
    let enc = Encrypt {
        recipients: vec!["nobody@example.com".into()],
        signer: None,
        armor: false,
        name: None,
    };
    let e = enc
        .run(vec![fx.input("a", b"x")], &fx.ctx(&w.keys))
        .expect_err("unknown");
    assert_eq!(
        e.to_string(),
        "pgp-encrypt \"a\": no PGP public key matching \"nobody@example.com\" in the node's key store"
    );
    assert!(!e.is_retryable());
}

#[test]
fn a_compressed_message_that_expands_past_the_limit_is_stopped_and_leaves_nothing() {
    let w = world();
    let fx = Fixture::new();
    let plain = fx.src_path("zeros.bin");
    std::fs::write(&plain, vec![0u8; 20 * 1024 * 1024]).expect("write");
    let msg = fx.src_path("zeros.bin.gpg");
    // GnuPG compresses by default (ZLIB): 20 MiB of zeros become a few KiB.
    w.gpg.ok(&[
        "-z",
        "9",
        "-o",
        msg.to_str().expect("utf8"),
        "-r",
        "ferry@example.com",
        "--encrypt",
        plain.to_str().expect("utf8"),
    ]);
    assert!(std::fs::metadata(&msg).expect("msg").len() < 100_000);
    let ctx = fx.ctx(&w.keys);
    let dec = Decrypt {
        max_bytes: Some(1024 * 1024),
        ..Default::default()
    };
    let e = dec
        .run(vec![File::borrowed(&msg, "zeros.bin.gpg").expect("file")], &ctx)
        .expect_err("a bomb");
    assert_eq!(e.class(), ErrorClass::LimitExceeded);
    assert_eq!(
        e.to_string(),
        "pgp-decrypt \"zeros.bin.gpg\": expands to more than the limit of 1048576 bytes"
    );
    assert!(fx.work_entries().is_empty());
    // Under a limit it fits, the same message decrypts.
    let dec = Decrypt {
        max_bytes: Some(20 * 1024 * 1024),
        ..Default::default()
    };
    let out = dec
        .run(vec![File::borrowed(&msg, "zeros.bin.gpg").expect("file")], &ctx)
        .expect("fits");
    assert_eq!(out.files[0].bytes(), 20 * 1024 * 1024);
}

#[test]
fn rsa_keys_work_both_ways() {
    let gpg = Gpg::new();
    let partner = gpg.generate_rsa("RSA Partner <rsa-partner@example.com>");
    let ferry = gpg.generate_rsa("RSA Ferry <rsa-ferry@example.com>");
    let keys = MemoryKeys {
        public: vec![gpg.export_public(&partner), gpg.export_public(&ferry)],
        secret: vec![PgpSecretKey {
            key: gpg.export_secret(&ferry),
            passphrase: Secret::default(),
        }],
        ..Default::default()
    };
    let fx = Fixture::new();
    let ctx = fx.ctx(&keys);
    let data = content();

    // Ferry → gpg.
    let enc = Encrypt {
        recipients: vec!["rsa-partner@example.com".into()],
        signer: Some("rsa-ferry@example.com".into()),
        armor: false,
        name: None,
    };
    let files = run_steps(&[&enc], vec![fx.input("a.bin", &data)], &ctx)
        .files
        .expect("encrypted");
    let out = fx.src_path("a.out");
    let status = gpg
        .cmd()
        .args([
            "--status-fd",
            "1",
            "-o",
            out.to_str().expect("utf8"),
            "--decrypt",
            files[0].path().to_str().expect("utf8"),
        ])
        .output()
        .expect("gpg");
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && status_text.contains(&format!("VALIDSIG {}", ferry.fpr)),
        "{status_text}"
    );
    assert_eq!(std::fs::read(&out).expect("read"), data);

    // gpg → Ferry.
    let plain = fx.src_path("plain.bin");
    std::fs::write(&plain, &data).expect("write");
    let msg = fx.src_path("b.pgp");
    gpg.ok(&[
        "-o",
        msg.to_str().expect("utf8"),
        "-r",
        &ferry.fpr,
        "-u",
        &partner.fpr,
        "--encrypt",
        "--sign",
        plain.to_str().expect("utf8"),
    ]);
    let dec = Decrypt {
        require_signer: Some(partner.fpr.clone()),
        ..Default::default()
    };
    let files = run_steps(&[&dec], vec![File::borrowed(&msg, "b.pgp").expect("file")], &ctx)
        .files
        .expect("decrypted");
    assert_eq!(files[0].name(), "b");
    assert_eq!(std::fs::read(files[0].path()).expect("read"), data);
}

/// Sizes at the edges of the framing Ferry writes itself (openpgp/seal.rs): the literal data
/// packet in 1 MiB pieces, the first holding 6 bytes of literal header; the encrypted data packet
/// in 1 MiB pieces, the first holding the version octet, 18 bytes of CFB prefix and, unsigned, a
/// 12-byte literal packet header before the file. A file that fills its last piece exactly ends
/// with a zero-length piece; a signature can push the end past a piece. GnuPG and rPGP must
/// read every one, and the signature must check.
#[test]
fn messages_whose_size_meets_a_piece_edge_decrypt_in_gpg_and_ferry() {
    let w = world();
    let fx = Fixture::new();
    let ctx = fx.ctx(&w.keys);
    let mib = 1024 * 1024;
    let sizes = [
        0,
        1,
        // Unsigned, the first encrypted piece: filled by the file exactly (then the MDC goes
        // alone in the last piece), or by the file and the MDC exactly (a zero-length last
        // piece). Signed, the signature packet straddles the piece's edge.
        mib - 31,
        mib - 30,
        mib - 29,
        mib - 53,
        mib - 52,
        mib - 51,
        // The first literal data piece filled exactly (a zero-length last literal piece).
        mib - 7,
        mib - 6,
        mib - 5,
        2 * mib - 6,
    ];
    for signed in [false, true] {
        for &size in &sizes {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let enc = Encrypt {
                recipients: vec!["partner@example.com".into(), "ferry@example.com".into()],
                signer: signed.then(|| w.ferry.fpr.clone()),
                armor: false,
                name: None,
            };
            let files = run_steps(&[&enc], vec![fx.input("edge.bin", &data)], &ctx)
                .files
                .expect("encrypted");
            let what = format!("{size} bytes, signed: {signed}");

            let out = fx.src_path(&format!("gpg-{signed}-{size}"));
            let (ok, status, stderr) = gpg_status(
                &w,
                &[
                    "-o",
                    out.to_str().expect("utf8"),
                    "--decrypt",
                    files[0].path().to_str().expect("utf8"),
                ],
            );
            assert!(
                ok && status.contains("DECRYPTION_OKAY"),
                "{what}: {status}{stderr}"
            );
            assert_eq!(status.contains("GOODSIG"), signed, "{what}: {status}");
            assert_eq!(std::fs::read(&out).expect("read"), data, "{what}");

            let dec = Decrypt {
                require_signer: signed.then(|| "ferry@example.com".into()),
                name: None,
                max_bytes: None,
            };
            let back = run_steps(&[&dec], files, &ctx).files.expect("decrypted by Ferry");
            assert_eq!(std::fs::read(back[0].path()).expect("read"), data, "{what}");
        }
    }
}
