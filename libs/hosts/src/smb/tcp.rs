//! The TCP transport under the SMB connection, in place of the crate's own: with `TCP_NODELAY`
//! and each message written whole.
//!
//! The crate's transport writes the 4-byte length, the transform header and the body as separate
//! writes on a socket with Nagle's algorithm on, so every small request after the first waits
//! for the server's delayed ACK (tens of milliseconds): pipelined reads crawled at a fraction of
//! the link. It also reports a reset connection as a plain I/O error, which its receive loop
//! retries forever; here every way of losing the socket is `NotConnected`, which ends the loop.

use std::io;
use std::net::SocketAddr;

use futures::FutureExt;
use futures::future::BoxFuture;
use smb::transport::{IoVec, SmbTransport, SmbTransportRead, SmbTransportWrite, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Messages up to this size are copied into one buffer and written with one call; larger ones
/// are written part by part (no copy of the data).
const COALESCE: usize = 64 << 10;

pub struct Tcp {
    reader: Option<OwnedReadHalf>,
    writer: Option<OwnedWriteHalf>,
    peer: SocketAddr,
}

impl Tcp {
    /// Connect to `address` (the caller bounds the time).
    pub async fn connect(address: SocketAddr) -> io::Result<Tcp> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (reader, writer) = stream.into_split();
        Ok(Tcp {
            reader: Some(reader),
            writer: Some(writer),
            peer,
        })
    }
}

fn lost(e: io::Error) -> TransportError {
    use io::ErrorKind as K;
    match e.kind() {
        K::UnexpectedEof | K::ConnectionAborted | K::ConnectionReset | K::BrokenPipe | K::NotConnected => {
            TransportError::NotConnected
        }
        _ => TransportError::IoError(e),
    }
}

/// The direct-TCP framing of MS-SMB2 2.1: a zero byte and a 24-bit big-endian length.
fn frame_header(len: usize) -> [u8; 4] {
    let len = len as u32;
    [0, (len >> 16) as u8, (len >> 8) as u8, len as u8]
}

impl SmbTransport for Tcp {
    fn connect<'a>(
        &'a mut self,
        _server: &'a str,
        _address: SocketAddr,
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        // Connected in `Tcp::connect`; the connection is built from it with `from_transport`.
        async { Err(TransportError::AlreadyConnected) }.boxed()
    }

    fn default_port(&self) -> u16 {
        445
    }

    fn split(
        self: Box<Self>,
    ) -> smb::transport::error::Result<(Box<dyn SmbTransportRead>, Box<dyn SmbTransportWrite>)> {
        let Tcp { reader, writer, peer } = *self;
        Ok((
            Box::new(Tcp {
                reader,
                writer: None,
                peer,
            }),
            Box::new(Tcp {
                reader: None,
                writer,
                peer,
            }),
        ))
    }

    fn remote_address(&self) -> smb::transport::error::Result<SocketAddr> {
        Ok(self.peer)
    }
}

impl SmbTransportWrite for Tcp {
    fn send_raw<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move {
            let writer = self.writer.as_mut().ok_or(TransportError::NotConnected)?;
            writer.write_all(buf).await.map_err(lost)
        }
        .boxed()
    }

    fn send<'a>(&'a mut self, data: &'a IoVec) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move {
            let writer = self.writer.as_mut().ok_or(TransportError::NotConnected)?;
            let total = data.total_size();
            let header = frame_header(total);
            if total <= COALESCE {
                let mut whole = Vec::with_capacity(header.len() + total);
                whole.extend_from_slice(&header);
                for part in data.iter() {
                    whole.extend_from_slice(part);
                }
                writer.write_all(&whole).await.map_err(lost)
            } else {
                writer.write_all(&header).await.map_err(lost)?;
                for part in data.iter() {
                    writer.write_all(part).await.map_err(lost)?;
                }
                Ok(())
            }
        }
        .boxed()
    }
}

impl SmbTransportRead for Tcp {
    fn receive_exact<'a>(
        &'a mut self,
        out: &'a mut [u8],
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move {
            let reader = self.reader.as_mut().ok_or(TransportError::NotConnected)?;
            reader.read_exact(out).await.map(|_| ()).map_err(lost)
        }
        .boxed()
    }

    fn receive<'a>(&'a mut self) -> BoxFuture<'a, smb::transport::error::Result<Vec<u8>>> {
        async move {
            let reader = self.reader.as_mut().ok_or(TransportError::NotConnected)?;
            let mut header = [0u8; 4];
            reader.read_exact(&mut header).await.map_err(lost)?;
            if header[0] != 0 {
                return Err(TransportError::InvalidMessage);
            }
            let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            // Read into spare capacity: no zero-fill of up to 8 MiB per message.
            let mut data = Vec::with_capacity(len);
            let got = (&mut *reader)
                .take(len as u64)
                .read_to_end(&mut data)
                .await
                .map_err(lost)?;
            if got < len {
                return Err(TransportError::NotConnected);
            }
            Ok(data)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_a_24_bit_length() {
        assert_eq!(frame_header(0x01_02_03), [0, 1, 2, 3]);
        assert_eq!(frame_header(68), [0, 0, 0, 68]);
    }
}
