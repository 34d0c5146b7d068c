//! The AMI socket as the connection task's `Framed` sees it: TCP or TLS, optionally
//! tapped (every byte read is also sent to a channel, for `record`: what Asterisk sent,
//! banner and frames; what we write, the login among it, is never tapped), and with its
//! reads paced while events stream in.
//!
//! Pacing: Asterisk writes every event with a write of its own on a socket with Nagle
//! off (`main/manager.c`: `process_events` calls `send_string` per queued event, and the
//! session sets `TCP_NODELAY`), so under load each event is a TCP segment of its own.
//! Tokio's epoll is edge-triggered: each segment wakes the runtime's thread, and each read
//! costs a `recvfrom` that also sends an ACK back. At a few hundred calls a second that
//! was a read per four or five events. So after a read that emptied the socket, if the
//! read before it came less than `BUSY` (2 ms) earlier, the plain TCP socket is taken
//! off epoll for `PACE` (1 ms): the kernel queues what arrives without waking anyone, and
//! once it is over the socket is read directly (a non-blocking `recv`), what came
//! meanwhile in one go. While events keep coming the socket stays off epoll, read once a
//! pause; a pause in which nothing came puts it back on epoll (`EPOLL_CTL_ADD` reports it
//! readable at once if anything came since) to wait for the next. A timer alone would not
//! do: the socket's edges would still wake the thread. A lone event (reads further apart
//! than `BUSY`) is read at once; under load an event waits at most about `PACE` (plus the
//! timer's tick) before it is read. [`ReadNow`] ends a pause early (a FastAGI claim
//! waiting for its channel's event); a write (an action, a ping) puts the socket back on
//! epoll. TLS reads are not paced: the TLS stream cannot be taken apart and put back
//! together.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

/// Where a tapped stream sends what it reads, in order.
pub type Tap = mpsc::UnboundedSender<Bytes>;

/// How long a pause holds reads back.
const PACE: Duration = Duration::from_millis(1);
/// Reads closer together than this mean events are streaming in: the next short read
/// pauses.
const BUSY: Duration = Duration::from_millis(2);

/// Ends the current pause of the AMI socket's reads (see the module doc); cloneable, and
/// one per connection task: it outlives reconnects.
#[derive(Debug, Clone, Default)]
pub struct ReadNow(Arc<ReadNowInner>);

#[derive(Debug, Default)]
struct ReadNowInner {
    asked: AtomicBool,
    /// The reader in a pause.
    reader: AtomicWaker,
}

impl ReadNow {
    /// The socket is read at once, even in a pause (the next pause is not affected).
    pub fn ask(&self) {
        self.0.asked.store(true, Ordering::Release);
        self.0.reader.wake();
    }

    /// Whether a read was asked for since the last time; registers `cx` for the next ask.
    fn take(&self, cx: &Context<'_>) -> bool {
        self.0.reader.register(cx.waker());
        self.0.asked.swap(false, Ordering::AcqRel)
    }
}

/// The connected socket, plain or TLS, with its tap.
pub struct AmiStream {
    io: Io,
    tap: Option<Tap>,
    read_now: ReadNow,
    /// When the last read that brought bytes came.
    last_read: Option<Instant>,
    /// The end of the current pause (the socket is then [`Io::Paused`]).
    pause: Option<Pin<Box<Sleep>>>,
}

enum Io {
    Plain(TcpStream),
    /// Off epoll: in a pause, or read directly until it is empty (while events stream in).
    Paused(std::net::TcpStream),
    /// Taking it off or putting it back failed: the connection is lost.
    Broken,
    Tls(Box<TlsStream<TcpStream>>),
}

impl AmiStream {
    pub fn plain(stream: TcpStream, tap: Option<Tap>, read_now: ReadNow) -> AmiStream {
        AmiStream {
            io: Io::Plain(stream),
            tap,
            read_now,
            last_read: None,
            pause: None,
        }
    }

    pub fn tls(stream: TlsStream<TcpStream>, tap: Option<Tap>) -> AmiStream {
        AmiStream {
            io: Io::Tls(Box::new(stream)),
            tap,
            read_now: ReadNow::default(),
            last_read: None,
            pause: None,
        }
    }

    /// After a read of `read` bytes out of `offered` at `now`: a short read (the socket is
    /// empty) close after the one before starts a pause, off epoll.
    fn pace(&mut self, read: usize, offered: usize, now: Instant) -> io::Result<()> {
        let busy = self.last_read.is_some_and(|last| now < last + BUSY);
        self.last_read = Some(now);
        if read == 0 || read >= offered || !busy {
            return Ok(());
        }
        self.io = match std::mem::replace(&mut self.io, Io::Broken) {
            // Deregisters the socket from the runtime's epoll.
            Io::Plain(stream) => {
                Io::Paused(stream.into_std().map_err(|e| epoll_failed("pause", &e))?)
            }
            other => other,
        };
        if let Io::Paused(_) = self.io {
            self.pause = Some(Box::pin(tokio::time::sleep_until(now + PACE)));
        }
        Ok(())
    }

    /// A read straight from the socket while it is off epoll (a pause just ended, or the
    /// last read filled the buffer); whether it read (end of stream included). When
    /// nothing is there the socket goes back on epoll to wait for more.
    fn read_off_epoll(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        let Io::Paused(stream) = &mut self.io else {
            return Ok(false);
        };
        loop {
            match io::Read::read(stream, buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.resume()?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts the socket back on epoll (ending any pause), which reports it readable at once
    /// if anything arrived meanwhile.
    fn resume(&mut self) -> io::Result<()> {
        self.pause = None;
        self.io = match std::mem::replace(&mut self.io, Io::Broken) {
            Io::Paused(stream) => {
                Io::Plain(TcpStream::from_std(stream).map_err(|e| epoll_failed("resume", &e))?)
            }
            other => other,
        };
        Ok(())
    }

    /// Whether the current pause, if any, still holds reads back.
    fn paused(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(pause) = &mut self.pause else {
            return false;
        };
        if pause.as_mut().poll(cx).is_pending() && !self.read_now.take(cx) {
            return true;
        }
        self.pause = None;
        false
    }

    /// The socket for a write (a write puts it back on epoll).
    fn writable(&mut self) -> io::Result<&mut Io> {
        self.resume()?;
        Ok(&mut self.io)
    }
}

/// Taking the socket off the runtime's epoll, or putting it back, failed (`epoll_ctl`:
/// out of memory, or `fs.epoll.max_user_watches` reached): the connection is given up and
/// made anew.
fn epoll_failed(what: &str, error: &io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("could not {what} reading the AMI socket (epoll_ctl: {error})"),
    )
}

/// The socket after a failed pause or resume.
fn broken() -> io::Error {
    io::Error::other("the AMI socket was lost when its reads were paused or resumed")
}

impl AsyncRead for AmiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.paused(cx) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let offered = buf.remaining();
        let polled = if this.read_off_epoll(buf)? {
            Poll::Ready(Ok(()))
        } else {
            match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                Io::Paused(_) | Io::Broken => return Poll::Ready(Err(broken())),
            }
        };
        if let Poll::Ready(Ok(())) = &polled {
            let read = &buf.filled()[before..];
            if let Some(tap) = &this.tap
                && !read.is_empty()
            {
                // A tap whose reader is gone is no reason to drop the connection.
                let _ = tap.send(Bytes::copy_from_slice(read));
            }
            this.pace(read.len(), offered, Instant::now())?;
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
        match self.get_mut().writable()? {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Paused(_) | Io::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().writable()? {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Paused(_) | Io::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().writable()? {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Paused(_) | Io::Broken => Poll::Ready(Err(broken())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Our side of a loopback connection, paced, and Asterisk's side.
    async fn connected() -> (AmiStream, TcpStream, ReadNow) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (asterisk, _) = listener.accept().await.unwrap();
        let read_now = ReadNow::default();
        (
            AmiStream::plain(ours, None, read_now.clone()),
            asterisk,
            read_now,
        )
    }

    /// Asterisk writes `what`; returns what the next read brings and when it came.
    async fn send_and_read(
        stream: &mut AmiStream,
        asterisk: &mut TcpStream,
        what: &[&str],
    ) -> (String, Instant) {
        for part in what {
            asterisk.write_all(part.as_bytes()).await.unwrap();
        }
        let wanted: usize = what.iter().map(|p| p.len()).sum();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < wanted {
            let n = stream.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        (String::from_utf8(got).unwrap(), Instant::now())
    }

    /// Two reads close together: the second pauses the socket. Times are tokio's (paused
    /// in these tests, so they count the pause without waiting it out).
    async fn paused_stream() -> (AmiStream, TcpStream, ReadNow, Instant) {
        let (mut stream, mut asterisk, read_now) = connected().await;
        send_and_read(&mut stream, &mut asterisk, &["a"]).await;
        let (_, second) = send_and_read(&mut stream, &mut asterisk, &["b"]).await;
        assert!(
            stream.pause.is_some(),
            "a short read right after another pauses"
        );
        (stream, asterisk, read_now, second)
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_what_arrives_in_a_pause_is_read_after_it_in_one_go() {
        let (mut stream, mut asterisk, _, paused_at) = paused_stream().await;
        let (got, at) = send_and_read(&mut stream, &mut asterisk, &["c", "d"]).await;
        assert_eq!(got, "cd");
        assert!(
            at >= paused_at + PACE,
            "read {:?} after the pause began",
            at - paused_at
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_socket_stays_off_epoll_while_events_come_and_goes_back_when_they_stop() {
        let (mut stream, mut asterisk, _, _) = paused_stream().await;
        asterisk.write_all(b"cde").await.unwrap();
        // Read a byte at a time: a read that fills its buffer does not pause, and the
        // socket is read straight off epoll until it is empty.
        let mut byte = [0u8; 1];
        for expected in [b'c', b'd'] {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
            assert_eq!(byte[0], expected);
            assert!(matches!(stream.io, Io::Paused(_)) && stream.pause.is_none());
        }
        let (got, _) = send_and_read(&mut stream, &mut asterisk, &["f"]).await;
        assert_eq!(got, "ef");
        assert!(
            matches!(stream.io, Io::Paused(_)) && stream.pause.is_some(),
            "a short read, close after the one before: paused again, still off epoll"
        );
        // A pause in which nothing came: the socket waits on epoll again.
        let mut buf = [0u8; 16];
        let waited = tokio::time::timeout(BUSY * 5, stream.read(&mut buf)).await;
        assert!(waited.is_err(), "nothing came, nothing read");
        assert!(matches!(stream.io, Io::Plain(_)) && stream.pause.is_none());
        let (got, _) = send_and_read(&mut stream, &mut asterisk, &["d"]).await;
        assert_eq!(got, "d");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_far_apart_are_not_paused() {
        let (mut stream, mut asterisk, _) = connected().await;
        send_and_read(&mut stream, &mut asterisk, &["a"]).await;
        tokio::time::advance(BUSY + Duration::from_millis(1)).await;
        let (_, first) = send_and_read(&mut stream, &mut asterisk, &["b"]).await;
        assert!(stream.pause.is_none());
        let (got, second) = send_and_read(&mut stream, &mut asterisk, &["c"]).await;
        assert_eq!((got.as_str(), second), ("c", first));
    }

    #[tokio::test(start_paused = true)]
    async fn read_now_ends_a_pause() {
        let (mut stream, mut asterisk, read_now, paused_at) = paused_stream().await;
        read_now.ask();
        let (got, at) = send_and_read(&mut stream, &mut asterisk, &["c"]).await;
        assert_eq!((got.as_str(), at), ("c", paused_at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_puts_the_socket_back_on_epoll_and_reaches_asterisk() {
        let (mut stream, mut asterisk, _, paused_at) = paused_stream().await;
        stream.write_all(b"Action: Ping\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        asterisk.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"Action: Ping\r\n\r\n");
        let (got, at) = send_and_read(&mut stream, &mut asterisk, &["c"]).await;
        assert_eq!((got.as_str(), at), ("c", paused_at));
    }

    #[tokio::test(start_paused = true)]
    async fn the_peer_closing_in_a_pause_is_seen_after_it() {
        let (mut stream, asterisk, _, _) = paused_stream().await;
        drop(asterisk);
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }
}
