//! TLS 1.3 records for an open event stream, without rustls's connection.
//!
//! After the handshake and the response head, a lean-path stream over TLS
//! only ever writes application data: it reads nothing more from the
//! client. rustls's `ServerConnection` would still hold, for the stream's
//! whole life, its read buffer (4 KiB), the decrypter, the handshake's
//! leftovers and its own state (about 10 KiB per connection in all). So
//! once the head is out, [`take_over`] extracts the write key and sequence
//! number from rustls (the same extraction kTLS uses) and drops the rest; a
//! [`RecordSealer`] then seals each write into records with rustls's own
//! AEAD for the negotiated suite. The sealer lives beside the socket in a
//! [`SharedSocket`], so the stream's own writes and its feed's writer (while
//! the stream is parked, see `delivery::parked`) seal with the same key and
//! record sequence, one after the other.
//!
//! Limits: TLS 1.3 only (TLS 1.2 connections stay on hyper, see
//! [`crate::connection`]). The stream ends, and the client resumes on a new
//! connection, before the suite's confidentiality limit would call for a
//! key update. A `KeyUpdate` the client may send goes unanswered, as every
//! other byte it sends: browsers send none on a connection this quiet.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_rustls::{
    rustls::{
        ConnectionTrafficSecrets, ContentType, ProtocolVersion, ServerConnection,
        crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage},
    },
    server::TlsStream,
};

use crate::connection::{GuardedStream, SharedSocket, SharedWriter};

/// Most plaintext bytes in one TLS record.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// The alert `close_notify` (level warning, description 0).
pub(crate) const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Seals application data into TLS 1.3 records with a connection's write
/// key, and holds sealed bytes the socket has not taken yet.
pub struct RecordSealer {
    encrypter: Box<dyn MessageEncrypter>,
    seq: u64,
    seq_limit: u64,
    /// Sealed bytes the socket has not taken in full yet: they go out before
    /// anything else. Empty (and unallocated) the rest of the time.
    pub(crate) unsent: Bytes,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("seq", &self.seq)
            .field("unsent", &self.unsent.len())
            .finish_non_exhaustive()
    }
}

/// Takes the write side of `stream` over from rustls, once everything
/// rustls had to send is out. `Err` says why it could not: the stream is
/// then lost (its keys are, at least), and the caller closes it.
pub fn take_over(stream: TlsStream<GuardedStream>) -> Result<SharedWriter, &'static str> {
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
    let sealer = RecordSealer {
        encrypter: suite.aead_alg.encrypter(key, iv),
        seq,
        // Stop short of the limit: the last record carries the close.
        seq_limit: suite.common.confidentiality_limit.saturating_sub(1),
        unsent: Bytes::new(),
    };
    Ok(tcp.into_shared_sealed(sealer))
}

impl RecordSealer {
    /// Seals `plaintext` into as many records as it needs, back to back.
    pub(crate) fn seal(&mut self, typ: ContentType, plaintext: &[u8]) -> io::Result<Bytes> {
        let records = plaintext.len().div_ceil(MAX_RECORD_PLAINTEXT).max(1) as u64;
        if typ == ContentType::ApplicationData && self.seq + records > self.seq_limit {
            return Err(io::Error::other(
                "the tls key's confidentiality limit is reached",
            ));
        }
        let mut chunks = plaintext.chunks(MAX_RECORD_PLAINTEXT);
        let first = self.seal_one(typ, chunks.next().unwrap_or_default())?;
        if records == 1 {
            return Ok(first);
        }
        let mut joined = BytesMut::from(&first[..]);
        for chunk in chunks {
            joined.extend_from_slice(&self.seal_one(typ, chunk)?);
        }
        Ok(joined.freeze())
    }

    fn seal_one(&mut self, typ: ContentType, plaintext: &[u8]) -> io::Result<Bytes> {
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

    /// Seals `plaintext` and writes it to `socket` without waiting, as the
    /// feed's writer does for a parked stream. If the socket takes none of
    /// it, the records are dropped unsent and their sequence numbers reused:
    /// the client never saw them. If it takes part, the rest is kept in
    /// `unsent`, to go out before anything else.
    pub(crate) fn try_send(&mut self, socket: &SharedSocket, plaintext: &[u8]) -> Sent {
        if !self.unsent.is_empty() {
            return Sent::Refused;
        }
        let seq_before = self.seq;
        let Ok(sealed) = self.seal(ContentType::ApplicationData, plaintext) else {
            return Sent::Refused;
        };
        match socket.send_now(&sealed) {
            Ok(n) if n == sealed.len() => Sent::Whole,
            Ok(n) if n > 0 => {
                self.unsent = sealed.slice(n..);
                Sent::Partly(Bytes::new())
            }
            _ => {
                self.seq = seq_before;
                Sent::Refused
            }
        }
    }
}

/// What a write without waiting did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The socket took every byte.
    Whole,
    /// The socket took part: these bytes must be written, through the
    /// stream's writer, before anything else (under TLS they are empty, and
    /// the sealed rest waits in the sealer).
    Partly(Bytes),
    /// The socket took nothing (full, or failed).
    Refused,
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };
    use tokio_rustls::rustls::{
        SupportedCipherSuite,
        crypto::{
            cipher::{AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter},
            ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        },
    };

    use super::*;

    /// A sealer with a fixed key, and the client's decrypter for it.
    fn sealer_and_decrypter() -> (RecordSealer, Box<dyn MessageDecrypter>) {
        let SupportedCipherSuite::Tls13(suite) = TLS13_CHACHA20_POLY1305_SHA256 else {
            unreachable!("a tls 1.3 suite")
        };
        let key = || AeadKey::from([7u8; 32]);
        let iv = || Iv::new([9u8; 12]);
        let sealer = RecordSealer {
            encrypter: suite.aead_alg.encrypter(key(), iv()),
            seq: 0,
            seq_limit: u64::MAX,
            unsent: Bytes::new(),
        };
        (sealer, suite.aead_alg.decrypter(key(), iv()))
    }

    /// A connected pair: the client's end, and the node's as a shared socket.
    async fn pair() -> (TcpStream, SharedSocket) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, SharedSocket::plain(server))
    }

    /// Reads `count` records from `client` and opens them in order, as the
    /// client's TLS stack would: record `n` only opens with sequence `n`.
    async fn open_records(
        client: &mut TcpStream,
        decrypter: &mut dyn MessageDecrypter,
        count: u64,
    ) -> Vec<u8> {
        let mut plaintext = Vec::new();
        for seq in 0..count {
            let mut header = [0u8; 5];
            client.read_exact(&mut header).await.unwrap();
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let mut body = vec![0u8; len];
            client.read_exact(&mut body).await.unwrap();
            let message = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut body,
            );
            let opened = decrypter
                .decrypt(message, seq)
                .unwrap_or_else(|e| panic!("record {seq} does not open: {e}"));
            plaintext.extend_from_slice(opened.payload);
        }
        plaintext
    }

    /// Writes all of `bytes` to `socket`, waiting for room.
    async fn write_all(socket: &SharedSocket, bytes: &[u8]) {
        let mut done = 0;
        while done < bytes.len() {
            socket.tcp().writable().await.unwrap();
            done += socket.tcp().try_write(&bytes[done..]).unwrap_or(0);
        }
    }

    /// A socket that takes nothing costs no sequence number: the next record
    /// the client gets is the one it expects.
    #[tokio::test]
    async fn a_refused_write_spends_no_record_number() {
        let (mut client, socket) = pair().await;
        let (mut sealer, mut decrypter) = sealer_and_decrypter();
        assert_eq!(sealer.try_send(&socket, b"first"), Sent::Whole);
        // Sealed records until the socket, unread, takes one only in part
        // (or none): the kernel then refuses the next write whole.
        let filler = vec![b'f'; 8 * 1024];
        let mut fillers = 0u64;
        let mut rest_of_last = Bytes::new();
        loop {
            match sealer.try_send(&socket, &filler) {
                Sent::Whole => fillers += 1,
                Sent::Partly(rest) => {
                    assert!(rest.is_empty(), "under tls the rest waits in the sealer");
                    fillers += 1;
                    // Held aside, as the stream holds it once given back.
                    rest_of_last = std::mem::take(&mut sealer.unsent);
                    break;
                }
                Sent::Refused => break,
            }
            assert!(fillers < 10_000, "the socket never filled up");
        }
        let seq_when_full = sealer.seq;
        assert_eq!(sealer.try_send(&socket, b"refused"), Sent::Refused);
        assert_eq!(
            sealer.seq, seq_when_full,
            "the refused record's number is not spent"
        );
        assert!(sealer.unsent.is_empty());

        let reader = tokio::spawn(async move {
            let plaintext = open_records(&mut client, decrypter.as_mut(), 2 + fillers).await;
            (plaintext, client)
        });
        write_all(&socket, &rest_of_last).await;
        let sealed = sealer.seal(ContentType::ApplicationData, b"last").unwrap();
        write_all(&socket, &sealed).await;
        let (plaintext, _client) = reader.await.unwrap();
        assert!(plaintext.starts_with(b"first"));
        assert!(
            plaintext.ends_with(b"last"),
            "the last record opens in sequence"
        );
        assert_eq!(plaintext.len(), 5 + 4 + filler.len() * fillers as usize);
    }

    /// A write larger than a record is sealed into as many records, in order.
    #[tokio::test]
    async fn a_large_write_is_sealed_into_several_records() {
        let (mut client, socket) = pair().await;
        let (mut sealer, mut decrypter) = sealer_and_decrypter();
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let reader =
            tokio::spawn(async move { open_records(&mut client, decrypter.as_mut(), 3).await });
        let sealed = sealer.seal(ContentType::ApplicationData, &big).unwrap();
        write_all(&socket, &sealed).await;
        assert_eq!(sealer.seq, 3);
        assert_eq!(reader.await.unwrap(), big);
    }
}
