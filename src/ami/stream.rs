//! The AMI socket as the connection task's `Framed` sees it: TCP or TLS, and optionally
//! tapped: every byte read is also sent to a channel, for `record` (what Asterisk sent,
//! banner and frames; what we write, the login among it, is never tapped).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

/// Where a tapped stream sends what it reads, in order.
pub type Tap = mpsc::UnboundedSender<Bytes>;

/// The connected socket, plain or TLS, with its tap.
pub struct AmiStream {
    io: Io,
    tap: Option<Tap>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AmiStream {
    pub fn plain(stream: TcpStream, tap: Option<Tap>) -> AmiStream {
        AmiStream {
            io: Io::Plain(stream),
            tap,
        }
    }

    pub fn tls(stream: TlsStream<TcpStream>, tap: Option<Tap>) -> AmiStream {
        AmiStream {
            io: Io::Tls(Box::new(stream)),
            tap,
        }
    }
}

impl AsyncRead for AmiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let (Poll::Ready(Ok(())), Some(tap)) = (&polled, &this.tap) {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                // A tap whose reader is gone is no reason to drop the connection.
                let _ = tap.send(Bytes::copy_from_slice(read));
            }
        }
        polled
    }
}

impl AsyncWrite for AmiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
