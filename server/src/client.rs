//! One exchange with the payment API over HTTP/1.1, on a connection the pool holds: the
//! request written and the answer's head read by the request's own future, the answer's
//! body read by the body the client is sent. No task of the connection's own, no channel
//! between the request and its connection (hyper's client connection, used before, runs as
//! a task handed each request through a channel; its dispatcher was a third of a proxied
//! `GET`'s instructions). Only an exchange answered before its request was all written is
//! carried on by a task of its own ([`Answer::Early`]), so that the request's writing and
//! the client's reading of the answer do not wait on each other.
//!
//! What is written and read is what hyper's client writes and reads (RFC 9112): the request
//! framed by its `Content-Length`, or its body's exact size, or chunked; the answer framed
//! by `Transfer-Encoding`, then `Content-Length` (a list of one value), then the
//! connection's close; interim answers (`1xx` but `101`) skipped; a `HEAD`'s, `204`'s and
//! `304`'s answer without a body; a chunked answer's extensions and trailers read and
//! dropped. What is not HTTP/1 (a bad status line or field, a `Content-Length` that is not
//! one number, `Transfer-Encoding` in HTTP/1.0, a head over the read buffer or with more
//! than [`MAX_HEADERS`] fields) is [`Error::Unreadable`]. Everything read is bounded: the
//! head by the read buffer, a chunked body's extensions and trailers by
//! [`CHUNK_EXTRAS_LIMIT`].
//!
//! A connection carries another exchange only if its answer was whole and framed by its
//! length or chunks, said nothing of closing (HTTP/1.1) or asked to be kept (HTTP/1.0), the
//! request was written whole, and nothing came after the answer.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::upstream::UpstreamIo;

/// The most fields an answer's head may have (hyper's client's bound).
pub(crate) const MAX_HEADERS: usize = 100;

/// The most bytes of chunk extensions, and of trailers, one chunked answer may carry (each;
/// hyper's bounds).
pub(crate) const CHUNK_EXTRAS_LIMIT: usize = 16 << 10;

/// The first read's size; a read that fills it doubles the next, up to the read buffer.
const FIRST_READ: usize = 8 << 10;

/// Body frames from this size on are written from their own buffer, not copied.
const WRITE_APART: usize = 8 << 10;

/// Request bytes gathered before they are written.
const WRITE_GATHER: usize = 64 << 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The connection failed: its socket, or a deadline on it (an `io::Error` carrying
    /// [`super::upstream::UpstreamTimeout`]).
    Io(io::Error),
    /// The request's body failed while it was sent (its client's, as the body says).
    Body(BoxError),
    /// The request's body is not what its head framed it as.
    BodyLength,
    /// The payment API closed the connection before its answer was whole.
    Closed,
    /// What the payment API answered is not HTTP/1 the proxy reads (the reason).
    Unreadable(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(_) => f.write_str("the connection to the payment API failed"),
            Error::Body(_) => f.write_str("the request's body failed"),
            Error::BodyLength => f.write_str("the request's body is not as long as its head says"),
            Error::Closed => {
                f.write_str("the payment API closed the connection before its answer ended")
            }
            Error::Unreadable(why) => write!(f, "the payment API's answer is not HTTP/1: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

impl Error {
    /// Whether `e` or one of its causes is an answer that is not HTTP/1.
    pub(crate) fn unreadable(e: &(dyn std::error::Error + 'static)) -> bool {
        super::error::causes(e).any(|c| matches!(c.downcast_ref(), Some(Error::Unreadable(_))))
    }
}

/// A connection to the payment API, between exchanges.
pub(crate) struct Conn {
    io: UpstreamIo,
    /// Bytes read and not yet taken (empty between exchanges).
    buf: BytesMut,
    /// The next read's size.
    read_size: usize,
    /// The most the read buffer holds (and so the longest answer head).
    max_buf: usize,
    /// The buffer's length when it last held a head in part.
    partial: Option<usize>,
    /// Bytes of this exchange's answer taken before its head: blank lines and interim
    /// answers. With the head they fit the read buffer, so a payment API that sends them
    /// without end is refused, as a head that does not end is.
    before_head: usize,
    /// Bytes looked at for a head's end, or parsed (for the test that it grows linearly).
    #[cfg(test)]
    looked: usize,
}

/// An answer's head, and its body: whole already, or still to read.
pub(crate) struct Exchanged {
    pub(crate) head: Response<()>,
    pub(crate) body: Answer,
}

/// An answer's body.
pub(crate) enum Answer {
    /// Read whole with its head; the connection, if it carries another exchange.
    Whole(Bytes, Option<Conn>),
    /// To be read from the connection (the request is all written).
    Reading(Reading),
    /// Its head came before the request was all written: the rest of the request and the
    /// answer's body are to be carried on together, by a task of their own
    /// ([`Reading::finish`]), so that neither waits on the other.
    Early(Reading),
}

impl Conn {
    pub(crate) fn new(io: UpstreamIo, max_buf: usize) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            max_buf,
            partial: None,
            before_head: 0,
            #[cfg(test)]
            looked: 0,
        }
    }

    /// Whether an idle connection can carry an exchange: the payment API has neither
    /// closed it nor sent anything on it (nothing is waited for).
    pub(crate) fn idle_open(&mut self) -> bool {
        self.buf.is_empty() && self.io.idle_open()
    }

    /// `req` written (origin form, its `Host` set) and its answer's head read; the answer's
    /// body as far as it came with the head. The request's body is written while the answer
    /// is read, and after the answer's head if that comes first ([`Answer::Early`]), as
    /// hyper's client does.
    pub(crate) async fn exchange<B>(mut self, req: Request<B>) -> Result<Exchanged, Error>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut w, method, mut body) = Writing::start(req);
        let ((head, framing, keep_alive), sent) =
            poll_fn(|cx| self.poll_exchange(cx, &mut w, &mut body, &method)).await?;
        let sending = match sent {
            Sent::All => Sending::Done,
            Sent::Failed => Sending::Failed,
            Sent::Part => Sending::Rest(Box::new(Rest {
                w,
                body: UnsyncBoxBody::new(BodyExt::map_err(body, Into::into)),
            })),
        };
        let reusable = keep_alive && !matches!(framing, Framing::Close);
        let mut reading = Reading {
            conn: self,
            framing,
            reusable,
            sending,
        };
        if let Sending::Rest(_) = reading.sending {
            return Ok(Exchanged {
                head,
                body: Answer::Early(reading),
            });
        }
        // Read whole with its head (the usual small answer): the connection goes back now.
        if let Framing::Length(n) = reading.framing {
            if n <= reading.conn.buf.len() as u64 {
                let bytes = reading.conn.buf.split_to(n as usize).freeze();
                reading.framing = Framing::Length(0);
                return Ok(Exchanged {
                    head,
                    body: Answer::Whole(bytes, reading.into_conn()),
                });
            }
        }
        Ok(Exchanged {
            head,
            body: Answer::Reading(reading),
        })
    }

    /// Writes the request and reads the answer's head, both at once: the head, and how much
    /// of the request was written by then. A failed write (or request body) fails the
    /// exchange unless the answer's head is already there.
    fn poll_exchange<B>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut Writing,
        body: &mut B,
        method: &Method,
    ) -> Poll<Result<(Head, Sent), Error>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let wrote = w.poll_write(&mut self.io, cx, Pin::new(body));
        match (self.poll_head(cx, method), wrote) {
            (Poll::Ready(Ok(head)), wrote) => Poll::Ready(Ok((
                head,
                match wrote {
                    Poll::Ready(Ok(())) => Sent::All,
                    Poll::Ready(Err(_)) => Sent::Failed,
                    Poll::Pending => Sent::Part,
                },
            ))),
            (_, Poll::Ready(Err(e))) | (Poll::Ready(Err(e)), _) => Poll::Ready(Err(e)),
            (Poll::Pending, _) => Poll::Pending,
        }
    }

    /// Reads until the answer's head is whole (interim answers skipped). A head that came
    /// in part is parsed again only once its end is there.
    fn poll_head(&mut self, cx: &mut Context<'_>, method: &Method) -> Poll<Result<Head, Error>> {
        loop {
            // Blank lines before a status line (RFC 9112 section 2.2) go as they come, not
            // kept to be skipped again by every parse.
            let blank = self
                .buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            #[cfg(test)]
            {
                self.looked += blank;
            }
            if blank > 0 {
                // What is left is looked at afresh (at most once after each such run).
                self.buf.advance(blank);
                self.before_head += blank;
                self.partial = None;
            }
            #[cfg(test)]
            {
                let from = self.partial.map_or(0, |seen| seen.saturating_sub(3));
                self.looked += self.buf.len().saturating_sub(from);
            }
            let ended = match self.partial {
                None => !self.buf.is_empty(),
                Some(seen) => head_ends(&self.buf, seen),
            };
            if ended {
                if let Some(head) = parse_head(&mut self.buf, method, &mut self.before_head)? {
                    self.partial = None;
                    self.before_head = 0;
                    return Poll::Ready(Ok(head));
                }
            }
            // Looked at up to here (what is left of it after interim answers).
            self.partial = (!self.buf.is_empty()).then_some(self.buf.len());
            if self.before_head + self.buf.len() >= self.max_buf {
                return Poll::Ready(Err(Error::Unreadable("a head over the read buffer")));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }

    /// One read into the buffer, as much as it may still take: the bytes read, 0 at the
    /// connection's end. A read that fills what it asked for doubles the next one's size,
    /// one that takes less than a quarter of it halves it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        let room = self.max_buf.saturating_sub(self.buf.len());
        let want = self.read_size.min(room);
        if want == 0 {
            return Poll::Ready(Err(Error::Unreadable("a head over the read buffer")));
        }
        self.buf.reserve(want);
        let mut limited = (&mut self.buf).limit(want);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut limited
        ))
        .map_err(Error::Io)?;
        if n == want {
            self.read_size = (self.read_size * 2).min(self.max_buf);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(FIRST_READ);
        }
        Poll::Ready(Ok(n))
    }
}

/// Whether `buf`, of which the first `seen` bytes hold no head's end, now holds one: an
/// empty line (CRLF or LF line ends, as httparse reads them).
fn head_ends(buf: &[u8], seen: usize) -> bool {
    let from = seen.saturating_sub(3);
    let tail = &buf[from.min(buf.len())..];
    tail.iter().enumerate().any(|(i, &b)| {
        b == b'\n' && (tail.get(i + 1) == Some(&b'\n') || tail.get(i + 1..i + 3) == Some(b"\r\n"))
    })
}

/// How much of the request was written when its answer's head came.
enum Sent {
    All,
    Part,
    /// Its write, or its body, failed.
    Failed,
}

/// The rest of a request whose answer's head came before it was all written.
struct Rest {
    w: Writing,
    body: UnsyncBoxBody<Bytes, BoxError>,
}

/// How far the request of an answer being read is written.
enum Sending {
    Done,
    Rest(Box<Rest>),
    /// Its write, or its body, failed: the connection carries nothing more.
    Failed,
}

/// An answer's head, how its body is framed, and whether the connection may be kept.
type Head = (Response<()>, Framing, bool);

/// How an answer's body is framed (RFC 9112 section 6.3), and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunked),
    /// Until the connection's end.
    Close,
}

/// An answer's body still to be read from its connection.
pub(crate) struct Reading {
    conn: Conn,
    framing: Framing,
    /// Whether the answer lets the connection carry another exchange.
    reusable: bool,
    /// The request, written on as the answer is read if its head came first.
    sending: Sending,
}

impl Reading {
    /// The body's next bytes; `None` at its end.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            let buf = &mut self.conn.buf;
            match &mut self.framing {
                Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !buf.is_empty() {
                        let n = (*left).min(buf.len() as u64);
                        *left -= n;
                        return Poll::Ready(Some(Ok(buf.split_to(n as usize).freeze())));
                    }
                }
                Framing::Chunked(c) => {
                    if let Some(data) = c.decode(buf)? {
                        // The framing after it, as far as it is here: the end is seen with
                        // the last bytes.
                        c.skip_framing(buf)?;
                        return Poll::Ready(Some(Ok(data)));
                    }
                    if c.is_end() {
                        return Poll::Ready(None);
                    }
                }
                Framing::Close => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(buf.split().freeze())));
                    }
                }
            }
            // Every framing takes what is buffered before it reads: the buffer has room.
            if ready!(self.conn.poll_fill(cx))? == 0 {
                if self.framing == Framing::Close {
                    self.framing = Framing::Length(0);
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::Closed)));
            }
        }
    }

    /// Writes what the rest of the request has ready: `Ready` once it is all written, or
    /// failed.
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Sending::Rest(rest) = &mut self.sending {
            match rest
                .w
                .poll_write(&mut self.conn.io, cx, Pin::new(&mut rest.body))
            {
                Poll::Ready(Ok(())) => self.sending = Sending::Done,
                Poll::Ready(Err(_)) => self.sending = Sending::Failed,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Carries on an exchange whose answer's head came before its request was all written
    /// ([`Answer::Early`]): writes the rest of the request and sends the answer's body into
    /// `tx` as its receiver takes it, both at once, until both have ended. The request's
    /// writing does not wait for the client to read the answer (a client that reads only
    /// once it has sent its body would wait for ever), nor does it stop at the answer's
    /// end (the client's body is taken whole, as hyper's client does). The receiver gone
    /// before the answer's end, the exchange ends there. The connection back if it can
    /// carry another exchange.
    pub(crate) async fn finish(mut self, tx: mpsc::Sender<Result<Bytes, Error>>) -> Option<Conn> {
        let mut tx = Some(PollSender::new(tx));
        let ended = poll_fn(|cx| loop {
            let rest = self.poll_rest(cx);
            let Some(sender) = &mut tx else {
                return rest.map(|()| true);
            };
            match sender.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {}
                // The client takes no more of the answer.
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
            match self.poll_data(cx) {
                Poll::Ready(Some(item)) => {
                    let broken = item.is_err();
                    if sender.send_item(item).is_err() || broken {
                        return Poll::Ready(false);
                    }
                    // Its last bytes: the receiver may go once it has them (hyper's server
                    // drops a body once its length is written).
                    if self.is_end() {
                        tx = None;
                    }
                }
                Poll::Ready(None) => tx = None,
                // The slot stays reserved for the next bytes.
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        if ended {
            self.into_conn()
        } else {
            None
        }
    }

    /// Whether the body has been read to its end.
    pub(crate) fn is_end(&self) -> bool {
        match &self.framing {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(c) => c.is_end(),
            Framing::Close => false,
        }
    }

    /// The bytes left, when known.
    pub(crate) fn left(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The connection, if the body was read to its end and it carries another exchange.
    pub(crate) fn into_conn(self) -> Option<Conn> {
        let done = matches!(self.sending, Sending::Done);
        (done && self.reusable && self.is_end() && self.conn.buf.is_empty()).then_some(self.conn)
    }
}

/// Parses an answer's head at the front of `buf`, taking it (and interim answers) off:
/// `None` while it is not whole.
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    before_head: &mut usize,
) -> Result<Option<Head>, Error> {
    loop {
        // Each field's name and value as offsets into the head, which is then made shared
        // bytes that the values point into (no copy).
        let mut at = [[0u32; 4]; MAX_HEADERS];
        let (len, status, reason, version, count) = {
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut []);
            let bytes: &[u8] = buf;
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut res,
                bytes,
                &mut fields,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(Error::Unreadable("more fields than the proxy reads"))
                }
                Err(_) => return Err(Error::Unreadable("a malformed head")),
            };
            let base = bytes.as_ptr() as usize;
            let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            for (i, f) in res.headers.iter().enumerate() {
                let name = offset(f.name.as_bytes());
                let value = offset(f.value);
                at[i] = [
                    name,
                    name + f.name.len() as u32,
                    value,
                    value + f.value.len() as u32,
                ];
            }
            let status = StatusCode::from_u16(res.code.unwrap_or_default())
                .map_err(|_| Error::Unreadable("a malformed status"))?;
            let reason = res.reason.filter(|r| status.canonical_reason() != Some(*r));
            let reason = reason.map(|r| Bytes::copy_from_slice(r.as_bytes()));
            let version = if res.version == Some(1) {
                Version::HTTP_11
            } else {
                Version::HTTP_10
            };
            (len, status, reason, version, res.headers.len())
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // `100 Continue`, `103 Early Hints` and the like: not passed on.
            buf.advance(len);
            *before_head += len;
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        let mut keep_alive = version == Version::HTTP_11;
        let mut said_close = false;
        // The framing fields, read as they go by.
        let mut last_coding = None;
        let mut length = Ok(None);
        for [n0, n1, v0, v1] in at[..count].iter().map(|a| a.map(|x| x as usize)) {
            let name = HeaderName::from_bytes(&head[n0..n1])
                .map_err(|_| Error::Unreadable("a malformed field name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                .map_err(|_| Error::Unreadable("a malformed field value"))?;
            if name == header::TRANSFER_ENCODING {
                last_coding = Some(value.clone());
            } else if name == header::CONTENT_LENGTH {
                length = length.and_then(|l| add_length(l, &value));
            } else if name == header::CONNECTION {
                if said_close || has_token(&value, "close") {
                    said_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            headers.append(name, value);
        }
        let framing = framing(status, version, method, last_coding.as_ref(), length)?;
        let mut res = Response::new(());
        *res.status_mut() = status;
        *res.version_mut() = version;
        *res.headers_mut() = headers;
        if let Some(reason) = reason {
            let reason = hyper::ext::ReasonPhrase::try_from(reason)
                .map_err(|_| Error::Unreadable("a malformed reason phrase"))?;
            res.extensions_mut().insert(reason);
        }
        // A `101` ends what the connection can carry (the proxy passes none on).
        return Ok(Some((
            res,
            framing,
            keep_alive && status != StatusCode::SWITCHING_PROTOCOLS,
        )));
    }
}

/// How an answer's body is framed: RFC 9112 section 6.3, as hyper's client reads it.
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    last_coding: Option<&HeaderValue>,
    length: Result<Option<u64>, ()>,
) -> Result<Framing, Error> {
    if matches!(status.as_u16(), 101 | 204 | 304) || method == Method::HEAD {
        return Ok(Framing::Length(0));
    }
    if let Some(last) = last_coding {
        if version == Version::HTTP_10 {
            return Err(Error::Unreadable("Transfer-Encoding in an HTTP/1.0 answer"));
        }
        return Ok(if ends_in_chunked(last) {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::Close
        });
    }
    let length =
        length.map_err(|()| Error::Unreadable("a Content-Length that is not one number"))?;
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked` (what frames the body).
fn ends_in_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a `Connection` value lists `token`.
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A chunked body's framing (RFC 9112 section 7.1), read a byte at a time between the
/// chunks' data, strictly as hyper reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// The chunk's size, then what is left of its data.
    size: u64,
    /// Extension bytes, and trailer bytes, read so far (each bounded).
    extensions: usize,
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// A chunk's size: its first digit.
    #[default]
    Start,
    Size,
    /// Whitespace after the size.
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field or the final line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    End,
}

impl Chunked {
    /// The next data at the front of `buf` (framing before it taken off), or `None` when
    /// `buf` holds none (more to read, or the end: [`Chunked::is_end`]).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        self.skip_framing(buf)?;
        if self.state != ChunkState::Data || buf.is_empty() {
            return Ok(None);
        }
        let n = self.size.min(buf.len() as u64);
        self.size -= n;
        if self.size == 0 {
            self.state = ChunkState::DataCr;
        }
        Ok(Some(buf.split_to(n as usize).freeze()))
    }

    pub(crate) fn is_end(&self) -> bool {
        self.state == ChunkState::End
    }

    /// Takes framing bytes off the front of `buf`, up to data or the end.
    fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        let mut used = 0;
        for &b in buf.iter() {
            if matches!(self.state, ChunkState::Data | ChunkState::End) {
                break;
            }
            self.state = self.step(b)?;
            used += 1;
        }
        buf.advance(used);
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<ChunkState, Error> {
        use ChunkState::*;
        let bad = |why| Err(Error::Unreadable(why));
        Ok(match (self.state, b) {
            (Start | Size, b) if b.is_ascii_hexdigit() => {
                let digit = (b as char).to_digit(16).unwrap_or_default();
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(digit)))
                    .ok_or(Error::Unreadable("a chunk size over 64 bits"))?;
                Size
            }
            (Start, _) => return bad("a chunk without a size"),
            (Size | SizeLws, b'\t' | b' ') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws, b'\r') => SizeLf,
            (Size | SizeLws, _) => return bad("a malformed chunk size line"),
            (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return bad("a chunk extension with a bare line feed"),
            (Extension, _) => {
                self.extensions += 1;
                if self.extensions > CHUNK_EXTRAS_LIMIT {
                    return bad("chunk extensions over their bound");
                }
                Extension
            }
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (SizeLf, _) => return bad("a chunk size line without its line feed"),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return bad("a chunk longer than its size"),
            (DataLf, b'\n') => {
                self.size = 0;
                Start
            }
            (DataLf, _) => return bad("a chunk without its line feed"),
            (EndCr, b'\r') => EndLf,
            (EndCr | Trailer, b) => {
                self.trailers += 1;
                if self.trailers > CHUNK_EXTRAS_LIMIT {
                    return bad("trailers over their bound");
                }
                if b == b'\r' {
                    TrailerLf
                } else {
                    Trailer
                }
            }
            (TrailerLf, b'\n') => EndCr,
            (TrailerLf, _) => return bad("a trailer without its line feed"),
            (EndLf, b'\n') => End,
            (EndLf, _) => return bad("a chunked body's end without its line feed"),
            (Data | End, _) => self.state,
        })
    }
}

/// How the request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoder {
    /// No body.
    Empty,
    /// This many bytes left.
    Length(u64),
    Chunked,
}

/// The request's bytes waiting to be written: the head and small frames gathered in one
/// buffer, a large frame after it in its own.
struct Writer {
    buf: Vec<u8>,
    /// Written of `buf` so far.
    at: usize,
    apart: Option<Bytes>,
}

/// A request being written.
struct Writing {
    w: Writer,
    encoder: Encoder,
    body_done: bool,
}

impl Writing {
    /// The request's head encoded, its method and body.
    fn start<B: Body>(req: Request<B>) -> (Self, Method, B) {
        let (mut parts, body) = req.into_parts();
        let mut w = Writer::new();
        let encoder = w.head(&mut parts, &body);
        let writing = Writing {
            w,
            encoder,
            // A `GET`'s body of unknown size is not sent (nor read), as hyper's client does.
            body_done: matches!(encoder, Encoder::Empty | Encoder::Length(0)),
        };
        (writing, parts.method, body)
    }

    /// Writes what the body has ready: `Ready(Ok)` once the request is all written.
    fn poll_write<B>(
        &mut self,
        io: &mut UpstreamIo,
        cx: &mut Context<'_>,
        mut body: Pin<&mut B>,
    ) -> Poll<Result<(), Error>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        loop {
            // What the body has ready, gathered up to a bound.
            let mut body_waits = self.body_done;
            while !self.body_done && self.w.pending() < WRITE_GATHER && self.w.apart.is_none() {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are not sent (no request the proxy forwards has them).
                        if let Ok(data) = frame.into_data() {
                            self.data(data)?;
                        }
                        // Its length written, or its end told: the body is done (as hyper's
                        // client, which polls it no more).
                        if self.encoder == Encoder::Length(0) || body.is_end_stream() {
                            self.end()?;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::Body(e.into()))),
                    Poll::Ready(None) => self.end()?,
                    Poll::Pending => {
                        body_waits = true;
                        break;
                    }
                }
            }
            ready!(self.w.poll_flush(io, cx)).map_err(Error::Io)?;
            if self.body_done {
                return Poll::Ready(Ok(()));
            }
            if body_waits {
                return Poll::Pending;
            }
        }
    }

    fn data(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.encoder {
            Encoder::Empty => return Err(Error::BodyLength),
            Encoder::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(Error::BodyLength)?;
                if data.len() >= WRITE_APART {
                    self.w.apart = Some(data);
                } else {
                    self.w.buf.extend_from_slice(&data);
                }
            }
            Encoder::Chunked => {
                let _ = write!(self.w.buf, "{:X}\r\n", data.len());
                self.w.buf.extend_from_slice(&data);
                self.w.buf.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Error> {
        self.body_done = true;
        match self.encoder {
            Encoder::Length(0) | Encoder::Empty => Ok(()),
            Encoder::Length(_) => Err(Error::BodyLength),
            Encoder::Chunked => {
                self.w.buf.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
        }
    }
}

impl Writer {
    fn new() -> Self {
        Writer {
            buf: Vec::new(),
            at: 0,
            apart: None,
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.at + self.apart.as_ref().map_or(0, Bytes::len)
    }

    /// The request's head, framed as hyper's client frames it (`set_length`): an ended body
    /// sends no `Transfer-Encoding`; `Transfer-Encoding` ends in `chunked` (and drops
    /// `Content-Length`); else a `Content-Length` given frames it; else a body of unknown
    /// size is chunked (but a `GET`'s, `HEAD`'s or `CONNECT`'s: none), one of known size
    /// gets its `Content-Length`.
    fn head<B: Body>(&mut self, parts: &mut http::request::Parts, body: &B) -> Encoder {
        let headers = &mut parts.headers;
        let encoder = if body.is_end_stream() {
            headers.remove(header::TRANSFER_ENCODING);
            Encoder::Empty
        } else {
            let given = content_length(headers).ok().flatten();
            match headers.entry(header::TRANSFER_ENCODING) {
                Entry::Occupied(mut te) => {
                    if let Some(last) = te.iter_mut().next_back() {
                        if !ends_in_chunked(last) {
                            let mut line = last.as_bytes().to_vec();
                            line.extend_from_slice(b", chunked");
                            if let Ok(v) = HeaderValue::from_bytes(&line) {
                                *last = v;
                            }
                        }
                    }
                    headers.remove(header::CONTENT_LENGTH);
                    Encoder::Chunked
                }
                Entry::Vacant(te) => match (given, body.size_hint().exact()) {
                    (Some(n), _) => Encoder::Length(n),
                    (None, None) => match parts.method {
                        Method::GET | Method::HEAD | Method::CONNECT => Encoder::Length(0),
                        _ => {
                            te.insert(HeaderValue::from_static("chunked"));
                            headers.remove(header::CONTENT_LENGTH);
                            Encoder::Chunked
                        }
                    },
                    (None, Some(n)) => {
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                        Encoder::Length(n)
                    }
                },
            }
        };
        let buf = &mut self.buf;
        buf.reserve(64 + headers.len() * 32);
        buf.extend_from_slice(parts.method.as_str().as_bytes());
        buf.push(b' ');
        match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') || pq.as_str() == "*" => {
                buf.extend_from_slice(pq.as_str().as_bytes())
            }
            _ => {
                let _ = write!(buf, "{}", parts.uri);
            }
        }
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers.iter() {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        encoder
    }

    /// Writes what waits, both buffers in one call where the socket takes several.
    fn poll_flush(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let head = &self.buf[self.at..];
            let apart = self.apart.as_deref().unwrap_or_default();
            let n = match (head.is_empty(), apart.is_empty()) {
                (true, true) => {
                    // What a TLS stream still holds goes out too.
                    ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    self.buf.clear();
                    self.at = 0;
                    self.apart = None;
                    return Poll::Ready(Ok(()));
                }
                (false, true) => ready!(Pin::new(&mut *io).poll_write(cx, head))?,
                (true, false) => ready!(Pin::new(&mut *io).poll_write(cx, apart))?,
                (false, false) => ready!(Pin::new(&mut *io)
                    .poll_write_vectored(cx, &[IoSlice::new(head), IoSlice::new(apart)]))?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(head.len());
            self.at += from_head;
            if let Some(a) = &mut self.apart {
                a.advance(n - from_head);
            }
        }
    }
}

/// A head's `Content-Length`, as hyper reads it: one number (a list of equal ones), or
/// none; `Err` for anything else.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .try_fold(None, add_length)
}

/// What `length` (the `Content-Length` fields before) and `value` (the next) say together:
/// `Err` unless every number listed is the same.
fn add_length(mut length: Option<u64>, value: &HeaderValue) -> Result<Option<u64>, ()> {
    for n in value.as_bytes().split(|b| *b == b',') {
        let n = n.trim_ascii();
        // Nineteen digits at most: no overflow (hyper takes up to the largest `u64`, which
        // no body is).
        if n.is_empty() || n.len() > 19 || !n.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = n.iter().fold(0, |l, d| l * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(());
        }
        length = Some(n);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(wire: &[u8], step: usize) -> Result<(Vec<u8>, bool, usize), Error> {
        let mut c = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(d) = c.decode(&mut buf)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, c.is_end(), buf.len()))
    }

    #[test]
    fn a_chunked_body_is_read_in_any_pieces() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, end, left) = chunks(wire, step).unwrap();
            assert_eq!(data, b"hello world", "in pieces of {step}");
            assert!(end);
            assert_eq!(left, 4, "what comes after the body stays");
        }
    }

    #[test]
    fn a_malformed_chunked_body_is_unreadable() {
        for wire in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"5 x\r\n",
            b"5;a\nb\r\n",
            b"11111111111111111\r\n",
            b"0\r\nTrailer: x\rX",
            b"0\r\n\rX",
        ] {
            assert!(
                matches!(chunks(wire, 1), Err(Error::Unreadable(_))),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn a_chunked_bodys_extensions_and_trailers_are_bounded() {
        let mut wire = b"1;".to_vec();
        wire.extend(std::iter::repeat_n(b'a', CHUNK_EXTRAS_LIMIT + 1));
        assert!(chunks(&wire, 4096).is_err());
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..CHUNK_EXTRAS_LIMIT / 7 + 1 {
            wire.extend_from_slice(b"a: bcd\r\n");
        }
        assert!(chunks(&wire, 4096).is_err());
        // Within the bounds, both are read.
        let mut wire = b"1;".to_vec();
        wire.extend(std::iter::repeat_n(b'a', CHUNK_EXTRAS_LIMIT - 1));
        wire.extend_from_slice(b"\r\nx\r\n0\r\na: b\r\n\r\n");
        let (data, end, _) = chunks(&wire, 4096).unwrap();
        assert_eq!((&data[..], end), (&b"x"[..], true));
    }

    fn head(wire: &[u8], method: Method) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(wire), &method, &mut 0)
    }

    #[test]
    fn an_answers_framing_is_read_as_hyper_reads_it() {
        let framing = |wire: &str| head(wire.as_bytes(), Method::GET).map(|h| h.map(|h| h.1));
        let len = |n| Some(Framing::Length(n));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").unwrap(),
            len(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n").unwrap(),
            len(5)
        );
        assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n").is_err());
        assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n").is_err());
        assert!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n").is_err()
        );
        assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: 5,\r\n\r\n").is_err());
        assert!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err()
        );
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
            Ok(Some(Framing::Chunked(_)))
        ));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").unwrap(),
            Some(Framing::Close)
        );
        assert!(framing("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n").unwrap(),
            Some(Framing::Close)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").unwrap(),
            len(0)
        );
        assert_eq!(
            head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::HEAD
            )
            .unwrap()
            .unwrap()
            .1,
            Framing::Length(0)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n").unwrap(),
            None
        );
        assert!(framing("HTTP/1.1 200 OK\r\nbad field\r\n\r\n").is_err());
        assert!(framing("HTTPS/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn interim_answers_are_skipped_and_keep_alive_read() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 201 Made\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (res, framing, keep) = head(wire, Method::POST).unwrap().unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(framing, Framing::Length(0));
        assert!(!keep, "connection: close");
        let reason = res.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Made");
        let (_, _, keep) = head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!keep, "HTTP/1.0 without keep-alive");
        let (_, _, keep) = head(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(keep);
        let (_, _, keep) = head(b"HTTP/1.1 101 Switching\r\nupgrade: x\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!keep, "a 101 ends the connection's use");
    }

    #[test]
    fn an_answer_with_more_fields_than_read_is_unreadable() {
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            wire.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        assert!(matches!(
            head(&wire, Method::GET),
            Err(Error::Unreadable(_))
        ));
    }

    fn encoded(req: Request<http_body_util::Full<Bytes>>) -> (String, Encoder) {
        let (mut parts, body) = req.into_parts();
        let mut w = Writer::new();
        let e = w.head(&mut parts, &body);
        (String::from_utf8(w.buf).unwrap(), e)
    }

    #[test]
    fn a_requests_head_is_framed_as_hyper_frames_it() {
        use http_body_util::Full;
        let req = |m: &str, h: &[(&str, &str)], b: &'static str| {
            let mut r = Request::builder().method(m).uri("/p?q=1");
            for (k, v) in h {
                r = r.header(*k, *v);
            }
            r.body(Full::new(Bytes::from_static(b.as_bytes()))).unwrap()
        };
        assert_eq!(
            encoded(req("GET", &[("host", "x")], "")),
            (
                "GET /p?q=1 HTTP/1.1\r\nhost: x\r\n\r\n".into(),
                Encoder::Empty
            )
        );
        assert_eq!(
            encoded(req("POST", &[("host", "x")], "abc")),
            (
                "POST /p?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n".into(),
                Encoder::Length(3)
            )
        );
        assert_eq!(
            encoded(req("POST", &[("content-length", "3")], "abc")).1,
            Encoder::Length(3)
        );
        assert_eq!(
            encoded(req(
                "POST",
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                "abc"
            )),
            (
                "POST /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                Encoder::Chunked
            )
        );
        assert_eq!(
            encoded(req("GET", &[("transfer-encoding", "chunked")], "")),
            ("GET /p?q=1 HTTP/1.1\r\n\r\n".into(), Encoder::Empty),
            "an ended body sends no Transfer-Encoding"
        );
    }

    #[test]
    fn a_heads_end_is_found_in_what_came_since_the_last_look() {
        let head = b"HTTP/1.1 200 OK\r\na: b\r\n\r\n";
        assert!(head_ends(head, 0));
        // Its end split over the last look: the last three bytes seen are looked at again.
        for seen in 0..head.len() {
            assert!(head_ends(head, seen), "seen {seen}");
        }
        assert!(!head_ends(&head[..head.len() - 1], 0));
        assert!(
            head_ends(b"HTTP/1.1 200 OK\na: b\n\n", 10),
            "bare line feeds"
        );
        assert!(!head_ends(b"HTTP/1.1 200 OK\r\na: b\r\n\r", 0));
    }

    /// A connection to a payment API on loopback that writes `pieces` (a millisecond
    /// apart, ignoring a closed socket) and then holds the connection a while.
    async fn answering(pieces: Vec<Vec<u8>>) -> Conn {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            for piece in pieces {
                if s.write_all(&piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let t = std::time::Duration::from_secs(5);
        let io = crate::upstream::Connector::new(None, t, t, t)
            .unwrap()
            .connect(addr)
            .await
            .unwrap();
        Conn::new(io, 64 << 10)
    }

    /// Blank lines before a status line, a few bytes at a time, are each looked at once
    /// (not parsed again with every read), and the head after them is read.
    #[tokio::test]
    async fn blank_lines_before_a_head_are_looked_at_once() {
        let mut pieces = vec![b"\r\n".to_vec(); 400];
        pieces.push(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec());
        let sent: usize = pieces.iter().map(Vec::len).sum();
        let mut conn = answering(pieces).await;
        let (res, _, _) = poll_fn(|cx| conn.poll_head(cx, &Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            conn.looked <= 2 * sent,
            "{} bytes looked at for {sent} sent",
            conn.looked
        );
        assert_eq!(conn.before_head, 0, "counted afresh for the next exchange");
    }

    /// Interim answers without end, or blank lines without end, are refused once they and
    /// the head would be over the read buffer, as a head without end is: the request does
    /// not wait on them for ever.
    #[tokio::test]
    async fn what_comes_before_a_head_is_bounded_by_the_read_buffer() {
        for before in [&b"HTTP/1.1 100 Continue\r\n\r\n"[..], b"\r\n\r\n\r\n\r\n"] {
            // 128 KiB of it, in 64 pieces: twice the read buffer.
            let piece = before.repeat(2048 / before.len());
            let mut conn = answering(vec![piece; 64]).await;
            let res = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                poll_fn(|cx| conn.poll_head(cx, &Method::GET)),
            )
            .await
            .expect("refused, not waited on");
            assert!(
                matches!(res, Err(Error::Unreadable("a head over the read buffer"))),
                "{:?}",
                res.map(|(h, _, _)| h.status())
            );
        }
    }

    /// A head that comes a few bytes at a time is looked at once per byte or so, not once
    /// per byte per read (a slow payment API cannot make the proxy parse its head over and
    /// over).
    #[tokio::test]
    async fn a_head_in_many_pieces_is_looked_at_in_linear_time() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..20 {
            head.extend_from_slice(format!("x-{i}: {}\r\n", "v".repeat(40)).as_bytes());
        }
        head.extend_from_slice(b"content-length: 0\r\n\r\n");
        let len = head.len();
        let mut conn = answering(head.chunks(7).map(<[u8]>::to_vec).collect()).await;
        let (res, _, _) = poll_fn(|cx| conn.poll_head(cx, &Method::GET))
            .await
            .unwrap();
        assert_eq!(res.headers().len(), 21);
        assert!(
            conn.looked <= 3 * len,
            "{} bytes looked at for a head of {len}",
            conn.looked
        );
    }
}
