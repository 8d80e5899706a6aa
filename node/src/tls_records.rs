//! TLS records for an open event stream, without rustls's connection.
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
//! An HTTP/2 connection reads as well as writes, for its whole life.
//! [`take_over_connection`] takes both keys from rustls right after the
//! handshake, and hyper then serves the connection over a
//! [`RecordStream`], which opens each record the client sends and seals
//! each write, holding two keys and, while a record is read, that record.
//!
//! Records are TLS 1.3's or TLS 1.2's, with the negotiated suite's AEAD,
//! for lean-path streams and HTTP/2 connections alike. The stream ends,
//! and the client resumes on a new connection, before the suite's
//! confidentiality limit would call for a key update. A `KeyUpdate` (TLS
//! 1.3) or a renegotiation (TLS 1.2) the client may ask for goes
//! unanswered, as every other byte it sends, on a lean-path stream; on an
//! HTTP/2 connection it ends the connection. Browsers ask for neither.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{
    rustls::{
        ConnectionTrafficSecrets, ContentType, ProtocolVersion, ServerConnection,
        SupportedCipherSuite,
        crypto::cipher::{
            AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
            OutboundPlainMessage,
        },
    },
    server::TlsStream,
};

use crate::connection::{GuardedStream, SharedSocket, SharedWriter};

/// Most plaintext bytes in one TLS record.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// The alert `close_notify` (level warning, description 0).
pub(crate) const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Seals application data into TLS records with a connection's write
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
        .ok_or("no cipher suite negotiated")?;
    if connection.wants_write() {
        return Err("records are still waiting to be sent");
    }
    let (tcp, connection): (GuardedStream, ServerConnection) = stream.into_inner();
    let secrets = connection
        .dangerous_extract_secrets()
        .map_err(|_| "rustls refused to hand over the keys")?;
    let (seq, traffic) = secrets.tx;
    let sealer = RecordSealer::new(suite, traffic, seq)?;
    Ok(tcp.into_shared_sealed(sealer))
}

/// The key and IV of one direction's traffic secrets.
fn key_and_iv(traffic: ConnectionTrafficSecrets) -> Result<(AeadKey, Iv), &'static str> {
    match traffic {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err("an unknown cipher"),
    }
}

impl RecordSealer {
    /// A sealer with the write secrets rustls handed over, from record
    /// number `seq` on: TLS 1.3's records, or TLS 1.2's, whose AEAD nonce
    /// rustls hands over whole (the fixed part, then the explicit part it
    /// starts from) and whose encrypter takes it in those two parts.
    fn new(
        suite: SupportedCipherSuite,
        traffic: ConnectionTrafficSecrets,
        seq: u64,
    ) -> Result<Self, &'static str> {
        let (key, iv) = key_and_iv(traffic)?;
        let (encrypter, common) = match suite {
            SupportedCipherSuite::Tls13(suite) => {
                (suite.aead_alg.encrypter(key, iv), &suite.common)
            }
            SupportedCipherSuite::Tls12(suite) => {
                let fixed = suite.aead_alg.key_block_shape().fixed_iv_len;
                let (fixed, explicit) = iv
                    .as_ref()
                    .split_at_checked(fixed)
                    .ok_or("a tls 1.2 nonce shorter than its suite's")?;
                (
                    suite.aead_alg.encrypter(key, fixed, explicit),
                    &suite.common,
                )
            }
        };
        Ok(Self {
            encrypter,
            seq,
            // Stop short of the limit: the last record carries the close.
            seq_limit: common.confidentiality_limit.saturating_sub(1),
            unsent: Bytes::new(),
        })
    }

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

/// Most bytes of a TLS 1.3 record's body: the plaintext, its content type
/// and up to 255 bytes of tag and padding (RFC 8446, 5.2).
const MAX_RECORD_BODY: usize = MAX_RECORD_PLAINTEXT + 256;

/// What a refused take-over of a whole connection leaves the caller.
pub enum NotTaken {
    /// rustls keeps the connection: serve it as it is.
    Kept(Box<TlsStream<GuardedStream>>),
    /// The keys were taken but could not be used: close the connection.
    Lost(&'static str),
}

/// Takes a whole TLS connection (1.3 or 1.2) over from rustls right after its
/// handshake, both ways: an HTTP/2 connection's reads and writes then go
/// through a [`RecordStream`], which holds two AEAD keys and the record
/// being read, where rustls's `ServerConnection` held about 10 KiB for the
/// connection's whole life.
///
/// Only for a handshake read with `GuardedStream::align_tls_records` on.
/// rustls goes on reading after the handshake's last record (tokio-rustls
/// reads while rustls wants to), and may hold part of the client's next
/// record: the connection is read through rustls until the record ends
/// (for `wait` at most), and what it decrypted goes first.
pub async fn take_over_connection(
    mut stream: TlsStream<GuardedStream>,
    wait: std::time::Duration,
) -> Result<RecordStream, NotTaken> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let connection = stream.get_ref().1;
    let Some(suite) = connection.negotiated_cipher_suite() else {
        stream.get_mut().0.align_tls_records(false);
        return Err(NotTaken::Kept(Box::new(stream)));
    };
    let mut early = Vec::new();
    let settled = tokio::time::timeout(wait, async {
        // Session tickets and the like go out before the keys change hands.
        stream.flush().await?;
        let mut chunk = [0u8; 1024];
        while !stream.get_ref().0.at_tls_record_boundary() {
            match stream.read(&mut chunk).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => early.extend_from_slice(&chunk[..n]),
            }
        }
        // Whole records rustls decrypted before the boundary.
        loop {
            match io::Read::read(&mut stream.get_mut().1.reader(), &mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => early.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    if !matches!(settled, Ok(Ok(()))) || stream.get_ref().1.wants_write() {
        return Err(NotTaken::Lost("the client's record did not end"));
    }
    stream.get_mut().0.align_tls_records(false);
    let (io, connection): (GuardedStream, ServerConnection) = stream.into_inner();
    let secrets = connection
        .dangerous_extract_secrets()
        .map_err(|_| NotTaken::Lost("rustls refused to hand over the keys"))?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let sealer = RecordSealer::new(suite, tx, tx_seq).map_err(NotTaken::Lost)?;
    let (rx_key, rx_iv) = key_and_iv(rx).map_err(NotTaken::Lost)?;
    let (opener, tls12) = match suite {
        SupportedCipherSuite::Tls13(suite) => (suite.aead_alg.decrypter(rx_key, rx_iv), false),
        // Each TLS 1.2 record carries its explicit nonce, if the suite has
        // one: the decrypter takes the fixed part alone.
        SupportedCipherSuite::Tls12(suite) => {
            let fixed = suite.aead_alg.key_block_shape().fixed_iv_len;
            let fixed = rx_iv
                .as_ref()
                .get(..fixed)
                .ok_or(NotTaken::Lost("a tls 1.2 nonce shorter than its suite's"))?;
            (suite.aead_alg.decrypter(rx_key, fixed), true)
        }
    };
    let plain = 0..early.len();
    Ok(RecordStream {
        io,
        sealer,
        opener,
        tls12,
        rx_seq,
        header: [0; 5],
        header_read: 0,
        body: early,
        body_read: 0,
        plain,
        peer_closed: false,
        close_sent: false,
    })
}

/// A TLS connection's records, read and written with its two keys and
/// nothing else of rustls ([`take_over_connection`]).
///
/// A record is read whole into a buffer of its own size, opened in place
/// and handed out; the buffer is freed once it has all been read, so an
/// idle connection holds none. Writes are sealed into records as they
/// come; what the socket does not take waits in the sealer and goes out
/// before anything else. The client's `close_notify` ends the reads; any
/// other alert, and any handshake message (a `KeyUpdate`: browsers send
/// none), fails them, and the connection closes.
pub struct RecordStream {
    io: GuardedStream,
    sealer: RecordSealer,
    opener: Box<dyn MessageDecrypter>,
    /// TLS 1.2's records say their content type in the clear (an alert is
    /// an `Alert` record); TLS 1.3's all say application data.
    tls12: bool,
    rx_seq: u64,
    header: [u8; 5],
    header_read: usize,
    /// The record being read, then its plaintext while `plain` is not
    /// empty; unallocated otherwise.
    body: Vec<u8>,
    body_read: usize,
    plain: std::ops::Range<usize>,
    peer_closed: bool,
    close_sent: bool,
}

impl std::fmt::Debug for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("rx_seq", &self.rx_seq)
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

fn bad_record(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl RecordStream {
    /// Reads one whole record and opens it: its plaintext lands in `plain`,
    /// or the peer's `close_notify` in `peer_closed`.
    fn poll_record(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.header_read < self.header.len() {
            let mut header = ReadBuf::new(&mut self.header[self.header_read..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut header))?;
            let read = header.filled().len();
            if read == 0 {
                if self.header_read == 0 {
                    // Closed without close_notify: an end all the same.
                    self.peer_closed = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.header_read += read;
            if self.header_read == self.header.len() {
                let typ = ContentType::from(self.header[0]);
                let alert12 = self.tls12 && typ == ContentType::Alert;
                if typ != ContentType::ApplicationData && !alert12 {
                    return Poll::Ready(Err(bad_record("a record that is not application data")));
                }
                let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if len > MAX_RECORD_BODY {
                    return Poll::Ready(Err(bad_record("an oversized tls record")));
                }
                self.body = vec![0; len];
                self.body_read = 0;
            }
        }
        while self.body_read < self.body.len() {
            let mut body = ReadBuf::new(&mut self.body[self.body_read..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut body))?;
            let read = body.filled().len();
            if read == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.body_read += read;
        }
        self.header_read = 0;
        let base = self.body.as_ptr() as usize;
        // TLS 1.2's AEAD authenticates the record's type with it.
        let message = InboundOpaqueMessage::new(
            ContentType::from(self.header[0]),
            ProtocolVersion::TLSv1_2,
            &mut self.body,
        );
        let opened = self
            .opener
            .decrypt(message, self.rx_seq)
            .map_err(|_| bad_record("a tls record that does not open"))?;
        self.rx_seq += 1;
        let start = opened.payload.as_ptr() as usize - base;
        let range = start..start + opened.payload.len();
        match opened.typ {
            ContentType::ApplicationData => self.plain = range,
            ContentType::Alert if self.body[range] == CLOSE_NOTIFY => self.peer_closed = true,
            ContentType::Alert => {
                return Poll::Ready(Err(bad_record("the client sent a tls alert")));
            }
            _ => {
                return Poll::Ready(Err(bad_record(
                    "a tls handshake message after the handshake (a key update?)",
                )));
            }
        }
        if self.plain.is_empty() {
            self.body = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what the sealer holds unsent.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.sealer.unsent.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.sealer.unsent))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealer.unsent = self.sealer.unsent.slice(written..);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for RecordStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.plain.is_empty() && !this.peer_closed {
            ready!(this.poll_record(cx))?;
        }
        if this.plain.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let n = this.plain.len().min(buf.remaining());
        buf.put_slice(&this.body[this.plain.start..this.plain.start + n]);
        this.plain.start += n;
        if this.plain.is_empty() {
            this.body = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RecordStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(this.poll_unsent(cx))?;
        let n = buf.len().min(MAX_RECORD_PLAINTEXT);
        let sealed = this.sealer.seal(ContentType::ApplicationData, &buf[..n])?;
        // The plaintext is taken once sealed: what the socket does not take
        // now waits in the sealer, for the next write or flush.
        this.sealer.unsent = sealed;
        if let Poll::Ready(Err(error)) = this.poll_unsent(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_unsent(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_unsent(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            this.sealer.unsent = this.sealer.seal(ContentType::Alert, &CLOSE_NOTIFY)?;
            ready!(this.poll_unsent(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
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
    use std::time::Duration;

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

    /// A server that offers `h2` and lets its keys be taken, as the node's
    /// does, and a client that trusts it and asks for `h2`.
    fn h2_configs() -> (
        tokio_rustls::rustls::ServerConfig,
        tokio_rustls::rustls::ClientConfig,
    ) {
        let (server, client, _) = h2_configs_and_roots();
        (server, client)
    }

    /// [`h2_configs`], and the roots its client trusts.
    fn h2_configs_and_roots() -> (
        tokio_rustls::rustls::ServerConfig,
        tokio_rustls::rustls::ClientConfig,
        tokio_rustls::rustls::RootCertStore,
    ) {
        use std::sync::Arc;

        use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = certified.cert.der().clone();
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        (server, client, roots)
    }

    /// A TLS 1.3 connection with ALPN `h2` between a rustls client and the
    /// node's side, handshaken as `serve_tls` does it and taken over from
    /// rustls, once the node has read the bytes the client sent right
    /// after its handshake.
    async fn taken_over_pair() -> (tokio_rustls::client::TlsStream<TcpStream>, RecordStream) {
        let (server, client) = h2_configs();
        taken_over_pair_with(server, client).await
    }

    /// [`taken_over_pair`] with these configurations.
    async fn taken_over_pair_with(
        server: tokio_rustls::rustls::ServerConfig,
        client: tokio_rustls::rustls::ClientConfig,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, RecordStream) {
        use std::sync::Arc;

        use tokio::io::AsyncWriteExt;
        use tokio_rustls::rustls;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_side = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            tls.write_all(b"PRI * HTTP/2.0").await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        let records = accept_and_take_over(listener, server, b"PRI * HTTP/2.0").await;
        (client_side.await.unwrap(), records)
    }

    /// The node's side of a connection from `listener`: handshaken with
    /// `server` as `serve_tls` does it (ALPN `h2`), taken over from rustls,
    /// and its first bytes read and checked against `preface`.
    async fn accept_and_take_over(
        listener: TcpListener,
        server: tokio_rustls::rustls::ServerConfig,
        preface: &[u8],
    ) -> RecordStream {
        let mut listener =
            crate::connection::GuardedListener::new(listener, Duration::from_secs(5));
        let (mut stream, _) = axum::serve::Listener::accept(&mut listener).await;
        stream.align_tls_records(true);
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)).accept(stream),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let Ok(mut records) = take_over_connection(tls, Duration::from_secs(5)).await else {
            panic!("the connection is taken over")
        };
        let mut first = vec![0u8; preface.len()];
        tokio::time::timeout(Duration::from_secs(10), records.read_exact(&mut first))
            .await
            .expect("the client's first bytes arrive")
            .unwrap();
        assert_eq!(first, preface);
        records
    }

    /// Both ways, the connection's bytes go through as they would through
    /// rustls: what the client sent right after its handshake, a write of
    /// several records, and the client's close at the end.
    #[tokio::test]
    async fn a_connection_taken_over_from_rustls_reads_and_writes_its_records() {
        let (client, node) = taken_over_pair().await;
        reads_writes_and_closes(client, node).await;
    }

    /// The same over TLS 1.2 with each of its AEADs: AES-GCM's records
    /// carry an explicit nonce, ChaCha20-Poly1305's none, and the client's
    /// close comes as an `Alert` record.
    #[tokio::test]
    async fn a_tls_1_2_connection_is_taken_over_with_every_aead() {
        use std::sync::Arc;

        use tokio_rustls::rustls::{self, crypto::ring::cipher_suite};

        for suite in [
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            let (server, _, roots) = h2_configs_and_roots();
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::ring::default_provider()
            };
            let mut tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls12.alpn_protocols = vec![b"h2".to_vec()];
            let (client, node) = taken_over_pair_with(server, tls12).await;
            assert_eq!(
                client.get_ref().1.negotiated_cipher_suite(),
                Some(suite),
                "{suite:?}"
            );
            reads_writes_and_closes(client, node).await;
        }
    }

    /// A write of several records from the node, a few bytes from the
    /// client, then each side's close, checked from the other.
    async fn reads_writes_and_closes(
        mut client: tokio_rustls::client::TlsStream<TcpStream>,
        mut node: RecordStream,
    ) {
        use tokio::io::AsyncWriteExt;

        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        node.write_all(&big).await.unwrap();
        node.flush().await.unwrap();
        let mut got = vec![0u8; big.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);

        client.write_all(b"SM\r\n\r\n").await.unwrap();
        client.flush().await.unwrap();
        let mut more = [0u8; 6];
        node.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"SM\r\n\r\n");

        // The node's close reaches the client as a TLS close, and the
        // client's close ends the node's reads.
        node.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        client.shutdown().await.unwrap();
        let mut end = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), node.read_to_end(&mut end)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    }

    /// A key update from the client cannot be followed: the node's reads
    /// fail at once rather than wait or return garbage.
    #[tokio::test]
    async fn a_key_update_from_the_client_fails_the_reads() {
        use tokio::io::AsyncWriteExt;

        let (mut client, mut node) = taken_over_pair().await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), node.read(&mut buf))
            .await
            .expect("the read ends");
        let error = read.expect_err("a key update fails the read");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    /// A client whose records reach the node a few bytes at a time, its
    /// first bytes of HTTP/2 sent together with the end of its handshake:
    /// rustls ends the handshake with no part of the next record read, so
    /// nothing is lost when the node takes the connection over.
    #[tokio::test]
    async fn bytes_sent_with_the_handshakes_end_are_not_lost_in_the_take_over() {
        use std::{
            io::{Read, Write},
            sync::Arc,
        };

        use tokio_rustls::rustls;

        /// Writes at most a few bytes at a time, a moment apart.
        struct Trickle(std::net::TcpStream);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Trickle {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(1));
                self.0.write(&buf[..buf.len().min(7)])
            }
            // rustls writes each record as a buffer of its own: the few
            // bytes go across records, as TCP may cut them.
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                let joined: Vec<u8> = bufs
                    .iter()
                    .flat_map(|b| b.iter().copied())
                    .take(7)
                    .collect();
                self.write(&joined)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.flush()
            }
        }

        let (server, client) = h2_configs();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_side = tokio::task::spawn_blocking(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
            // Sent as soon as the handshake allows: with its last flight.
            tls.writer().write_all(b"PRI * HTTP/2.0\r\n\r\nSM").unwrap();
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut trickle = Trickle(tcp);
            while tls.is_handshaking() || tls.wants_write() {
                tls.complete_io(&mut trickle).unwrap();
            }
            (tls, trickle)
        });
        let _node = accept_and_take_over(listener, server, b"PRI * HTTP/2.0\r\n\r\nSM").await;
        let _client = client_side.await.unwrap();
    }
}
