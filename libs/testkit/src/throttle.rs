//! A TCP proxy on loopback that passes bytes on at a fixed rate in each direction: a server on
//! a very slow link, or one that trickles its answers to hold a client for good.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection to its port on to `target`, at most `bytes_per_sec` each way.
/// Stops on drop.
pub struct Throttle {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// Bytes are passed on in slices every this often.
const TICK: Duration = Duration::from_millis(50);

impl Throttle {
    pub async fn start(target: SocketAddr, bytes_per_sec: u64) -> anyhow::Result<Throttle> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the throttle")?;
        let port = listener.local_addr()?.port();
        let per_tick = ((bytes_per_sec as u128 * TICK.as_millis() / 1000) as usize).max(1);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pass(cr, sw, per_tick), pass(sr, cw, per_tick));
                });
            }
        });
        Ok(Throttle { port, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy `from` to `to`, at most `per_tick` bytes every [`TICK`].
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    per_tick: usize,
) {
    let mut buf = vec![0u8; per_tick];
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
