//! A three-server JetStream cluster of real `nats-server` processes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often the whole start is tried when a chosen port was taken before a server bound it.
const START_ATTEMPTS: usize = 5;
/// How long a (re)started server may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a server's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// Three real `nats-server` processes (`n1`..`n3`) forming one JetStream cluster (`ferry-test`),
/// each with its own temp dir (config, `nats.log`, JetStream store). Servers are addressed by
/// index `0..3`. All servers are killed on drop.
///
/// Clients listen on `client_host` (e.g. `"0.0.0.0"` so that processes in a [`crate::Netns`]
/// reach the cluster via [`crate::Netns::host_addr`]); cluster routes and HTTP monitoring listen
/// on 127.0.0.1 only. Ports are random: each is chosen by binding port 0 and releasing it, and the
/// whole start is retried with new ports if a server then finds its port taken.
pub struct NatsCluster {
    client_host: String,
    servers: [Server; 3],
}

struct Server {
    name: String,
    dir: tempfile::TempDir,
    client_port: u16,
    route_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Start the three servers and wait until every one's `/healthz` is 200 (JetStream current)
    /// and all three agree on a meta leader in a meta group of three (a few seconds here).
    ///
    /// On a starved machine the first JetStream requests may still go unanswered (a re-election
    /// right after forming): callers retry their first write, as services do.
    pub fn start(client_host: &str) -> anyhow::Result<Self> {
        Self::start_with(client_host, "")
    }

    /// [`NatsCluster::start`] with `extra` in every server's configuration (e.g. an
    /// `authorization` block: it covers clients, not the routes between the servers).
    pub fn start_with(client_host: &str, extra: &str) -> anyhow::Result<Self> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(client_host)?;
            match Self::try_start(client_host, ports, extra) {
                Ok(cluster) => return Ok(cluster),
                Err(StartError::PortClash(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        let e = last_err.expect("the loop ran at least once and only port clashes continue it");
        Err(e.context(format!(
            "nats cluster: a port was taken in each of {START_ATTEMPTS} attempts"
        )))
    }

    /// Client ports of the three servers, in server order.
    pub fn client_ports(&self) -> [u16; 3] {
        self.servers.each_ref().map(|s| s.client_port)
    }

    /// HTTP monitoring ports (on 127.0.0.1) of the three servers, in server order.
    pub fn http_ports(&self) -> [u16; 3] {
        self.servers.each_ref().map(|s| s.http_port)
    }

    /// `nats://host:port` of every server, comma-separated (the `FERRY_NATS_URL` form).
    ///
    /// async-nats parses a `&str` as one address: give it [`Self::url_list`] instead.
    pub fn urls(&self, host: &str) -> String {
        self.url_list(host).join(",")
    }

    /// `nats://host:port` of every server, for `async_nats::connect(cluster.url_list(host))`.
    pub fn url_list(&self, host: &str) -> Vec<String> {
        self.client_ports()
            .iter()
            .map(|port| format!("nats://{host}:{port}"))
            .collect()
    }

    /// The server name (`n1`..`n3`) of server `i`, as reported by JetStream (e.g. as a leader).
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// Index of the server called `name` (`n1`..`n3`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// Whether server `i` was started and has not exited.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.servers[i].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stop server `i` with SIGKILL (no clean shutdown, like a crash). No-op if it is not running.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Start server `i` again on the same ports and store (killing it first if it still runs),
    /// and wait until `/healthz` is 200 (JetStream current, streams caught up) and it knows the
    /// meta leader.
    pub fn start_again(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        server.kill();
        server.spawn()?;
        wait_until(READY_TIMEOUT, || {
            let server = &mut self.servers[i];
            server.check_alive()?;
            Ok(server.healthy("/healthz") && server.meta_leader().is_some())
        })
        .with_context(|| {
            format!(
                "nats server {} did not become healthy again; log tail:\n{}",
                self.servers[i].name,
                self.servers[i].log_tail()
            )
        })
    }

    /// SIGKILL all servers (also done on drop).
    pub fn stop_all(&mut self) {
        for server in &mut self.servers {
            server.kill();
        }
    }

    /// The JetStream meta leader's name as seen by the first running server that knows one.
    pub fn meta_leader(&self) -> Option<String> {
        self.servers.iter().find_map(Server::meta_leader)
    }

    /// The last lines of server `i`'s log (stderr of all its runs).
    pub fn log_tail(&self, i: usize) -> String {
        self.servers[i].log_tail()
    }

    /// The temp dir of server `i` (holds `nats.conf`, `nats.log` and `jetstream/`).
    pub fn dir(&self, i: usize) -> &Path {
        self.servers[i].dir.path()
    }

    fn try_start(client_host: &str, ports: [(u16, u16, u16); 3], extra: &str) -> Result<Self, StartError> {
        let mut servers = Vec::with_capacity(3);
        for (i, &(client_port, route_port, http_port)) in ports.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("ferry-nats-cluster-")
                .tempdir()
                .context("nats cluster: temp dir")
                .map_err(StartError::Other)?;
            servers.push(Server {
                name: format!("n{}", i + 1),
                dir,
                client_port,
                route_port,
                http_port,
                child: None,
            });
        }
        let servers: [Server; 3] = servers
            .try_into()
            .map_err(|_| ())
            .expect("three servers were pushed");
        let mut cluster = Self {
            client_host: client_host.to_string(),
            servers,
        };
        let routes: Vec<String> = cluster
            .servers
            .iter()
            .map(|s| format!("\"nats-route://127.0.0.1:{}\"", s.route_port))
            .collect();
        let routes = routes.join(", ");
        for server in &mut cluster.servers {
            server
                .write_config(&cluster.client_host, &routes, extra)
                .map_err(StartError::Other)?;
            server.spawn().map_err(StartError::Other)?;
        }
        let ready = wait_until(READY_TIMEOUT, || {
            for server in &mut cluster.servers {
                server.check_alive()?;
            }
            // `/healthz` (without `js-enabled-only`) is 200 only once the server's JetStream is
            // current with the meta group: before that, API requests can go unanswered.
            let enabled = cluster.servers.iter().all(|s| s.healthy("/healthz"));
            // Early on, a server may have elected a leader among fewer peers: wait until all
            // three see the same leader in a group of three.
            let leaders: Vec<Option<String>> = cluster.servers.iter().map(Server::meta_leader).collect();
            Ok(enabled && leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]))
        });
        if let Err(e) = ready {
            cluster.stop_all();
            let logs: String = cluster
                .servers
                .iter()
                .map(|s| format!("--- {} log tail:\n{}\n", s.name, s.log_tail()))
                .collect();
            let e = e.context(format!("nats cluster did not form\n{logs}"));
            return Err(if logs.contains("address already in use") {
                StartError::PortClash(e)
            } else {
                StartError::Other(e)
            });
        }
        Ok(cluster)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

enum StartError {
    /// A chosen port was taken by someone else before the server bound it: try new ports.
    PortClash(anyhow::Error),
    Other(anyhow::Error),
}

impl Server {
    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn write_config(&self, client_host: &str, routes: &str, extra: &str) -> anyhow::Result<()> {
        let store = self.dir.path().join("jetstream");
        let conf = format!(
            "server_name: {name}\n\
             listen: \"{client_host}:{client}\"\n\
             http: \"127.0.0.1:{http}\"\n\
             max_payload: 8MB\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 20GB\n}}\n\
             cluster {{\n  name: ferry-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n{extra}\n",
            name = self.name,
            client = self.client_port,
            http = self.http_port,
            store = store.display(),
            route = self.route_port,
        );
        std::fs::write(self.conf_path(), conf)
            .with_context(|| format!("write {}", self.conf_path().display()))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // Appending keeps the log of earlier runs (before a kill) for error messages.
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("open {}", self.log_path().display()))?;
        writeln!(log, "=== ferry-testkit: starting {} ===", self.name)?;
        self.child = Some(crate::spawn_nats_server(&self.conf_path(), log)?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fail if the server process has exited (e.g. its port was taken).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("nats server {} is not running", self.name);
        };
        if let Some(status) = child.try_wait().context("wait for nats-server")? {
            self.child = None;
            bail!("nats server {} exited with {status}", self.name);
        }
        Ok(())
    }

    fn healthy(&self, path: &str) -> bool {
        matches!(http_get(self.http_port, path), Ok((200, _)))
    }

    /// The meta leader this server knows of in a meta group of three, from `/jsz`.
    fn meta_leader(&self) -> Option<String> {
        let (status, body) = http_get(self.http_port, "/jsz").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let meta = v.get("meta_cluster")?;
        let leader = meta.get("leader")?.as_str()?;
        let size = meta.get("cluster_size")?.as_u64()?;
        (!leader.is_empty() && size == 3).then(|| leader.to_string())
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

/// Nine distinct free ports: (client, route, http) per server. All are held until all are
/// chosen so that they differ, then released for the servers to bind.
fn free_ports(client_host: &str) -> anyhow::Result<[(u16, u16, u16); 3]> {
    let mut held = Vec::new();
    let mut bind = |host: &str| -> anyhow::Result<u16> {
        let l = TcpListener::bind((host, 0)).with_context(|| format!("bind {host}:0"))?;
        let port = l.local_addr()?.port();
        held.push(l);
        Ok(port)
    };
    let mut ports = [(0, 0, 0); 3];
    for p in &mut ports {
        *p = (bind(client_host)?, bind("127.0.0.1")?, bind("127.0.0.1")?);
    }
    Ok(ports)
}

/// Call `check` every 50 ms until it returns `Ok(true)`; fail on its error or after `timeout`.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.0 GET to 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("HTTP response without status")?
        .parse()
        .context("HTTP status")?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_a_port_clash() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut ports = free_ports("127.0.0.1").expect("free ports");
        ports[1].2 = taken.local_addr().expect("local addr").port();
        match NatsCluster::try_start("127.0.0.1", ports, "") {
            Err(StartError::PortClash(e)) => {
                assert!(format!("{e:#}").contains("address already in use"), "{e:#}")
            }
            Err(StartError::Other(e)) => panic!("not recognised as a port clash: {e:#}"),
            Ok(_) => panic!("started although n2's http port was taken"),
        }
    }
}
