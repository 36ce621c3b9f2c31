//! Remote hosts (issue 8's performance table): Ferry moving files to and from real servers on
//! loopback, side by side in the same run with the clients administrators know — OpenSSH's `sftp`
//! and `rclone` for SFTP, `lftp` and `curl` for FTP, `rclone` for S3 — and the transfer service's
//! peak memory while it moves a large file over SFTP.
//!
//! Each figure alternates Ferry and its peers within a repetition (who goes first rotates), with
//! the same page cache state before each (`Cache::settle`), and reports medians. CPU seconds are
//! given for the client (Ferry: every process of the node) and for the server, so a reader sees
//! where the time goes.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use ferry_testkit::peers::s3::{self, S3Server};
use ferry_testkit::peers::sshd::{Sshd, SshdAuth};
use ferry_testkit::peers::vsftpd::{FtpTls, Vsftpd, VsftpdConfig};
use ferry_testkit::peers::{TEST_PASSWORD, TEST_USER};

use crate::{
    Args, Cache, FerryNode, FerryTiming, GIB, MIB, clock_ticks_per_sec, human_bytes, median, mib_per_s, say,
    secs, thousands, timed, verdict, which, write_random_file, write_small_files,
};

/// What one figure counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Bytes(u64),
    Files(usize),
}

impl Unit {
    fn rate(self, d: Duration) -> f64 {
        match self {
            Unit::Bytes(b) => b as f64 / MIB as f64 / d.as_secs_f64(),
            Unit::Files(n) => n as f64 / d.as_secs_f64(),
        }
    }
    fn show(self, d: Duration) -> String {
        match self {
            Unit::Bytes(_) => format!("{:.0} MiB/s", self.rate(d)),
            Unit::Files(_) => format!("{:.0} files/s", self.rate(d)),
        }
    }
}

/// One peer's repetitions.
#[derive(Debug, Clone)]
pub struct PeerRuns {
    pub name: String,
    pub command: String,
    /// Ferry must reach at least this ratio of the peer's rate (`None`: shown for reference).
    pub target: Option<f64>,
    pub times: Vec<Duration>,
    pub cpu: Vec<f64>,
    pub server_cpu: Vec<f64>,
}

/// One figure: Ferry and its peers on the same workload.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub unit: Unit,
    pub ferry: Vec<FerryTiming>,
    pub ferry_server_cpu: Vec<f64>,
    pub peers: Vec<PeerRuns>,
}

impl Figure {
    fn ferry_median(&self) -> Duration {
        median(self.ferry.iter().map(|t| t.e2e).collect())
    }
    /// Ferry's rate over the peer's (medians).
    fn ratio(&self, peer: &PeerRuns) -> f64 {
        median(peer.times.clone()).as_secs_f64() / self.ferry_median().as_secs_f64()
    }
}

#[derive(Debug, Clone)]
pub struct HostsResult {
    pub figures: Vec<Figure>,
    /// Peak RSS (KiB) of a freshly started transfer service moving `rss_bytes` to SFTP.
    pub rss: Option<(u64, u64, FerryTiming)>,
    pub versions: Vec<String>,
}

pub const TARGET_RSS_MIB: f64 = 64.0;

/// Server CPU: the listener's and every session's, live or reaped (user + system).
fn server_ticks(pid: i32) -> u64 {
    crate::tree_ticks(pid).unwrap_or(0)
}

fn server_pid(comm: &str) -> i32 {
    crate::child_pids(comm).first().copied().unwrap_or(0)
}

/// Measures one figure: `reps` repetitions of Ferry and each peer, order rotating.
struct Runner<'a> {
    args: &'a Args,
    cache: &'a Cache,
    logs: &'a Path,
    inputs: Vec<PathBuf>,
    server: i32,
}

type PeerCommand<'a> = (&'a str, Option<f64>, Box<dyn Fn(usize) -> Command + 'a>);

/// What Ferry runs for one figure: the task of repetition N, and the files it must deliver.
struct Workload<'a> {
    name: String,
    unit: Unit,
    task: &'a dyn Fn(usize) -> String,
    files: u64,
}

impl Runner<'_> {
    async fn figure(
        &self,
        node: &FerryNode,
        work: Workload<'_>,
        peers: Vec<PeerCommand<'_>>,
        clean: &dyn Fn(),
    ) -> anyhow::Result<Figure> {
        let Workload {
            name,
            unit,
            task,
            files,
        } = work;
        let name = name.as_str();
        let mut figure = Figure {
            name: name.to_string(),
            unit,
            ferry: Vec::new(),
            ferry_server_cpu: Vec::new(),
            peers: peers
                .iter()
                .map(|(n, target, cmd)| PeerRuns {
                    name: n.to_string(),
                    command: format!("{:?}", cmd(0)).replace('"', ""),
                    target: *target,
                    times: Vec::new(),
                    cpu: Vec::new(),
                    server_cpu: Vec::new(),
                })
                .collect(),
        };
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        for rep in 1..=self.args.reps {
            let order: Vec<usize> = (0..=peers.len()).map(|i| (i + rep) % (peers.len() + 1)).collect();
            for who in order {
                clean();
                self.cache.settle(&inputs)?;
                let before = server_ticks(self.server);
                if who == peers.len() {
                    let timing = node.run(&task(rep), files, Duration::from_secs(1800)).await?;
                    say(&format!(
                        "{name} {rep}/{}: ferry {}",
                        self.args.reps,
                        unit.show(timing.e2e)
                    ));
                    figure.ferry.push(timing);
                    figure.ferry_server_cpu.push(
                        (server_ticks(self.server).saturating_sub(before)) as f64 / clock_ticks_per_sec(),
                    );
                } else {
                    let (peer, _, command) = &peers[who];
                    let (time, cpu) = timed(&mut command(rep), self.logs, &peer.replace(' ', "-"))?;
                    say(&format!(
                        "{name} {rep}/{}: {peer} {}",
                        self.args.reps,
                        unit.show(time)
                    ));
                    let p = &mut figure.peers[who];
                    p.times.push(time);
                    p.cpu.push(cpu);
                    p.server_cpu.push(
                        (server_ticks(self.server).saturating_sub(before)) as f64 / clock_ticks_per_sec(),
                    );
                }
            }
        }
        clean();
        Ok(figure)
    }
}

/// Empty a folder's contents (keep the folder).
fn empty(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

fn mkdir_for_user(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    ferry_testkit::peers::chown_to(dir, TEST_USER)
}

/// `ferry task` TOML from `(host, folder)` to `(host, folder)`. A remote source would be listed
/// twice, a second apart, to hold back files still being written (`size_stable_ms`, on by
/// default); the bench's source file is settled, so the download task turns the check off and
/// the figure is the transfer's (the report says so).
fn task(name: &str, from: (&str, &str), to: (&str, &str), subdirs: bool) -> String {
    let stable = if from.0 == "local" {
        ""
    } else {
        "size_stable_ms = 0\n"
    };
    format!(
        "[[task]]\nname = \"{name}\"\n[[task.source]]\nhost = \"{}\"\nfolder = \"{}\"\nsubdirectories = {subdirs}\n\
         new_files_only = false\n{stable}[[task.destination]]\nhost = \"{}\"\nfolder = \"{}\"\nrelative_subdirs = {subdirs}\n",
        from.0, from.1, to.0, to.1
    )
}

pub async fn bench(
    args: &Args,
    node: &mut FerryNode,
    cache: &Cache,
    data: &Path,
    logs: &Path,
) -> anyhow::Result<HostsResult> {
    for tool in ["sftp", "ssh-keygen", "rclone", "lftp", "curl"] {
        ensure!(which(tool), "{tool} is not installed (make bench installs it)");
    }
    let versions = vec![
        crate::first_line("ssh", &["-V"]),
        crate::first_line("rclone", &["version"]),
        crate::first_line("lftp", &["--version"]),
        crate::first_line("curl", &["--version"]),
    ];
    // Inputs.
    let big_dir = data.join("hosts-big");
    fs::create_dir_all(&big_dir)?;
    say(&format!(
        "creating {} of random bytes for the host benchmarks",
        human_bytes(args.host_big_bytes)
    ));
    write_random_file(
        &big_dir.join("big.bin"),
        args.host_big_bytes,
        0x5851_F42D_4C95_7F2D,
    )?;
    let small_dir = data.join("hosts-small");
    write_small_files(&small_dir, args.host_small_files, 4096)?;
    let s3_small_dir = data.join("hosts-s3-small");
    write_small_files(&s3_small_dir, args.s3_small_files, 64 << 10)?;
    let rss_dir = data.join("hosts-rss");
    fs::create_dir_all(&rss_dir)?;
    write_random_file(&rss_dir.join("rss.bin"), args.rss_bytes, 0x2545_F491_4F6C_DD1D)?;

    // Let the inputs settle past the stability check's interval (see `measure`).
    std::thread::sleep(Duration::from_millis(1100));

    // Servers.
    say("starting sshd, vsftpd and moto on loopback");
    let sshd = Sshd::start(SshdAuth::Password)?;
    let ftp = Vsftpd::start(VsftpdConfig::new(FtpTls::None))?;
    let moto = S3Server::start_with(s3::Auth::Open)?;
    // The peers log in with a key (BatchMode); Ferry with the password.
    let key = logs.join("bench_ed25519");
    let _ = fs::remove_file(&key);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    ensure!(status.success(), "ssh-keygen");
    sshd.authorize(&fs::read_to_string(key.with_extension("pub"))?)?;
    let sftp_root = sshd.folder("bench")?;
    let ftp_root = ftp.root().join("bench");
    mkdir_for_user(&ftp_root)?;

    let hosts = format!(
        "[[host]]\nname = \"sftp\"\nkind = \"sftp\"\naddress = \"127.0.0.1\"\nport = {}\nuser = \"{TEST_USER}\"\n\
         password = \"{TEST_PASSWORD}\"\nhost_key_sha256 = [\"{}\"]\n\n\
         [[host]]\nname = \"ftp\"\nkind = \"ftp\"\naddress = \"127.0.0.1\"\nport = {}\nuser = \"{TEST_USER}\"\n\
         password = \"{TEST_PASSWORD}\"\ntls = \"none\"\n\n\
         [[host]]\nname = \"s3\"\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\npath_style = true\nallow_http = true\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        sshd.port(),
        sshd.host_key_sha256(),
        ftp.port(),
        s3::BUCKET,
        moto.endpoint(),
        moto.access_key_id(),
        moto.secret_access_key(),
    );
    let sftp_dir = |sub: &str| sftp_root.join(sub);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut tasks = vec![hosts];
    let download_src = sftp_dir("download");
    mkdir_for_user(&download_src)?;
    fs::copy(big_dir.join("big.bin"), download_src.join("big.bin"))?;
    ferry_testkit::peers::chown_to(&download_src, TEST_USER)?;
    let sftp_up = sftp_dir("up");
    let sftp_small = sftp_dir("small");
    let down_local = data.join("hosts-down");
    fs::create_dir_all(&down_local)?;
    for rep in 1..=args.reps {
        tasks.push(task(
            &format!("sftp-up-{rep}"),
            ("local", &s(&big_dir)),
            ("sftp", &s(&sftp_up)),
            false,
        ));
        tasks.push(task(
            &format!("sftp-down-{rep}"),
            ("sftp", &s(&download_src)),
            ("local", &s(&down_local)),
            false,
        ));
        tasks.push(task(
            &format!("sftp-small-{rep}"),
            ("local", &s(&small_dir)),
            ("sftp", &s(&sftp_small)),
            true,
        ));
        tasks.push(task(
            &format!("ftp-up-{rep}"),
            ("local", &s(&big_dir)),
            ("ftp", "bench/up"),
            false,
        ));
        tasks.push(task(
            &format!("s3-up-{rep}"),
            ("local", &s(&big_dir)),
            ("s3", "bench/up"),
            false,
        ));
        tasks.push(task(
            &format!("s3-small-{rep}"),
            ("local", &s(&s3_small_dir)),
            ("s3", "bench/small"),
            true,
        ));
    }
    tasks.push(task(
        "sftp-rss",
        ("local", &s(&rss_dir)),
        ("sftp", &s(&sftp_dir("rss"))),
        false,
    ));
    node.apply(&tasks.join("\n")).await?;

    let mut figures = Vec::new();
    let key_s = s(&key);
    let sftp_port = sshd.port().to_string();
    let rclone_sftp = format!(
        ":sftp,host=127.0.0.1,port={},user={TEST_USER},key_file={key_s}:",
        sshd.port()
    );
    let sftp_batch = |batch: &str, name: &str| -> anyhow::Result<PathBuf> {
        let path = logs.join(name);
        fs::write(&path, batch)?;
        Ok(path)
    };
    // `-f`: OpenSSH's own way to a durable copy — fsync the file once written (on the server
    // through `fsync@openssh.com` for a put, locally for a get), as Ferry does before its commit.
    let sftp_cmd = |batch: PathBuf, fsync: bool| {
        let mut c = Command::new("sftp");
        if fsync {
            c.arg("-f");
        }
        c.args(["-q", "-b"]).arg(batch).args([
            "-P",
            &sftp_port,
            "-i",
            &key_s,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            &format!("{TEST_USER}@127.0.0.1"),
        ]);
        c
    };
    let big = Unit::Bytes(args.host_big_bytes);
    let runner = |inputs: Vec<PathBuf>, server: i32| Runner {
        args,
        cache,
        logs,
        inputs,
        server,
    };
    let sshd_pid = server_pid("sshd");

    // 1. SFTP upload.
    let put = sftp_batch(
        &format!(
            "put {} {}\n",
            s(&big_dir.join("big.bin")),
            s(&sftp_dir("peer-up/big.bin"))
        ),
        "sftp-put.batch",
    )?;
    mkdir_for_user(&sftp_dir("peer-up"))?;
    let rclone_up_dst = format!("{rclone_sftp}{}", s(&sftp_dir("peer-up")));
    figures.push(
        runner(vec![big_dir.clone()], sshd_pid)
            .figure(
                node,
                Workload {
                    name: format!("{} SFTP upload", human_bytes(args.host_big_bytes)),
                    unit: big,
                    task: &|rep| format!("sftp-up-{rep}"),
                    files: 1,
                },
                vec![
                    (
                        "OpenSSH sftp -f",
                        Some(1.0),
                        Box::new(|_| sftp_cmd(put.clone(), true)),
                    ),
                    ("OpenSSH sftp", None, Box::new(|_| sftp_cmd(put.clone(), false))),
                    (
                        "rclone copy",
                        Some(1.2),
                        Box::new(|_| {
                            let mut c = Command::new("rclone");
                            c.args(["copy", &s(&big_dir), &rclone_up_dst]);
                            c
                        }),
                    ),
                ],
                &|| {
                    empty(&sftp_dir("up"));
                    empty(&sftp_dir("peer-up"));
                },
            )
            .await?,
    );

    // 2. SFTP download.
    let get = sftp_batch(
        &format!(
            "get {} {}\n",
            s(&download_src.join("big.bin")),
            s(&data.join("peer-down/big.bin"))
        ),
        "sftp-get.batch",
    )?;
    fs::create_dir_all(data.join("peer-down"))?;
    let rclone_down_src = format!("{rclone_sftp}{}", s(&download_src));
    figures.push(
        runner(vec![download_src.clone()], sshd_pid)
            .figure(
                node,
                Workload {
                    name: format!("{} SFTP download", human_bytes(args.host_big_bytes)),
                    unit: big,
                    task: &|rep| format!("sftp-down-{rep}"),
                    files: 1,
                },
                vec![
                    (
                        "OpenSSH sftp -f",
                        Some(1.0),
                        Box::new(|_| sftp_cmd(get.clone(), true)),
                    ),
                    ("OpenSSH sftp", None, Box::new(|_| sftp_cmd(get.clone(), false))),
                    (
                        "rclone copy",
                        Some(1.2),
                        Box::new(|_| {
                            let mut c = Command::new("rclone");
                            c.args(["copy", &rclone_down_src, &s(&data.join("peer-down"))]);
                            c
                        }),
                    ),
                ],
                &|| {
                    empty(&down_local);
                    empty(&data.join("peer-down"));
                },
            )
            .await?,
    );

    // 3. Many small files to SFTP.
    mkdir_for_user(&sftp_dir("peer-small"))?;
    let rclone_small_dst = format!("{rclone_sftp}{}", s(&sftp_dir("peer-small")));
    figures.push(
        runner(vec![small_dir.clone()], sshd_pid)
            .figure(
                node,
                Workload {
                    name: format!("{} × 4 KiB files to SFTP", thousands(args.host_small_files)),
                    unit: Unit::Files(args.host_small_files),
                    task: &|rep| format!("sftp-small-{rep}"),
                    files: args.host_small_files as u64,
                },
                vec![(
                    "rclone copy",
                    Some(2.0),
                    Box::new(|_| {
                        let mut c = Command::new("rclone");
                        c.args(["copy", &s(&small_dir), &rclone_small_dst]);
                        c
                    }),
                )],
                &|| {
                    empty(&sftp_small);
                    empty(&sftp_dir("peer-small"));
                },
            )
            .await?,
    );

    // 4. FTP upload.
    let ftp_url = format!("ftp://127.0.0.1:{}", ftp.port());
    let ftp_user = format!("{TEST_USER},{TEST_PASSWORD}");
    let ftp_curl_user = format!("{TEST_USER}:{TEST_PASSWORD}");
    mkdir_for_user(&ftp_root.join("peer"))?;
    figures.push(
        runner(vec![big_dir.clone()], server_pid("vsftpd"))
            .figure(
                node,
                Workload {
                    name: format!("{} FTP upload", human_bytes(args.host_big_bytes)),
                    unit: big,
                    task: &|rep| format!("ftp-up-{rep}"),
                    files: 1,
                },
                vec![
                    (
                        "lftp",
                        Some(0.9),
                        Box::new(|_| {
                            let mut c = Command::new("lftp");
                            c.args([
                                "-u",
                                &ftp_user,
                                "-e",
                                &format!(
                                    "set ftp:ssl-allow no; put {} -o bench/peer/big.bin; quit",
                                    s(&big_dir.join("big.bin"))
                                ),
                                &ftp_url,
                            ]);
                            c
                        }),
                    ),
                    (
                        "curl -T",
                        Some(0.9),
                        Box::new(|_| {
                            let mut c = Command::new("curl");
                            c.args([
                                "-sS",
                                "-T",
                                &s(&big_dir.join("big.bin")),
                                "--user",
                                &ftp_curl_user,
                            ])
                            .arg(format!("{ftp_url}/bench/peer/big.bin"));
                            c
                        }),
                    ),
                ],
                &|| {
                    empty(&ftp_root.join("up"));
                    empty(&ftp_root.join("peer"));
                },
            )
            .await?,
    );

    // 5 and 6. S3.
    let rclone_s3 = format!(
        ":s3,provider=Other,access_key_id={},secret_access_key={},endpoint='{}',force_path_style=true:{}",
        moto.access_key_id(),
        moto.secret_access_key(),
        moto.endpoint(),
        s3::BUCKET
    );
    let moto_pid = moto.pid().map_or(0, |p| p as i32);
    let (s3_client, _keys) = s3_client(&moto)?;
    let clean_s3 = || {
        let client = s3_client.clone();
        // Drop what the last measurement stored: moto keeps everything in memory.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    for folder in ["bench/up", "bench/small", "bench/peer-up", "bench/peer-small"] {
                        if let Ok(listed) = client.list(folder, true).await {
                            for e in listed {
                                let _ = client.delete(&ferry_hosts::path::join(folder, &e.rel_path)).await;
                            }
                        }
                    }
                });
            });
        });
    };
    let rclone_s3_up = format!("{rclone_s3}/bench/peer-up");
    figures.push(
        runner(vec![big_dir.clone()], moto_pid)
            .figure(
                node,
                Workload {
                    name: format!("{} S3 upload", human_bytes(args.host_big_bytes)),
                    unit: big,
                    task: &|rep| format!("s3-up-{rep}"),
                    files: 1,
                },
                vec![(
                    "rclone copy",
                    Some(1.0),
                    Box::new(|_| {
                        let mut c = Command::new("rclone");
                        c.args(["copy", "--s3-no-head", &s(&big_dir), &rclone_s3_up])
                            .env_remove("AWS_CA_BUNDLE");
                        c
                    }),
                )],
                &clean_s3,
            )
            .await?,
    );
    let rclone_s3_small = format!("{rclone_s3}/bench/peer-small");
    figures.push(
        runner(vec![s3_small_dir.clone()], moto_pid)
            .figure(
                node,
                Workload {
                    name: format!("{} × 64 KiB files to S3", thousands(args.s3_small_files)),
                    unit: Unit::Files(args.s3_small_files),
                    task: &|rep| format!("s3-small-{rep}"),
                    files: args.s3_small_files as u64,
                },
                vec![(
                    "rclone copy",
                    Some(1.0),
                    Box::new(|_| {
                        let mut c = Command::new("rclone");
                        c.args(["copy", "--s3-no-head", &s(&s3_small_dir), &rclone_s3_small])
                            .env_remove("AWS_CA_BUNDLE");
                        c
                    }),
                )],
                &clean_s3,
            )
            .await?,
    );

    // 7. The transfer service's peak RSS moving a large file to SFTP.
    mkdir_for_user(&sftp_dir("rss"))?;
    node.restart("transfer").await?;
    let pid = node.pid("transfer");
    cache.settle(&[&rss_dir])?;
    let started = Instant::now();
    let timing = node.run("sftp-rss", 1, Duration::from_secs(1800)).await?;
    let hwm = crate::proc_status_kib(pid, "VmHWM").context("read the transfer's VmHWM")?;
    say(&format!(
        "sftp rss: transfer peak {:.1} MiB moving {} in {}",
        hwm as f64 / 1024.0,
        human_bytes(args.rss_bytes),
        secs(started.elapsed())
    ));
    empty(&sftp_dir("rss"));

    Ok(HostsResult {
        figures,
        rss: Some((args.rss_bytes, hwm, timing)),
        versions,
    })
}

/// A client of the bench's S3 server, for cleaning up between measurements.
fn s3_client(moto: &S3Server) -> anyhow::Result<(ferry_hosts::DynHost, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let store = ferry_keymat::KeymatStore::open_or_create(&dir.path().join("keymat"))?;
    let keymat = store.current()?;
    let toml = format!(
        "[[host]]\nname = \"s3\"\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\npath_style = true\nallow_http = true\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3::BUCKET,
        moto.endpoint(),
        moto.access_key_id(),
        moto.secret_access_key()
    );
    let mut raw = ferry_config::parse_toml(&toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    ferry_keymat::seal_config(&mut raw, &keymat.public()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = raw.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((ferry_hosts::connect(&config.hosts["s3"], &store)?, dir))
}

impl HostsResult {
    /// Rows of the report's results table.
    pub fn rows(&self, o: &mut String) {
        for f in &self.figures {
            for p in f.peers.iter().filter(|p| p.target.is_some()) {
                let target = p.target.expect("filtered");
                let ratio = f.ratio(p);
                let _ = writeln!(
                    o,
                    "| {} | {}: {} | {} | {ratio:.2}× | ≥ {target}× | {} |",
                    f.name,
                    p.name,
                    f.unit.show(median(p.times.clone())),
                    f.unit.show(f.ferry_median()),
                    verdict(ratio >= target)
                );
            }
        }
        if let Some((bytes, hwm, _)) = &self.rss {
            let mib = *hwm as f64 / 1024.0;
            let _ = writeln!(
                o,
                "| Transfer service peak RSS while moving a {} file to SFTP | — | {mib:.1} MiB | — | < {TARGET_RSS_MIB} MiB | {} |",
                human_bytes(*bytes),
                verdict(mib < TARGET_RSS_MIB)
            );
        }
    }

    pub fn summary(&self, s: &mut String) {
        for f in &self.figures {
            for p in f.peers.iter().filter(|p| p.target.is_some()) {
                let target = p.target.expect("filtered");
                let ratio = f.ratio(p);
                let _ = writeln!(
                    s,
                    "  {}: {} {}, Ferry {}, ratio {ratio:.2}x (target >= {target}x) {}",
                    f.name,
                    p.name,
                    f.unit.show(median(p.times.clone())),
                    f.unit.show(f.ferry_median()),
                    verdict(ratio >= target).trim_matches('*')
                );
            }
        }
        if let Some((_, hwm, _)) = &self.rss {
            let mib = *hwm as f64 / 1024.0;
            let _ = writeln!(
                s,
                "  peak RSS over SFTP: {mib:.1} MiB (target < {TARGET_RSS_MIB} MiB) {}",
                verdict(mib < TARGET_RSS_MIB).trim_matches('*')
            );
        }
    }

    /// The remote hosts section.
    pub fn render(&self, o: &mut String, reps: usize) {
        let _ = writeln!(o, "\n## Remote hosts, against the clients administrators know\n");
        let _ = writeln!(
            o,
            "Real servers on loopback, started by the bench: OpenSSH `sshd` (internal-sftp), `vsftpd` (plain FTP), \
             moto's S3 server. Ferry logs in with a password (SFTP host key pinned); the OpenSSH and rclone \
             clients with a key, which costs nothing per byte. Clients: {}. Medians of {reps} repetitions; Ferry is \
             timed from the run request to `RunFinished` (listing, SHA-256 of the source, verification, audit and \
             results inside), the peers from spawn to exit. Ferry's copies are durable (fsynced before they \
             get their names), so the SFTP targets are against OpenSSH's `sftp -f`, which fsyncs each file it \
             wrote (the server through `fsync@openssh.com` for an upload); plain `sftp`, which leaves the file in \
             a page cache, is shown for reference, as plain `cp` is beside `cp` + `sync`. The download task sets `size_stable_ms = 0`: by \
             default a remote source is listed twice, a second apart, so a file still being written is not \
             taken — a policy wait of 1 s the peers do not have. CPU is user + system time of a process tree: \
             Ferry's transfer with its `ssh` children (the SFTP connections stay open in its pool), a \
             peer with everything it ran, a server's listener with its live sessions and those it reaped. \
             sshd's sessions of the peers' own connections do not show in the server column (they end \
             with the peer and are not reaped into the listener's count), so compare the server CPU of \
             SFTP only across Ferry's rows.\n",
            self.versions.join("; ")
        );
        for f in &self.figures {
            let _ = writeln!(o, "### {}\n", f.name);
            let _ = writeln!(
                o,
                "| Who | Median | Rate | Client CPU | Server CPU |\n|---|---|---|---|---|"
            );
            let ferry_cpu: Vec<f64> = f
                .ferry
                .iter()
                .map(|t| t.cpu.iter().map(|(_, c)| c).sum())
                .collect();
            let row = |o: &mut String, who: &str, times: &[Duration], cpu: &[f64], server: &[f64]| {
                let m = median(times.to_vec());
                let med = |v: &[f64]| {
                    let mut v = v.to_vec();
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied().unwrap_or(0.0)
                };
                let _ = writeln!(
                    o,
                    "| {who} | {} | {} | {:.2} s | {:.2} s |",
                    secs(m),
                    f.unit.show(m),
                    med(cpu),
                    med(server)
                );
            };
            let ferry_times: Vec<Duration> = f.ferry.iter().map(|t| t.e2e).collect();
            row(o, "Ferry", &ferry_times, &ferry_cpu, &f.ferry_server_cpu);
            for p in &f.peers {
                row(o, &format!("`{}`", p.name), &p.times, &p.cpu, &p.server_cpu);
            }
            let per_process: Vec<String> = f
                .ferry
                .first()
                .map(|t| {
                    t.cpu
                        .iter()
                        .map(|(name, _)| {
                            let mut v: Vec<f64> = f
                                .ferry
                                .iter()
                                .filter_map(|r| r.cpu.iter().find(|(n, _)| n == name).map(|(_, c)| *c))
                                .collect();
                            v.sort_by(f64::total_cmp);
                            format!("{name} {:.2} s", v.get(v.len() / 2).copied().unwrap_or(0.0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "\nFerry's CPU by process (median): {}.",
                per_process.join(", ")
            );
            for p in &f.peers {
                let _ = writeln!(o, "\n`{}` command: `{}`", p.name, p.command);
            }
            let _ = writeln!(o);
        }
        if let Some((bytes, hwm, timing)) = &self.rss {
            let _ = writeln!(
                o,
                "### Transfer service memory over SFTP\n\nA freshly started `ferry-transfer` moved a {} file to the SFTP \
                 server in {} ({}); its peak RSS (`VmHWM`) was **{:.1} MiB**.\n",
                human_bytes(*bytes),
                secs(timing.e2e),
                mib_per_s(*bytes, timing.e2e),
                *hwm as f64 / 1024.0
            );
        }
    }
}

/// Default sizes of the host benchmarks.
pub const HOST_BIG_BYTES: u64 = GIB;
pub const HOST_SMALL_FILES: usize = 5_000;
pub const S3_SMALL_FILES: usize = 1_000;
