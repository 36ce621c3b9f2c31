//! A network namespace per simulated host, joined to the root namespace by a veth pair, so that
//! a test can cut a host off from the NATS servers (a partition) and heal it again.
//!
//! Needs root and `ip` (iproute2); check [`netns_available`] first.
//!
//! Addressing: each namespace gets its own /30 in 10.0.0.0/8, derived from the test process id
//! and the namespace index so that parallel test processes do not collide:
//! subnet number `s = (pid % 2^18) * 16 + index` (22 bits), network `10.0.0.0 + s * 4`, the root
//! side is `.1` of that /30 ([`Netns::host_addr`]) and the inside is `.2` ([`Netns::inner_addr`]).
//! The namespace has no default route: from inside, only its own loopback and the root side of
//! its veth are reachable, so nothing leaves the machine. A root-namespace server listening on
//! `0.0.0.0` (or on `host_addr`) is reachable from inside at `host_addr`.
//!
//! Names: namespace `ferry-<pid>-<index>`, veth `fh<pid>x<index>` (root side) and
//! `fi<pid>x<index>` (inside), at most 12 characters for pids below 2^22 (Linux's maximum).
//! Namespaces left behind by killed test processes are deleted by the next [`Netns::create`].

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Namespaces per test process: the index is 4 bits of the subnet number.
const MAX_INDEX: u8 = 15;

/// Whether this process can create network namespaces: it runs as root and `ip netns` works.
pub fn netns_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false);
    root && Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace for one simulated host; deleted (with its veth pair) on drop.
pub struct Netns {
    name: String,
    host_if: String,
    inner_if: String,
    host_addr: Ipv4Addr,
    inner_addr: Ipv4Addr,
}

impl Netns {
    /// Create namespace `ferry-<pid>-<index>` with a veth pair to the root namespace, addresses
    /// on both ends, links up and `lo` up inside. `index` (0..=15) must be unique within the
    /// test process.
    pub fn create(index: u8) -> anyhow::Result<Self> {
        if index > MAX_INDEX {
            bail!("netns index {index} is above {MAX_INDEX}");
        }
        if !netns_available() {
            bail!("network namespaces need root and a working `ip netns` (iproute2)");
        }
        delete_stale();
        let pid = std::process::id();
        let subnet = ((pid % (1 << 18)) << 4) | u32::from(index);
        let network = u32::from(Ipv4Addr::new(10, 0, 0, 0)) | (subnet << 2);
        let ns = Self {
            name: format!("ferry-{pid}-{index}"),
            host_if: format!("fh{pid}x{index}"),
            inner_if: format!("fi{pid}x{index}"),
            host_addr: Ipv4Addr::from(network + 1),
            inner_addr: Ipv4Addr::from(network + 2),
        };
        let in_use = ip(&["-o", "-4", "addr", "show", "to", &format!("{}/30", ns.host_addr)])?;
        if !in_use.trim().is_empty() {
            bail!(
                "netns {}: subnet {}/30 is already used in the root namespace:\n{in_use}",
                ns.name,
                Ipv4Addr::from(network)
            );
        }
        ip(&["netns", "add", &ns.name]).with_context(|| format!("create network namespace {}", ns.name))?;
        // From here on, drop deletes the namespace (and with it the veth pair) on error.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
            "netns",
            &ns.name,
        ])?;
        ns.disable_ipv6();
        ip(&["addr", "add", &ns.host_cidr(), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ns.ip_inside(&["addr", "add", &ns.inner_cidr(), "dev", &ns.inner_if])?;
        ns.ip_inside(&["link", "set", &ns.inner_if, "up"])?;
        ns.ip_inside(&["link", "set", "lo", "up"])?;
        ns.wait_connected(Duration::from_secs(5))?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root-namespace end of the veth: processes inside reach root-namespace servers here.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The address inside the namespace.
    pub fn inner_addr(&self) -> Ipv4Addr {
        self.inner_addr
    }

    /// A command running `program` inside the namespace (`ip netns exec NAME program`).
    ///
    /// `ip netns exec` execs `program` in place, so the child's pid is the program's and
    /// `Child::kill` kills the program itself.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Whether a TCP connection from inside the namespace to `addr:port` succeeds within
    /// `timeout` (bash's `/dev/tcp`, under `timeout`).
    pub fn tcp_connects(&self, addr: Ipv4Addr, port: u16, timeout: Duration) -> bool {
        self.command("timeout")
            .arg(format!("{:.3}", timeout.as_secs_f64()))
            .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Partition: take the root side of the veth down. Nothing inside reaches the root
    /// namespace (connections hang rather than being reset) until [`Self::heal`].
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "down"]).with_context(|| format!("cut netns {}", self.name))?;
        Ok(())
    }

    /// Undo [`Self::cut`]: link up, re-add addresses if they went missing, and wait (up to 5 s)
    /// until a TCP connection from inside to `host_addr` works again.
    pub fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "up"]).with_context(|| format!("heal netns {}", self.name))?;
        let host = ip(&["-o", "-4", "addr", "show", "dev", &self.host_if])?;
        if !host.contains(&self.host_cidr()) {
            ip(&["addr", "add", &self.host_cidr(), "dev", &self.host_if])?;
        }
        let inner = self.ip_inside(&["-o", "-4", "addr", "show", "dev", &self.inner_if])?;
        if !inner.contains(&self.inner_cidr()) {
            self.ip_inside(&["addr", "add", &self.inner_cidr(), "dev", &self.inner_if])?;
        }
        self.ip_inside(&["link", "set", &self.inner_if, "up"])?;
        self.wait_connected(Duration::from_secs(5))
            .with_context(|| format!("heal netns {}", self.name))
    }

    fn host_cidr(&self) -> String {
        format!("{}/30", self.host_addr)
    }

    fn inner_cidr(&self) -> String {
        format!("{}/30", self.inner_addr)
    }

    fn ip_inside(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// IPv4 only: no IPv6 link-local addresses or router solicitations on the veth.
    fn disable_ipv6(&self) {
        let key = |dev: &str| format!("net.ipv6.conf.{dev}.disable_ipv6=1");
        let _ = Command::new("sysctl")
            .args(["-qw", &key(&self.host_if)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .command("sysctl")
            .args(["-qw", &key(&self.inner_if)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Wait until a TCP connection from inside to a listener on `host_addr` succeeds.
    fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let listener =
            TcpListener::bind((self.host_addr, 0)).with_context(|| format!("bind {}:0", self.host_addr))?;
        let port = listener.local_addr()?.port();
        let deadline = Instant::now() + timeout;
        loop {
            // The kernel completes the handshake into the backlog; no accept needed.
            if self.tcp_connects(self.host_addr, port, Duration::from_secs(1)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no TCP connection from inside {} to {}:{port} within {timeout:?}",
                    self.name,
                    self.host_addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Netns {
    /// Make `name` resolve to `addr` for programs inside the namespace: `ip netns exec` mounts
    /// `/etc/netns/<namespace>/hosts` over `/etc/hosts` (removed with the namespace). Nodes in
    /// different namespaces then reach one server in the root namespace by one name, each at the
    /// host side of its own link.
    pub fn map_host(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n{addr} {name}\n"),
        )?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
        // Deleting the namespace deletes the veth pair; the root side is deleted explicitly in
        // case it was never moved (e.g. a failed create).
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Delete namespaces `ferry-<pid>-<index>` whose process no longer exists.
fn delete_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some((pid, index)) = name.strip_prefix("ferry-").and_then(|rest| rest.split_once('-')) else {
            continue;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numeric(pid) && numeric(index) && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        }
    }
}

/// Run `ip ARGS`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
