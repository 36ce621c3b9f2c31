//! A TCP link between two loopback endpoints that a test can cut and heal: a partition between
//! two sites (say, the leaf-node connection between their NATS servers) without network
//! namespaces. Cut, every connection through it is closed at once and new ones are closed as
//! soon as they are accepted; healed, connections pass again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection to its port on to `target` while not cut. Stops on drop.
pub struct Link {
    port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    cut: bool,
    connections: Vec<tokio::task::AbortHandle>,
}

impl Link {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the link")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = shared.lock().expect("link state");
                if state.cut {
                    drop(client);
                    continue;
                }
                state.connections.retain(|c| !c.is_finished());
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                state.connections.push(forward.abort_handle());
            }
        });
        Ok(Link { port, state, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Close every connection through the link and every new one.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("link state");
        state.cut = true;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Let connections through again.
    pub fn heal(&self) {
        self.state.lock().expect("link state").cut = false;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
