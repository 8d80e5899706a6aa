//! TLS 1.3 records for an open event stream, without rustls's connection.
//!
//! After the handshake and the response head, a lean-path stream over TLS
//! only ever writes application data: it reads nothing more from the
//! client. rustls's `ServerConnection` would still hold, for the stream's
//! whole life, its read buffer (4 KiB), the decrypter, the handshake's
//! leftovers and its own state (about 10 KiB per connection in all). So
//! once the head is out, [`RecordWriter::take_over`] extracts the write
//! key and sequence number from rustls (the same extraction kTLS uses) and
//! drops the rest; [`RecordWriter`] then seals each write into records
//! with rustls's own AEAD for the negotiated suite.
//!
//! Limits: TLS 1.3 only (TLS 1.2 connections stay on hyper, see
//! [`crate::connection`]). The stream ends, and the client resumes on a new
//! connection, before the suite's confidentiality limit would call for a
//! key update. A `KeyUpdate` the client may send goes unanswered, as every
//! other byte it sends: browsers send none on a connection this quiet.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use tokio::{io::AsyncWrite, net::TcpStream};
use tokio_rustls::{
    rustls::{
        ConnectionTrafficSecrets, ContentType, ProtocolVersion, ServerConnection,
        crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage},
    },
    server::TlsStream,
};

use crate::connection::GuardedStream;

/// Most plaintext bytes in one TLS record.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// The alert `close_notify` (level warning, description 0).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Writes TLS 1.3 application-data records to the socket.
pub struct RecordWriter {
    tcp: GuardedStream,
    encrypter: Box<dyn MessageEncrypter>,
    seq: u64,
    seq_limit: u64,
    // A sealed record the socket has not taken in full yet; empty (and
    // unallocated) the rest of the time.
    pending: Bytes,
    closing: bool,
}

impl RecordWriter {
    /// Takes the write side of `stream` over from rustls, once everything
    /// rustls had to send is out. `Err` says why it could not: the stream
    /// is then lost (its keys are, at least), and the caller closes it.
    pub fn take_over(stream: TlsStream<GuardedStream>) -> Result<Self, &'static str> {
        let connection = stream.get_ref().1;
        let suite = connection
            .negotiated_cipher_suite()
            .and_then(|s| s.tls13())
            .ok_or("not a tls 1.3 connection")?;
        if connection.wants_write() {
            return Err("records are still waiting to be sent");
        }
        let (tcp, connection): (GuardedStream, ServerConnection) = stream.into_inner();
        let secrets = connection
            .dangerous_extract_secrets()
            .map_err(|_| "rustls refused to hand over the keys")?;
        let (seq, traffic) = secrets.tx;
        let (key, iv) = match traffic {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return Err("an unknown cipher"),
        };
        Ok(Self {
            tcp,
            encrypter: suite.aead_alg.encrypter(key, iv),
            seq,
            // Stop short of the limit: the last record carries the close.
            seq_limit: suite.common.confidentiality_limit.saturating_sub(1),
            pending: Bytes::new(),
            closing: false,
        })
    }

    /// The TCP socket, for watching the client leave.
    pub fn tcp(&self) -> &TcpStream {
        self.tcp.tcp()
    }

    fn seal(&mut self, typ: ContentType, plaintext: &[u8]) -> io::Result<Bytes> {
        if self.seq >= self.seq_limit && typ == ContentType::ApplicationData {
            return Err(io::Error::other(
                "the tls key's confidentiality limit is reached",
            ));
        }
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(plaintext),
        };
        let sealed = self
            .encrypter
            .encrypt(message, self.seq)
            .map_err(io::Error::other)?;
        self.seq += 1;
        Ok(Bytes::from(sealed.encode()))
    }

    /// Writes what is left of the pending record.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.has_remaining() {
            let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(written);
        }
        // Release the record's buffer while the stream idles.
        self.pending = Bytes::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RecordWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let taken = buf.len().min(MAX_RECORD_PLAINTEXT);
        if taken == 0 {
            return Poll::Ready(Ok(0));
        }
        self.pending = self.seal(ContentType::ApplicationData, &buf[..taken])?;
        // The bytes are accepted once sealed: what the socket does not take
        // now goes out on the next write or flush.
        let _ = self.poll_pending(cx)?;
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        if !self.closing {
            self.closing = true;
            self.pending = self.seal(ContentType::Alert, &CLOSE_NOTIFY)?;
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
