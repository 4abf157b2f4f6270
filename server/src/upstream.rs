//! The payment API behind the proxy: connections for each worker's pool (`pool`), to the
//! backend the balancer picked (another healthy one on connect failure), with TLS per
//! `[server.upstream_tls]` and a deadline on reads and on writes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_rustls::TlsConnector;

use super::balance::{others, Balancer};
use super::config::UpstreamTls;
use super::error::Error;

/// A deadline on the connection to the payment API that passed: the error an
/// [`UpstreamIo`] or [`Connector::connect`] fails with is an `io::Error` of kind `TimedOut`
/// carrying this (hyper passes transport errors on as `io::Error`s), and the server answers
/// 504 for it ([`UpstreamTimeout::caused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamTimeout {
    /// TCP and TLS connect, per address tried (`connect_timeout_ms`).
    Connect,
    /// The next bytes of the answer (`read_timeout_ms`).
    Read,
    /// A write the payment API does not take (`write_timeout_ms`).
    Write,
}

impl std::fmt::Display for UpstreamTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamTimeout::Connect => "connect timeout",
            UpstreamTimeout::Read => "upstream read timeout",
            UpstreamTimeout::Write => "upstream write timeout",
        })
    }
}

impl std::error::Error for UpstreamTimeout {}

impl UpstreamTimeout {
    /// As the `io::Error` the connection fails with.
    fn error(self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, self)
    }

    /// The system's own timeout on the socket (`ETIMEDOUT`: the peer stopped acknowledging)
    /// is this deadline's too: typed here, where the socket is read, so that nothing above
    /// tells errors apart by their kind.
    fn of_system(self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::TimedOut && e.get_ref().is_none() {
            self.error()
        } else {
            e
        }
    }

    /// Whether `e` or one of its causes is a deadline on the payment API's connection.
    pub(crate) fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        super::error::causes(e).any(|c| c.is::<UpstreamTimeout>())
    }
}

/// How the proxy opens a connection to one payment API address: TCP, then TLS when
/// configured, within the connect timeout. Shared by the dialer and the health checks.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl Connector {
    pub(crate) fn new(
        tls: Option<&UpstreamTls>,
        connect_timeout: Duration,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> Result<Self, Error> {
        let tls = match tls {
            None => None,
            Some(t) => {
                let name = ServerName::try_from(t.sni.clone())
                    .map_err(|e| Error::tls("server.upstream_tls.sni", e))?;
                Some((TlsConnector::from(Arc::new(client_config(t)?)), name))
            }
        };
        Ok(Connector {
            tls,
            connect_timeout,
            read_timeout,
            write_timeout,
        })
    }

    /// A connection to `addr`, TCP and TLS within the connect timeout.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<UpstreamIo> {
        match tokio::time::timeout(self.connect_timeout, self.open(addr)).await {
            Ok(r) => r.map_err(|e| UpstreamTimeout::Connect.of_system(e)),
            Err(_) => Err(UpstreamTimeout::Connect.error()),
        }
    }

    async fn open(&self, addr: SocketAddr) -> io::Result<UpstreamIo> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
        };
        Ok(UpstreamIo::new(
            stream,
            self.read_timeout,
            self.write_timeout,
        ))
    }
}

/// How each worker's pool dials: to the backend the balancer picked for the request; when
/// that one cannot be reached, every other healthy backend is tried once, so a request
/// fails over before anything is sent.
#[derive(Clone)]
pub(crate) struct Dialer {
    connector: Connector,
    balancer: Arc<Balancer>,
}

impl Dialer {
    pub(crate) fn new(connector: Connector, balancer: Arc<Balancer>) -> Self {
        Dialer {
            connector,
            balancer,
        }
    }

    /// The connect timeout (per address tried).
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connector.connect_timeout
    }

    /// How long the payment API may keep the proxy waiting for bytes: also how long a
    /// connection stays idle in the pool.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.connector.read_timeout
    }

    /// A connection to `first`, or to another healthy backend: with the address it went to.
    pub(crate) async fn dial(&self, first: SocketAddr) -> io::Result<(SocketAddr, UpstreamIo)> {
        let mut last = match self.connector.connect(first).await {
            Ok(io) => return Ok((first, io)),
            Err(e) => e,
        };
        for addr in others(&self.balancer, first) {
            match self.connector.connect(addr).await {
                Ok(io) => return Ok((addr, io)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// rustls for the payment API: the private CA of `ca` or the system's roots, the client
/// certificate for mTLS, or no verification at all when `verify = false`.
fn client_config(t: &UpstreamTls) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls("server.upstream_tls", e))?;
    let builder = if t.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &t.ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(Error::file("server.upstream_tls.ca"))?;
                let certs = super::tls::pem_certs(&pem).ok_or(Error::Pem {
                    key: "server.upstream_tls.ca",
                    missing: "certificate",
                })?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| Error::tls("server.upstream_tls.ca", e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(Error::NoSystemRoots);
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
    };
    let mut config = match super::tls::client_cert(t)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::tls("server.upstream_tls.client_cert", e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `verify = false`: any certificate is taken (signatures are still checked, so the
/// handshake itself stays sound).
#[derive(Debug)]
struct NoVerifier(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A deadline that runs while one direction of the connection waits, and is cleared by
/// that direction's progress.
///
/// The timer is not moved at each wait: a timer set for an earlier wait fires early, and is
/// then set for the deadline of the wait at hand. A connection in steady use moves its timer
/// once per timeout, not once per request.
struct Deadline {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The deadline of the wait at hand, when waiting.
    at: Option<Instant>,
}

impl Deadline {
    fn new(timeout: Duration) -> Self {
        Deadline {
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            at: None,
        }
    }

    /// The stream said `Pending`: wait on, unless the deadline (set at the first wait since
    /// the last progress) has passed.
    fn waiting(&mut self, cx: &mut Context<'_>, what: UpstreamTimeout) -> Poll<io::Error> {
        let at = *self.at.get_or_insert_with(|| {
            let at = Instant::now() + self.timeout;
            if self.sleep.is_elapsed() || self.sleep.deadline() > at {
                self.sleep.as_mut().reset(at);
            }
            at
        });
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if self.sleep.deadline() >= at {
                return Poll::Ready(what.error());
            }
            // Set for an earlier wait.
            self.sleep.as_mut().reset(at);
        }
    }

    fn progress(&mut self) {
        self.at = None;
    }
}

/// A connection to the payment API, each direction on its own deadline: a read that waits
/// longer than the read timeout, or a write (or flush) longer than the write timeout, fails
/// with an [`UpstreamTimeout`] (504 for the request on it).
///
/// The read deadline runs from the last bytes received or sent, whichever is later: the
/// payment API cannot answer a request before it has it, so the wait for an answer starts
/// when the request's last bytes went out. Only bytes moved count as progress (not a flush
/// with nothing to flush: hyper flushes on every poll, and that must not keep a hung
/// answer waiting for ever). An idle pooled connection waits on a read as well, so it
/// closes after the read timeout.
pub(crate) struct UpstreamIo {
    stream: Stream,
    read: Deadline,
    write: Deadline,
}

impl UpstreamIo {
    fn new(stream: Stream, read_timeout: Duration, write_timeout: Duration) -> Self {
        UpstreamIo {
            stream,
            read: Deadline::new(read_timeout),
            write: Deadline::new(write_timeout),
        }
    }

    /// A read's outcome, through the read deadline.
    fn read_timed(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        match polled {
            Poll::Pending => self.read.waiting(cx, UpstreamTimeout::Read).map(Err),
            Poll::Ready(r) => {
                self.read.progress();
                Poll::Ready(r.map_err(|e| UpstreamTimeout::Read.of_system(e)))
            }
        }
    }

    /// A write's or flush's outcome, through the write deadline; `moved` says whether it
    /// sent bytes (which also restarts the wait for the answer).
    fn write_timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.write.waiting(cx, UpstreamTimeout::Write).map(Err),
            Poll::Ready(r) => {
                let r = r.map_err(|e| UpstreamTimeout::Write.of_system(e));
                self.write.progress();
                if r.as_ref().is_ok_and(&moved) {
                    self.read.progress();
                }
                Poll::Ready(r)
            }
        }
    }
}

macro_rules! with_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.stream {
            Stream::Plain($s) => $e,
            Stream::Tls($s) => $e,
        }
    };
}

impl UpstreamIo {
    /// Whether an idle connection is open with nothing to read: the payment API has neither
    /// closed it nor sent anything unasked. Looks without waiting, and without a syscall
    /// unless the socket was woken since its last read.
    pub(crate) fn idle_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let polled = with_stream!(self, s => Pin::new(s).poll_read(&mut cx, &mut buf));
        polled.is_pending()
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = with_stream!(this, s => Pin::new(s).poll_read(cx, buf));
        this.read_timed(cx, polled)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = with_stream!(this, s => Pin::new(s).poll_write(cx, buf));
        this.write_timed(cx, polled, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = with_stream!(this, s => Pin::new(s).poll_write_vectored(cx, bufs));
        this.write_timed(cx, polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = with_stream!(this, s => Pin::new(s).poll_flush(cx));
        this.write_timed(cx, polled, |()| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        with_stream!(this, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One poll of `d.waiting`: whether it timed out.
    fn timed_out(d: &mut Deadline) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        d.waiting(&mut cx, UpstreamTimeout::Read).is_ready()
    }

    /// The deadline runs from the wait at hand, though the timer set for an earlier wait
    /// is left where it was: it fires early, and is set again.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_runs_from_the_wait_at_hand_not_an_earlier_one() {
        let t = Duration::from_secs(10);
        let mut d = Deadline::new(t);
        assert!(!timed_out(&mut d));
        tokio::time::advance(Duration::from_secs(8)).await;
        d.progress();
        // A second wait, 8 s in: its deadline is 18 s, the timer still says 10 s.
        assert!(!timed_out(&mut d));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            !timed_out(&mut d),
            "11 s: the first wait's deadline, not this one's"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!timed_out(&mut d), "17 s: 9 s into the second wait");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(timed_out(&mut d), "19 s: 11 s into the second wait");
        // After a timeout, a new wait starts a new deadline.
        d.progress();
        assert!(!timed_out(&mut d));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!timed_out(&mut d));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(timed_out(&mut d));
    }
}
