//! The compose deployments (`compose/`), exercised where no Docker engine exists: each of
//! Ferry's own compose services (and NATS, and Prometheus) runs as a process with exactly the
//! command, environment and mounts that compose gives it, read from `docker-compose config`.
//!
//! How a container is stood in for (see [`Stack`]):
//! - **Network**: one network namespace for the whole compose file, its `/etc/hosts` naming every
//!   compose service 127.0.0.1, so `nats://nats:4222` and `scheduler:9181` resolve as on the
//!   compose network. Services of one file listen on distinct ports (the HA file gives node2 and
//!   each NATS server their own), so they fit one loopback.
//! - **File system**: each process gets a private mount namespace whose root is an overlay of the
//!   machine's own root (the "image"), with the compose file's bind mounts (the repository's
//!   files, read-only where compose says `:ro`) and named volumes (a temp dir per volume, shared
//!   by the processes that mount it) at their container paths. A new named volume starts with
//!   what the image has at its path, as Docker does: for Ferry's image the folders and owner its
//!   Dockerfile makes.
//! - **Image**: `ferry:local` is `target/<profile>` mounted at `/usr/local/bin` (the Dockerfile
//!   copies the binaries there), run as the Dockerfile's user (uid 10001) in its WORKDIR with its
//!   ENV; `nats:*` is the test kit's nats-server at `/usr/local/bin/nats-server` (the image's
//!   entrypoint) as root; `prom/prometheus:*` is Debian's `/usr/bin/prometheus` (2.42; the image
//!   pins 3.5 — both accept the command line and the configuration) as nobody.
//! - **Order**: `depends_on` with its conditions: `service_completed_successfully` waits for
//!   exit status 0, `service_healthy` runs the healthcheck's own command in the service's
//!   context (as `docker exec` would) until it passes.
//! - `docker-compose exec SERVICE CMD` is [`Stack::exec`]: CMD in that service's context. The
//!   programs around the image's own are this machine's, so the test runs in a container only
//!   what the real image has too: `ferry`, `sh` and `ls` in Ferry's (Debian slim), `wget` in the
//!   nats and prometheus images (busybox).
//!
//! Not run: Grafana (not installable from the reachable registries; its provisioning files are
//! checked against the mounts instead) and the image build itself (no Docker engine).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use ferry_testkit::{Netns, nats_server_path, workspace_root};

const SINGLE: &str = "compose/docker-compose.yml";
const HA: &str = "compose/docker-compose-ha.yml";
/// The images a process can stand in for; others (grafana) are not started.
const RUNNABLE_IMAGES: [&str; 3] = ["ferry:", "nats:", "prom/prometheus:"];
/// Namespace indexes of this test binary (unique per process, see `Netns::create`).
const NETNS_SINGLE: u8 = 11;
const NETNS_HA: u8 = 12;

// --- docker-compose config --------------------------------------------------------------------

/// A `.env` made from `compose/.env.example` as the README says: the passwords filled in.
fn env_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let example = std::fs::read_to_string(workspace_root().join("compose/.env.example"))?;
    let filled: String = example
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key, "")) if key.ends_with("PASSWORD") => format!("{key}=test-{}", key.to_lowercase()),
            _ => line.to_string(),
        })
        .map(|line| line + "\n")
        .collect();
    let path = dir.join(".env");
    std::fs::write(&path, filled)?;
    Ok(path)
}

/// `docker-compose -f FILE --env-file ENV config`, as JSON (docker-compose's own YAML library,
/// PyYAML, converts its output: what compose resolved, read by compose's parser).
fn compose_config(file: &str, env: &Path) -> anyhow::Result<Value> {
    let out = Command::new("/usr/bin/docker-compose")
        .arg("-f")
        .arg(workspace_root().join(file))
        .arg("--env-file")
        .arg(env)
        .arg("config")
        .output()
        .context("run /usr/bin/docker-compose (make test installs it)")?;
    ensure!(
        out.status.success(),
        "docker-compose -f {file} config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        python.stdin.take().expect("piped stdin").write_all(&out.stdout)?;
    }
    let json = python.wait_with_output()?;
    ensure!(json.status.success(), "convert docker-compose's YAML to JSON");
    Ok(serde_json::from_slice(&json.stdout)?)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

// --- the image --------------------------------------------------------------------------------

/// What a container of an image starts with, where compose says nothing.
#[derive(Debug, Clone)]
struct Image {
    entrypoint: Vec<String>,
    /// uid and gid; `None`: root.
    user: Option<(u32, u32)>,
    workdir: String,
    env: Vec<(String, String)>,
    /// (file or folder on this machine, path in the image).
    binaries: Vec<(PathBuf, String)>,
    /// Folders the image has, with their owner: a new named volume mounted there starts with
    /// them.
    folders: Vec<(String, (u32, u32))>,
}

const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Ferry's image, read from compose/Dockerfile's runtime stage: its user, WORKDIR, ENV and the
/// folders its RUN makes (owned by the user where it chowns them).
fn ferry_image() -> anyhow::Result<Image> {
    let dockerfile = std::fs::read_to_string(workspace_root().join("compose/Dockerfile"))?;
    let joined = dockerfile.replace("\\\n", " ");
    let runtime = joined
        .rsplit_once("\nFROM ")
        .context("compose/Dockerfile has a runtime stage")?
        .1;
    let number_after = |flag: &str| -> anyhow::Result<u32> {
        let rest = runtime
            .split_once(flag)
            .with_context(|| format!("compose/Dockerfile: {flag}"))?
            .1;
        Ok(rest.split_whitespace().next().unwrap_or("").parse()?)
    };
    let owner = (
        number_after("useradd --system --uid")?,
        number_after("groupadd --system --gid")?,
    );
    let mut image = Image {
        entrypoint: Vec::new(),
        user: None,
        workdir: "/".into(),
        env: vec![("PATH".into(), IMAGE_PATH.into())],
        binaries: vec![(
            ferry_testkit::bin_path("ferry")
                .parent()
                .expect("a folder")
                .to_path_buf(),
            "/usr/local/bin".into(),
        )],
        folders: Vec::new(),
    };
    let mut chowned = Vec::new();
    for line in runtime.lines().map(str::trim) {
        if let Some(user) = line.strip_prefix("USER ") {
            ensure!(user.trim() == "ferry", "compose/Dockerfile: USER {user}");
            image.user = Some(owner);
            image.env.push(("HOME".into(), "/data".into()));
        } else if let Some(dir) = line.strip_prefix("WORKDIR ") {
            image.workdir = dir.trim().into();
        } else if let Some(kv) = line.strip_prefix("ENV ") {
            let (k, v) = kv.split_once('=').context("ENV K=V")?;
            image.env.push((k.trim().into(), v.trim().into()));
        } else if let Some(run) = line.strip_prefix("RUN ") {
            for step in run.split("&&").map(str::trim) {
                if let Some(dirs) = step.strip_prefix("mkdir -p ") {
                    image
                        .folders
                        .extend(dirs.split_whitespace().map(|d| (d.to_string(), (0, 0))));
                } else if let Some(rest) = step.strip_prefix("chown -R ferry:ferry ") {
                    chowned.extend(rest.split_whitespace().map(String::from));
                }
            }
        }
    }
    for (dir, own) in &mut image.folders {
        if chowned.iter().any(|c| Path::new(dir).starts_with(c)) {
            *own = owner;
        }
    }
    for c in &chowned {
        image.folders.push((c.clone(), owner));
    }
    Ok(image)
}

fn image_for(name: &str) -> anyhow::Result<Image> {
    if name == "ferry:local" {
        return ferry_image();
    }
    let plain = |entrypoint: &str, binary: PathBuf, user: Option<(u32, u32)>, workdir: &str| Image {
        entrypoint: vec![entrypoint.into()],
        user,
        workdir: workdir.into(),
        env: vec![("PATH".into(), IMAGE_PATH.into())],
        binaries: vec![(binary, entrypoint.into())],
        folders: Vec::new(),
    };
    if name.starts_with("nats:") {
        // The image's entrypoint passes arguments starting with `-` to nats-server.
        return Ok(plain("/usr/local/bin/nats-server", nats_server_path(), None, "/"));
    }
    if name.starts_with("prom/prometheus:") {
        const NOBODY: (u32, u32) = (65534, 65534);
        let mut image = plain(
            "/bin/prometheus",
            PathBuf::from("/usr/bin/prometheus"),
            Some(NOBODY),
            "/prometheus",
        );
        image.folders.push(("/prometheus".into(), NOBODY));
        return Ok(image);
    }
    bail!("image {name} cannot run here")
}

// --- the stack --------------------------------------------------------------------------------

/// One mount of a service: (source on this machine, container path, read-only).
#[derive(Debug, Clone)]
struct Mount {
    source: PathBuf,
    target: String,
    read_only: bool,
}

/// A compose file's services as processes in one network namespace; everything is killed and
/// removed on drop.
struct Stack {
    file: &'static str,
    config: Value,
    netns: Netns,
    dir: tempfile::TempDir,
    hosts: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    procs: BTreeMap<String, Child>,
    runs: usize,
}

impl Stack {
    fn new(file: &'static str, netns_index: u8) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-compose-").tempdir()?;
        let config = compose_config(file, &env_file(dir.path())?)?;
        let netns = Netns::create(netns_index)?;
        // compose's network: every service by its name (ip netns exec mounts this over
        // /etc/hosts; the overlay roots below mount it themselves). Removed with the namespace.
        let names: Vec<String> = config["services"]
            .as_object()
            .context("services")?
            .keys()
            .cloned()
            .collect();
        let hosts = Path::new("/etc/netns").join(netns.name()).join("hosts");
        std::fs::create_dir_all(hosts.parent().expect("a folder"))?;
        std::fs::write(
            &hosts,
            format!("127.0.0.1 localhost {}\n::1 localhost\n", names.join(" ")),
        )?;
        for sub in ["volumes", "logs", "roots"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        Ok(Self {
            file,
            config,
            netns,
            dir,
            hosts,
            volumes: BTreeMap::new(),
            procs: BTreeMap::new(),
            runs: 0,
        })
    }

    fn service(&self, name: &str) -> &Value {
        &self.config["services"][name]
    }

    fn services(&self) -> Vec<String> {
        self.config["services"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn runnable(&self, name: &str) -> bool {
        let image = self.service(name)["image"].as_str().unwrap_or("");
        RUNNABLE_IMAGES.iter().any(|p| image.starts_with(p))
    }

    /// The named volume's folder; made on first use with what `image` has at `target`.
    fn volume(&mut self, name: &str, image: &Image, target: &str) -> anyhow::Result<PathBuf> {
        if let Some(dir) = self.volumes.get(name) {
            return Ok(dir.clone());
        }
        let dir = self.dir.path().join("volumes").join(name);
        std::fs::create_dir_all(&dir)?;
        for (folder, (uid, gid)) in &image.folders {
            if let Ok(rest) = Path::new(folder).strip_prefix(target) {
                std::fs::create_dir_all(dir.join(rest))?;
                // Folders in between have the same owner (the Dockerfile chowns recursively).
                for part in rest.ancestors() {
                    std::os::unix::fs::chown(dir.join(part), Some(*uid), Some(*gid))?;
                }
            }
        }
        self.volumes.insert(name.to_string(), dir.clone());
        Ok(dir)
    }

    /// The service's mounts, named volumes made on first use.
    fn mounts(&mut self, service: &str, image: &Image) -> anyhow::Result<Vec<Mount>> {
        let specs = strings(&self.service(service)["volumes"]);
        let mut mounts = Vec::new();
        for spec in specs {
            let parts: Vec<&str> = spec.split(':').collect();
            ensure!(
                parts.len() == 3,
                "{service}: volume {spec:?} is not source:target:mode"
            );
            let (source, target, mode) = (parts[0], parts[1], parts[2]);
            let source = if source.starts_with('/') {
                PathBuf::from(source)
            } else {
                self.volume(source, image, target)?
            };
            mounts.push(Mount {
                source,
                target: target.to_string(),
                read_only: mode == "ro",
            });
        }
        Ok(mounts)
    }

    /// `ip netns exec NS unshare --mount sh -c SCRIPT`: an overlay root with the service's
    /// mounts, then `args` as the image's user with exactly `env`, in `workdir`.
    fn command_in(
        &mut self,
        service: &str,
        args: &[String],
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Command> {
        let image = image_for(self.service(service)["image"].as_str().unwrap_or(""))?;
        let mut mounts = self.mounts(service, &image)?;
        for (binary, path) in &image.binaries {
            mounts.push(Mount {
                source: binary.clone(),
                target: path.clone(),
                read_only: true,
            });
        }
        self.runs += 1;
        let root = self
            .dir
            .path()
            .join("roots")
            .join(format!("{service}-{}", self.runs));
        std::fs::create_dir_all(&root)?;
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let r = |p: &str| q(&format!("{}/root{p}", root.display()));
        let mut script = vec![
            "set -e".to_string(),
            format!("mount -t tmpfs tmpfs {}", q(&root.display().to_string())),
            format!("mkdir {0}/up {0}/work {0}/root", q(&root.display().to_string())),
            format!(
                "mount -t overlay overlay -o lowerdir=/,upperdir={0}/up,workdir={0}/work {0}/root",
                root.display()
            ),
        ];
        for fs in ["/proc", "/dev", "/sys"] {
            script.push(format!("mount --rbind {fs} {}", r(fs)));
        }
        script.push(format!(
            "mount --bind {} {}",
            q(&self.hosts.display().to_string()),
            r("/etc/hosts")
        ));
        // The image's own folders (its WORKDIR among them), with their owners.
        for (folder, (uid, gid)) in &image.folders {
            script.push(format!("mkdir -p {0} && chown {uid}:{gid} {0}", r(folder)));
        }
        for m in &mounts {
            let target = r(&m.target);
            if m.source.is_dir() {
                script.push(format!("mkdir -p {target}"));
            } else {
                script.push(format!("mkdir -p \"$(dirname {target})\" && touch {target}"));
            }
            script.push(format!(
                "mount --bind {} {target}",
                q(&m.source.display().to_string())
            ));
            if m.read_only {
                script.push(format!("mount -o remount,bind,ro {target}"));
            }
        }
        let svc = self.service(service).clone();
        let mut env: BTreeMap<String, String> = image.env.iter().cloned().collect();
        env.insert("HOSTNAME".into(), service.into());
        if let Some(vars) = svc["environment"].as_object() {
            for (k, v) in vars {
                env.insert(
                    k.clone(),
                    v.as_str().map(String::from).unwrap_or_else(|| v.to_string()),
                );
            }
        }
        env.extend(extra_env.iter().cloned());
        let workdir = svc["working_dir"].as_str().unwrap_or(&image.workdir).to_string();
        let mut exec = String::from("exec chroot");
        if let Some((uid, gid)) = image.user {
            exec.push_str(&format!(" --userspec={uid}:{gid}"));
        }
        exec.push_str(&format!(
            " {}/root env -i -C {}",
            q(&root.display().to_string()),
            q(&workdir)
        ));
        for (k, v) in &env {
            exec.push_str(&format!(" {}", q(&format!("{k}={v}"))));
        }
        for a in args {
            exec.push_str(&format!(" {}", q(a)));
        }
        script.push(exec);
        let mut command = self.netns.command("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script.join("\n"));
        Ok(command)
    }

    /// The container's command line: the image's entrypoint, then compose's `command`.
    fn command_line(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let image = image_for(self.service(service)["image"].as_str().unwrap_or(""))?;
        let mut line = strings(&self.service(service)["entrypoint"]);
        if line.is_empty() {
            line = image.entrypoint;
        }
        line.extend(strings(&self.service(service)["command"]));
        Ok(line)
    }

    fn log(&self, service: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{service}.log"))
    }

    /// Start `service` after its `depends_on` conditions hold, and those first.
    fn up(&mut self, service: &str) -> anyhow::Result<()> {
        if self.procs.contains_key(service) {
            return Ok(());
        }
        let depends = self.service(service)["depends_on"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (dep, how) in depends {
            self.up(&dep)?;
            match how["condition"].as_str().unwrap_or("service_started") {
                "service_completed_successfully" => self.wait_completed(&dep)?,
                "service_healthy" => self.wait_healthy(&dep, Duration::from_secs(90))?,
                _ => {}
            }
        }
        let line = self.command_line(service)?;
        let log = std::fs::File::create(self.log(service))?;
        let child = self
            .command_in(service, &line, &[])?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {service}"))?;
        self.procs.insert(service.to_string(), child);
        Ok(())
    }

    /// Every service that can run here, in `depends_on` order.
    fn up_all(&mut self) -> anyhow::Result<()> {
        for service in self.services() {
            if self.runnable(&service) {
                self.up(&service)?;
            }
        }
        Ok(())
    }

    fn wait_completed(&mut self, service: &str) -> anyhow::Result<()> {
        let child = self.procs.get_mut(service).context("started")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(
                    status.success(),
                    "{service} exited with {status}:\n{}",
                    self.log_text(service)
                );
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{service} did not finish within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The healthcheck's own command, in the service's context (`docker exec`): its output.
    fn healthcheck(&mut self, service: &str) -> anyhow::Result<Output> {
        let test = strings(&self.service(service)["healthcheck"]["test"]);
        let args = match test.first().map(String::as_str) {
            Some("CMD") => test[1..].to_vec(),
            Some("CMD-SHELL") => vec!["sh".into(), "-c".into(), test[1..].join(" ")],
            _ => bail!("{service} has no healthcheck command: {test:?}"),
        };
        self.exec(service, &args)
    }

    fn wait_healthy(&mut self, service: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.healthcheck(service)?;
            if out.status.success() {
                return Ok(());
            }
            if let Some(child) = self.procs.get_mut(service)
                && let Some(status) = child.try_wait()?
            {
                bail!("{service} exited with {status}:\n{}", self.log_text(service));
            }
            ensure!(
                Instant::now() < deadline,
                "{service} not healthy within {timeout:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text(service)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `docker-compose exec SERVICE ARGS`: ARGS in the service's context.
    fn exec(&mut self, service: &str, args: &[String]) -> anyhow::Result<Output> {
        Ok(self
            .command_in(service, args, &[])?
            .stdin(Stdio::null())
            .output()?)
    }

    /// [`Self::exec`], requiring success; stdout.
    fn exec_ok(&mut self, service: &str, args: &[&str]) -> anyhow::Result<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = self.exec(service, &args)?;
        ensure!(
            out.status.success(),
            "`docker-compose -f {} exec {service} {}` failed ({}):\n{}{}",
            self.file,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stop(&mut self, service: &str) {
        if let Some(mut child) = self.procs.remove(service) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(40);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self, service: &str) -> String {
        let text = std::fs::read_to_string(self.log(service)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn volume_dir(&self, name: &str) -> &Path {
        self.volumes
            .get(name)
            .map(PathBuf::as_path)
            .expect("the volume is in use")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in self.procs.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The netns (dropped after this) removes /etc/netns/<name> with the hosts file.
    }
}

/// Poll `check` every 500 ms until it gives `Some`, or fail after `timeout` naming `what`.
fn poll<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The Ferry services of a compose file (image ferry:local, a long-running command).
fn ferry_services(stack: &Stack) -> Vec<String> {
    stack
        .services()
        .into_iter()
        .filter(|s| {
            stack.service(s)["image"] == "ferry:local"
                && strings(&stack.service(s)["command"])
                    .first()
                    .is_some_and(|c| c.starts_with("ferry-"))
        })
        .collect()
}

fn no_violations(stack: &Stack, nats: &str) -> anyhow::Result<()> {
    let log = std::fs::read_to_string(stack.log(nats))?;
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    ensure!(
        violations.is_empty(),
        "{nats}: the services did their work within their permissions: {violations:#?}"
    );
    Ok(())
}

/// How many `ferry-*` targets Prometheus (run by the stack) has scraped successfully.
fn prometheus_targets_up(stack: &mut Stack) -> anyhow::Result<usize> {
    let text = stack.exec_ok(
        "prometheus",
        &[
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D~%22ferry.*%22%7D%3D%3D1",
        ],
    )?;
    let answer: Value = serde_json::from_str(&text)?;
    Ok(answer["data"]["result"].as_array().map_or(0, Vec::len))
}

/// The quickstart task also runs every minute (compose/tasks.toml): wait until a minute's slot
/// is well past and the next one is 20 s or more away, so that a file dropped now is moved by
/// the run the test asks for, not by the schedule (and the two runs do not meet).
fn away_from_slot() {
    use chrono::Timelike;
    while !(2..=40).contains(&chrono::Utc::now().second()) {
        std::thread::sleep(Duration::from_millis(250));
    }
}

// --- tests --------------------------------------------------------------------------------------

/// Both compose files pass `docker-compose config` with a `.env` made from `.env.example`, and
/// refuse to start without the passwords it asks for, naming them.
#[test]
fn every_compose_file_passes_docker_compose_config() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let env = env_file(dir.path())?;
    for file in [SINGLE, HA] {
        let config = compose_config(file, &env)?;
        let services = config["services"].as_object().context("services")?;
        for (name, service) in services {
            // Every long-running container has a healthcheck; the one-shot nats-users job's
            // health is its exit status.
            if service["restart"] != "no" {
                ensure!(
                    !strings(&service["healthcheck"]["test"]).is_empty(),
                    "{file}: {name} has no healthcheck"
                );
            }
            for spec in strings(&service["volumes"]) {
                let source = spec.split(':').next().unwrap_or("");
                ensure!(
                    !source.starts_with('/') || Path::new(source).exists(),
                    "{file}: {name} mounts {source}, which does not exist"
                );
            }
            for port in strings(&service["ports"]) {
                ensure!(
                    port.starts_with("127.0.0.1:"),
                    "{file}: {name} publishes {port} beyond loopback"
                );
            }
            let image = service["image"].as_str().unwrap_or("");
            ensure!(
                image == "ferry:local" || (image.contains(':') && !image.ends_with(":latest")),
                "{file}: {name}: image {image:?} is not pinned"
            );
        }
        assert_eq!(
            services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"], "false",
            "{file}: the anonymous viewer is off by default"
        );
        assert_eq!(
            services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"], "test-grafana_admin_password",
            "{file}: the admin password comes from .env"
        );
        // Without the passwords, compose refuses and names what to set.
        let empty = dir.path().join("empty.env");
        std::fs::write(&empty, "")?;
        let out = Command::new("/usr/bin/docker-compose")
            .arg("-f")
            .arg(workspace_root().join(file))
            .arg("--env-file")
            .arg(&empty)
            .arg("config")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("set it in .env"),
            "{file}: {stderr}"
        );
    }
    Ok(())
}

/// Prometheus scrapes every Ferry service of each compose file at the port its node settings
/// give it and loads the chart's rules; Grafana's provisioning points at the Prometheus service
/// and at the folder where the chart's dashboards are mounted.
#[test]
fn prometheus_and_grafana_provisioning_point_at_the_services_and_the_charts_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let env = env_file(dir.path())?;
    let root = workspace_root();
    for (file, prometheus_yml) in [
        (SINGLE, "compose/prometheus/prometheus.yml"),
        (HA, "compose/prometheus/prometheus-ha.yml"),
    ] {
        let config = compose_config(file, &env)?;
        let services = config["services"].as_object().context("services")?;
        let mount_of = |service: &str, source: &Path| -> Option<String> {
            strings(&services[service]["volumes"])
                .into_iter()
                .find_map(|spec| {
                    let (s, rest) = spec.split_once(':')?;
                    (Path::new(s) == source).then(|| rest.split(':').next().unwrap_or("").to_string())
                })
        };
        // Prometheus: its configuration is this file, the rules are the chart's.
        let prom_target = mount_of("prometheus", &root.join(prometheus_yml))
            .with_context(|| format!("{file}: prometheus mounts {prometheus_yml}"))?;
        ensure!(
            strings(&services["prometheus"]["command"]).contains(&format!("--config.file={prom_target}")),
            "{file}: prometheus reads {prom_target}"
        );
        let rules_target = mount_of("prometheus", &root.join("charts/ferry/rules"))
            .with_context(|| format!("{file}: prometheus mounts charts/ferry/rules"))?;
        let check = Command::new("/usr/bin/promtool")
            .args(["check", "config", "--syntax-only"])
            .arg(root.join(prometheus_yml))
            .output()?;
        ensure!(
            check.status.success(),
            "promtool check config {prometheus_yml}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let prom: Value = yaml_file(&root.join(prometheus_yml))?;
        assert_eq!(
            strings(&prom["rule_files"]),
            [format!("{rules_target}/*.rules.yml")],
            "{prometheus_yml}"
        );
        let targets: BTreeSet<String> = prom["scrape_configs"]
            .as_array()
            .context("scrape_configs")?
            .iter()
            .filter(|job| job["job_name"].as_str().is_some_and(|j| j.starts_with("ferry")))
            .flat_map(|job| job["static_configs"].as_array().cloned().unwrap_or_default())
            .flat_map(|c| strings(&c["targets"]))
            .collect();
        let mut expected = BTreeSet::new();
        for (name, service) in services {
            let command = strings(&service["command"]);
            let Some(binary) = command.first().filter(|c| c.starts_with("ferry-")) else {
                continue;
            };
            let settings_file = strings(&service["volumes"])
                .into_iter()
                .find_map(|spec| spec.strip_suffix(":/etc/ferry/node.toml:ro").map(PathBuf::from))
                .with_context(|| format!("{file}: {name} mounts node settings"))?;
            let settings = ferry_service::Settings::load(Some(&settings_file))?;
            let port = match &binary["ferry-".len()..] {
                "scheduler" => settings.scheduler.metrics_addr.port(),
                "file-collector" => settings.file_collector.metrics_addr.port(),
                "transfer" => settings.transfer.metrics_addr.port(),
                "cert-handler" => settings.cert_handler.metrics_addr.port(),
                "failover-coordinator" => settings.failover_coordinator.metrics_addr.port(),
                other => bail!("unknown service {other}"),
            };
            expected.insert(format!("{name}:{port}"));
            // The healthcheck asks the same port, and compose publishes it.
            let test = strings(&service["healthcheck"]["test"]);
            ensure!(
                test.contains(&format!("http://127.0.0.1:{port}/healthz")),
                "{file}: {name}'s healthcheck: {test:?}"
            );
            ensure!(
                strings(&service["ports"]).contains(&format!("127.0.0.1:{port}:{port}/tcp")),
                "{file}: {name} publishes {port}"
            );
        }
        assert_eq!(
            targets, expected,
            "{prometheus_yml} scrapes every Ferry service of {file}"
        );

        // Grafana: the data source is this file's Prometheus; the dashboards are the chart's.
        let provisioning = mount_of("grafana", &root.join("compose/grafana/provisioning"))
            .with_context(|| format!("{file}: grafana mounts its provisioning"))?;
        assert_eq!(provisioning, "/etc/grafana/provisioning");
        let dashboards_target = mount_of("grafana", &root.join("charts/ferry/dashboards"))
            .with_context(|| format!("{file}: grafana mounts charts/ferry/dashboards"))?;
        let datasource = yaml_file(&root.join("compose/grafana/provisioning/datasources/prometheus.yml"))?;
        assert_eq!(datasource["datasources"][0]["url"], "http://prometheus:9090");
        ensure!(
            strings(&services["prometheus"]["command"]).contains(&"--web.listen-address=:9090".to_string()),
            "prometheus listens where Grafana looks"
        );
        let providers = yaml_file(&root.join("compose/grafana/provisioning/dashboards/ferry.yml"))?;
        assert_eq!(
            providers["providers"][0]["options"]["path"],
            dashboards_target.as_str()
        );
    }
    let dashboards = std::fs::read_dir(root.join("charts/ferry/dashboards"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    ensure!(
        dashboards > 0,
        "charts/ferry/dashboards has dashboards to provision"
    );
    Ok(())
}

/// A YAML file as JSON, read by the PyYAML that docker-compose brings.
fn yaml_file(path: &Path) -> anyhow::Result<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The single-node compose file, run: nats-users writes the seeds, nats starts healthy, the five
/// services pass their healthchecks, Prometheus scrapes all five and loads the rules, and the
/// README's commands (`docker-compose exec scheduler ferry apply -f /etc/ferry/tasks.toml`, a
/// file put in the quickstart inbox, `ferry task run quickstart --wait`) move the file through
/// the `ferry-data` volume. NATS refuses an anonymous client and logged no permission violation.
#[test]
fn the_single_node_compose_services_run_as_processes_and_move_a_file() -> anyhow::Result<()> {
    let mut stack = Stack::new(SINGLE, NETNS_SINGLE)?;
    stack.up_all()?;
    let ferry = ferry_services(&stack);
    assert_eq!(ferry.len(), 5, "{ferry:?}");
    let mut checked = ferry.clone();
    checked.extend(["nats".to_string(), "prometheus".to_string()]);
    for service in &checked {
        stack.wait_healthy(service, Duration::from_secs(60))?;
    }
    // The seeds nats-users wrote are the ferry user's and private.
    let seed = stack.volume_dir("nats-keys").join("node1/scheduler.nk");
    let meta = std::fs::metadata(&seed)?;
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (10001, 0o600),
        "{}",
        seed.display()
    );

    let ran = readme::follow(&mut stack)?;
    assert!(ran >= 5, "the README's single-node commands: {ran} found");
    let outbox = stack.volume_dir("ferry-data").join("demo/outbox");
    let delivered = outbox.join("hello.txt");
    assert_eq!(std::fs::read_to_string(&delivered)?, "hello\n");
    assert_eq!(
        std::fs::metadata(&delivered)?.uid(),
        10001,
        "written as the image's user"
    );
    assert_eq!(
        std::fs::read_dir(stack.volume_dir("ferry-data").join("demo/inbox"))?.count(),
        0,
        "the quickstart task moves files"
    );

    // Anonymous clients are refused at the published NATS port.
    let url = format!("nats://{}:4222", stack.netns.inner_addr());
    let runtime = tokio::runtime::Runtime::new()?;
    let anonymous = runtime.block_on(async_nats::ConnectOptions::new().connect(url.as_str()));
    assert!(
        matches!(&anonymous, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "an unauthenticated client is refused: {:?}",
        anonymous.err()
    );
    no_violations(&stack, "nats")?;

    // Prometheus scrapes all five and has the chart's rules.
    poll(
        Duration::from_secs(60),
        "Prometheus to scrape the five services",
        || Ok((prometheus_targets_up(&mut stack)? == 5).then_some(())),
    )?;
    let rules: Value = serde_json::from_str(&stack.exec_ok(
        "prometheus",
        &["wget", "-q", "-O", "-", "http://127.0.0.1:9090/api/v1/rules"],
    )?)?;
    let groups = rules["data"]["groups"].as_array().map_or(0, Vec::len);
    ensure!(groups > 0, "Prometheus loaded the chart's rules: {rules}");

    // Services stop on SIGTERM (compose's `down`) within stop_grace_period, and a stopped
    // service's healthcheck fails.
    for service in &ferry {
        stack.stop(service);
    }
    let after = stack.healthcheck("scheduler")?;
    ensure!(
        !after.status.success(),
        "the healthcheck of a stopped scheduler fails"
    );
    Ok(())
}

/// The HA compose file, run: a three-server NATS cluster whose routes authenticate with the
/// password from `.env`, two nodes of five services each, exactly one of them active, Prometheus
/// scraping all ten; the active node's coordinator stopped, the standby takes over by itself
/// (automatic mode) and the stopped one comes back as standby; then the README's HA commands:
/// the task applied, node1's coordinator stopped, node2 active and moving a file. Whichever node
/// took the lease first, at least one failover happens.
#[test]
fn the_ha_compose_pair_runs_as_processes_with_one_active_node_that_fails_over() -> anyhow::Result<()> {
    let mut stack = Stack::new(HA, NETNS_HA)?;
    stack.up_all()?;
    let ferry = ferry_services(&stack);
    assert_eq!(ferry.len(), 10, "{ferry:?}");
    for service in &ferry {
        stack.wait_healthy(service, Duration::from_secs(90))?;
    }
    // The three servers form one cluster (each routes to the other two).
    for (server, port) in [
        ("nats-primary", 8222),
        ("nats-standby", 8223),
        ("nats-witness", 8224),
    ] {
        let routes: Value = serde_json::from_str(&stack.exec_ok(
            server,
            &[
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://127.0.0.1:{port}/routez"),
            ],
        )?)?;
        ensure!(
            routes["num_routes"].as_u64().unwrap_or(0) >= 2,
            "{server}: {routes}"
        );
    }
    let role = |stack: &mut Stack, node: &str| -> anyhow::Result<String> {
        let status = stack.exec_ok(
            &format!("{node}-scheduler"),
            &["ferry", "--json", "failover", "status"],
        )?;
        let status: Value = serde_json::from_str(&status)?;
        Ok(status["role"].as_str().unwrap_or("").to_string())
    };
    let active = poll(Duration::from_secs(60), "one active node", || {
        let roles = [role(&mut stack, "node1")?, role(&mut stack, "node2")?];
        let active: Vec<usize> = (0..2).filter(|&i| roles[i] == "active").collect();
        Ok(
            (active.len() == 1 && roles.iter().all(|r| r == "active" || r == "standby"))
                .then(|| format!("node{}", active[0] + 1)),
        )
    })?;
    eprintln!("{active} took the lease first");
    poll(
        Duration::from_secs(60),
        "Prometheus to scrape both nodes' ten services",
        || Ok((prometheus_targets_up(&mut stack)? == 10).then_some(())),
    )?;

    // A failover first: the active node's coordinator stopped (docker-compose stop: SIGTERM,
    // it releases the lease), the standby takes over by itself; started again
    // (docker-compose start), the stopped one comes back as the standby.
    let other = if active == "node1" { "node2" } else { "node1" };
    let coordinator = format!("{active}-failover-coordinator");
    stack.stop(&coordinator);
    poll(Duration::from_secs(60), "the standby to take over", || {
        Ok((role(&mut stack, other)? == "active").then_some(()))
    })?;
    stack.up(&coordinator)?;
    stack.wait_healthy(&coordinator, Duration::from_secs(60))?;
    poll(
        Duration::from_secs(60),
        "the old active node back as standby",
        || Ok((role(&mut stack, &active)? == "standby").then_some(())),
    )?;

    // The README's HA commands: apply, both nodes' status, node1's coordinator stopped
    // (docker-compose stop: SIGTERM, it releases the lease if it holds it), node2 active.
    let ran = readme::follow(&mut stack)?;
    assert!(ran >= 5, "the README's HA commands: {ran} found");
    ensure!(role(&mut stack, "node2")? == "active");
    // The node that lost its coordinator does no work: node2 runs the task.
    away_from_slot();
    stack.exec_ok(
        "node2-scheduler",
        &["sh", "-c", "echo after > /data/demo/inbox/after.txt"],
    )?;
    let out = stack.exec_ok(
        "node2-scheduler",
        &["ferry", "task", "run", "quickstart", "--wait"],
    )?;
    ensure!(out.contains("succeeded (1 delivered"), "{out}");
    let delivered = stack.volume_dir("ferry-data").join("demo/outbox/after.txt");
    assert_eq!(std::fs::read_to_string(&delivered)?, "after\n");
    for nats in ["nats-primary", "nats-standby", "nats-witness"] {
        no_violations(&stack, nats)?;
    }
    Ok(())
}

/// README.md's deploy sections, followed: each command a new user types is checked against what
/// exists, and the `docker-compose exec` commands run against the process stack above.
mod readme {
    use super::*;

    /// The text between `## Deploy with docker-compose` and the next `## ` heading.
    pub fn deploy_section() -> anyhow::Result<String> {
        let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
        let start = readme
            .find("## Deploy with docker-compose")
            .context("README.md has a \"Deploy with docker-compose\" section")?;
        let rest = &readme[start..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
        Ok(rest[..end].to_string())
    }

    /// The `$ ` commands of the section's console blocks, each with the output shown under it.
    pub fn commands(section: &str) -> Vec<(String, Vec<String>)> {
        let mut commands: Vec<(String, Vec<String>)> = Vec::new();
        let mut in_console = false;
        for line in section.lines() {
            if line.starts_with("```") {
                in_console = line == "```console";
                continue;
            }
            if !in_console {
                continue;
            }
            if let Some(command) = line.strip_prefix("$ ") {
                commands.push((command.to_string(), Vec::new()));
            } else if let Some((_, output)) = commands.last_mut() {
                output.push(line.to_string());
            }
        }
        commands
    }

    /// Words of a shell command line (single quotes only, as the README uses).
    pub fn words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        let mut any = false;
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    any = true;
                }
                ' ' if !quoted => {
                    if any || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                c => word.push(c),
            }
        }
        if any || !word.is_empty() {
            words.push(word);
        }
        words
    }

    /// A line with what changes from run to run made alike: every word of letters and digits
    /// that is hexadecimal and holds a digit or is four or more long (numbers, times, ids,
    /// hashes) becomes `9`.
    pub fn shape(line: &str) -> String {
        let mut out = String::new();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            // A run id's group may have no digit ("adba"); few words are four hex letters.
            let volatile = word.chars().all(|c| c.is_ascii_hexdigit())
                && (word.chars().any(|c| c.is_ascii_digit()) || word.len() >= 4);
            out.push_str(if volatile { "9" } else { word });
            word.clear();
        };
        for c in line.chars() {
            if c.is_ascii_alphanumeric() {
                word.push(c);
            } else {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
        flush(&mut word, &mut out);
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Run the section's `docker-compose -f FILE exec` and `stop` commands for the stack's file
    /// in order; every output line the README shows (but a `…` line) appears in the real
    /// output, alike in shape. `ferry failover status` is asked again for up to 30 s until it
    /// does: a role change takes a moment.
    ///
    /// The commands start away from the quickstart task's schedule ([`away_from_slot`]).
    pub fn follow(stack: &mut Stack) -> anyhow::Result<usize> {
        away_from_slot();
        let section = deploy_section()?;
        let mut ran = 0;
        for (line, shown) in commands(&section) {
            let w = words(&line);
            if !(w.first().is_some_and(|x| x == "docker-compose")
                && w.get(1..3) == Some(&["-f".to_string(), stack.file.to_string()][..]))
            {
                continue;
            }
            match w.get(3).map(String::as_str) {
                Some("stop") => {
                    for service in &w[4..] {
                        stack.stop(service);
                    }
                }
                Some("exec") => {
                    let service = &w[4];
                    let args: Vec<&str> = w[5..].iter().map(String::as_str).collect();
                    let shown: Vec<&String> = shown
                        .iter()
                        .filter(|l| !l.trim().is_empty() && l.trim() != "…")
                        .collect();
                    let patient = args.ends_with(&["failover", "status"]);
                    let deadline = Instant::now() + Duration::from_secs(if patient { 30 } else { 0 });
                    loop {
                        let out = stack.exec_ok(service, &args)?;
                        let actual: Vec<String> = out.lines().map(shape).collect();
                        let missing = shown.iter().find(|expected| !actual.contains(&shape(expected)));
                        match missing {
                            None => break,
                            Some(expected) if Instant::now() >= deadline => {
                                bail!("README: `{line}` shows {expected:?}, but it printed:\n{out}")
                            }
                            Some(_) => std::thread::sleep(Duration::from_secs(1)),
                        }
                    }
                }
                _ => continue,
            }
            ran += 1;
        }
        Ok(ran)
    }
}

/// README.md's deploy sections name only what exists: every `make` target is in the Makefile,
/// every repository path exists, every `docker-compose -f FILE` names a compose file that passes
/// `config`, every port is one the file publishes, and every `ferry …` command parses.
#[test]
fn the_readme_deploy_sections_name_what_exists() -> anyhow::Result<()> {
    let root = workspace_root();
    let section = readme::deploy_section()?;
    let makefile = std::fs::read_to_string(root.join("Makefile"))?;
    let dir = tempfile::tempdir()?;
    let env = env_file(dir.path())?;
    let mut published = BTreeSet::new();
    let mut files = BTreeSet::new();
    let mut configs: BTreeMap<String, Value> = BTreeMap::new();
    for (line, _) in readme::commands(&section) {
        let w = readme::words(&line);
        match w.first().map(String::as_str) {
            Some("make") => {
                for target in &w[1..] {
                    ensure!(
                        makefile.contains(&format!("\n{target}:")),
                        "README: `make {target}`: no such target in the Makefile"
                    );
                }
            }
            Some("cp") => ensure!(root.join(&w[1]).exists(), "README: `{line}`: {} is missing", w[1]),
            Some("docker-compose") => {
                ensure!(w[1] == "-f", "README: `{line}` names its compose file with -f");
                files.insert(w[2].clone());
                if !configs.contains_key(&w[2]) {
                    configs.insert(w[2].clone(), compose_config(&w[2], &env)?);
                }
                let config = &configs[&w[2]];
                // exec SERVICE …, stop/start SERVICE…: services of that file.
                let services = match w.get(3).map(String::as_str) {
                    Some("exec") => &w[4..5],
                    Some("stop" | "start" | "ps" | "logs") => &w[4..],
                    _ => &w[..0],
                };
                for service in services {
                    ensure!(
                        config["services"].get(service).is_some(),
                        "README: `{line}`: {} has no service {service}",
                        w[2]
                    );
                }
                if w.get(3).is_some_and(|x| x == "exec") && w.get(5).is_some_and(|x| x == "ferry") {
                    let mut args: Vec<&str> = w[6..].iter().map(String::as_str).collect();
                    args.push("--help");
                    let out = Command::new(ferry_testkit::bin_path("ferry"))
                        .args(&args)
                        .output()?;
                    ensure!(
                        out.status.success(),
                        "README: `{line}` does not parse: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            _ => {}
        }
    }
    ensure!(
        files.contains(SINGLE) && files.contains(HA),
        "README shows both compose files: {files:?}"
    );
    for config in configs.values() {
        for service in config["services"].as_object().context("services")?.values() {
            for port in strings(&service["ports"]) {
                if let Some(p) = port.split(':').nth(1) {
                    published.insert(p.to_string());
                }
            }
        }
    }
    // Every 127.0.0.1:PORT the section names is published; every path it links exists.
    for (i, _) in section.match_indices("127.0.0.1:") {
        let port: String = section[i + 10..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        ensure!(
            published.contains(&port),
            "README names 127.0.0.1:{port}, which no compose file publishes ({published:?})"
        );
    }
    for (i, _) in section.match_indices("](") {
        let link: String = section[i + 2..]
            .chars()
            .take_while(|&c| c != ')' && c != '#')
            .collect();
        if !link.starts_with("http") {
            ensure!(
                root.join(&link).exists(),
                "README links {link}, which does not exist"
            );
        }
    }
    Ok(())
}
