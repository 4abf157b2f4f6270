//! What an HTTP/1 connection's task knows of its exchanges, so that it can let go of hyper's
//! connection (its two buffers, its state: about 12 KB) while the client sits idle between
//! requests, and keep only the socket (over TLS, the socket and rustls' state).
//!
//! hyper 1.x keeps a connection's read and write buffers for as long as the connection
//! lives, and has no setting to release them. What it has is a way to hand the socket back:
//! told to shut down while idle, a connection polled without its shutdown ends at once and
//! gives back the socket with whatever bytes it read and did not parse. The task then waits
//! for the socket to turn readable (which holds no buffer) and serves the next request with a
//! new hyper connection.
//!
//! Which moment is idle is read from [`Activity`]: both halves of the last exchange (the
//! request's body, the answer's) let go of a while ago, nothing read since, no write
//! waiting. hyper is then polled once more (so that it has seen whatever ended, a request's
//! body given up among them), told to shut down, and polled once without the shutdown: an
//! idle connection ends at once; one that does not was in an exchange after all, and closes
//! after it rather than be let go (see `serve_http1` in `worker`). Ending at once alone does
//! not prove a message boundary: a connection whose answer was its last ends at once also
//! while it still reads a request's body, which is why the request's body holds half of the
//! exchange.
//!
//! An HTTP/2 connection is never let go of (its state is shared by its streams), but the
//! same record bounds it: its task closes it once nothing has been in flight for the idle
//! timeout, or once its client has taken nothing for as long (see `serve_h2` in `worker`),
//! or once its client has reset more streams soon after opening them than its budget
//! allows (see [`Activity::reset`]), or once its frames are a flood (see `flood`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

use super::flood::{flood, Count, REQUEST};

/// One connection's exchanges as its transport, its service and its bodies see them: one
/// thread touches it (the worker's: the connection's task and, over HTTP/2, its streams'
/// tasks), hence relaxed atomics.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    /// Reads that brought bytes, over the socket's life.
    reads: AtomicU32,
    /// `reads` when the last exchange ended.
    reads_at_answer: AtomicU32,
    /// Whether a request has begun, over the socket's life.
    begun: AtomicBool,
    /// Halves of exchanges not yet ended: a request's body until it is read to its end or
    /// let go, its answer's body until hyper lets go of it (with the end written, or not).
    in_flight: AtomicU32,
    /// When the last exchange ended, in nanoseconds since `born`: its answer let go of by
    /// hyper, or, if later, the moment hyper's last held bytes went out.
    answered_at: AtomicU64,
    /// Since when (nanoseconds since `born`, at least 1) hyper has held bytes the client did
    /// not take: the last write or flush could not go out at once. 0: not blocked.
    blocked_since: AtomicU64,
    /// Whether the last exchange's answer may still be on its way out: set as it ends,
    /// cleared by a flush that finds everything out. Only while it may are writes that go
    /// out again after blocked ones its end (not, say, an HTTP/2 client's PINGs answered).
    tail: AtomicBool,
    /// HTTP/2 answers that handed hyper a frame and have not been polled since (hyper waits
    /// to send it: the client's flow-control window, or the socket), by the parity of the
    /// epoch they handed it in (see [`Activity::next_epoch`]).
    handed: [AtomicU32; 2],
    /// The epoch now: `serve_h2` in `worker` starts one every idle timeout.
    epoch: AtomicU32,
    /// HTTP/2 streams the client reset before their answer's end, within [`PREMATURE`] of
    /// opening them, as a rate: the moment (nanoseconds since `born`) by which the budget
    /// (`budget`) would be whole again (the generic cell rate algorithm's theoretical arrival
    /// time).
    resets_due: AtomicU64,
    /// The reset budget, in the form `resets_due` is checked against.
    budget: Rate,
    /// Told once the client has reset more than its budget allows (see
    /// [`Activity::too_many_resets`]).
    resets_over: tokio::sync::Notify,
    /// Whether the HTTP/2 client's frames were found a flood (see `flood`).
    flooded: AtomicBool,
    /// Requests the service took (past the head's checks), and bytes of request bodies it
    /// read, over the connection's life.
    taken: AtomicU32,
    body_read: AtomicU64,
}

/// An HTTP/2 stream the client resets sooner than this after opening it, before its
/// answer's end, counts against its connection's reset budget (Varnish's and Envoy's
/// threshold).
pub(crate) const PREMATURE: Duration = Duration::from_secs(1);

/// How many such resets an HTTP/2 connection may make: `burst` at once, then one more every
/// `every` (by default Varnish's `h2_rapid_reset_limit` and `h2_rapid_reset_period`: 100,
/// then 100 a minute). A burst of 0 is no budget: resets are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResetBudget {
    pub burst: u32,
    pub every: Duration,
}

impl Default for ResetBudget {
    /// `[server.tls]`'s defaults.
    fn default() -> Self {
        use super::config::{default_h2_reset_budget, default_h2_reset_refill_ms};
        ResetBudget {
            burst: default_h2_reset_budget(),
            every: Duration::from_millis(default_h2_reset_refill_ms()),
        }
    }
}

/// A [`ResetBudget`] in nanoseconds: how far ahead of now `resets_due` may run, and by how
/// much each reset moves it (0: no budget).
#[derive(Debug, Clone, Copy)]
struct Rate {
    slack: u64,
    every: u64,
}

impl From<ResetBudget> for Rate {
    fn from(b: ResetBudget) -> Self {
        let every = u64::try_from(b.every.as_nanos()).unwrap_or(u64::MAX).max(1);
        match b.burst {
            0 => Rate { slack: 0, every: 0 },
            n => Rate {
                slack: every.saturating_mul(u64::from(n - 1)),
                every,
            },
        }
    }
}

impl Activity {
    /// A connection's record, with the default reset budget.
    pub(crate) fn new() -> Arc<Self> {
        Self::with_budget(ResetBudget::default())
    }

    /// A connection's record; `budget` bounds its HTTP/2 client's resets.
    pub(crate) fn with_budget(budget: ResetBudget) -> Arc<Self> {
        Self::since(Instant::now(), budget)
    }

    /// The record of a connection served again after a wait without a task (parked in the
    /// worker's lot): quiet since its last answer's end, `quiet_since`, so that its next
    /// head is due as it was (see [`Activity::head_due`]).
    pub(crate) fn resumed(quiet_since: Instant) -> Arc<Self> {
        Self::since(quiet_since, ResetBudget::default())
    }

    fn since(born: Instant, budget: ResetBudget) -> Arc<Self> {
        Arc::new(Activity {
            born,
            reads: AtomicU32::new(0),
            reads_at_answer: AtomicU32::new(0),
            begun: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            answered_at: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            tail: AtomicBool::new(false),
            handed: [AtomicU32::new(0), AtomicU32::new(0)],
            epoch: AtomicU32::new(0),
            resets_due: AtomicU64::new(0),
            budget: budget.into(),
            resets_over: tokio::sync::Notify::new(),
            flooded: AtomicBool::new(false),
            taken: AtomicU32::new(0),
            body_read: AtomicU64::new(0),
        })
    }

    /// The client reset an HTTP/2 stream `age` after opening it, before its answer's end:
    /// if that was sooner than [`PREMATURE`], it spends the connection's reset budget, and
    /// once it is spent, [`Activity::too_many_resets`] is told. (The rapid reset: each
    /// stream the client opens sets off a request to the payment API, which the reset
    /// abandons with its connection; `max_concurrent_streams` does not bound how many a
    /// client opens one after another.)
    pub(crate) fn reset(&self, age: Duration) {
        if age < PREMATURE && !self.spend_reset(self.nanos()) {
            self.resets_over.notify_one();
        }
    }

    /// Spends one of the reset budget at `now` (nanoseconds since `born`): `false` if none
    /// is left (never without a budget). The generic cell rate algorithm: one moment kept,
    /// no counting window.
    fn spend_reset(&self, now: u64) -> bool {
        let Rate { slack, every } = self.budget;
        every == 0
            || self
                .resets_due
                .fetch_update(Relaxed, Relaxed, |due| {
                    let due = due.max(now);
                    (due - now <= slack).then(|| due.saturating_add(every))
                })
                .is_ok()
    }

    /// The service took a request (its head passed the checks).
    pub(crate) fn took(&self) {
        self.taken.fetch_add(1, Relaxed);
    }

    /// What the requests the service took carried, as the HTTP/2 flood bound counts it
    /// (see `flood`): [`REQUEST`] each, and their bodies' bytes read.
    pub(crate) fn carried(&self) -> u64 {
        u64::from(self.taken.load(Relaxed))
            .saturating_mul(REQUEST)
            .saturating_add(self.body_read.load(Relaxed))
    }

    /// The HTTP/2 client's frames are a flood: its connection ends.
    pub(crate) fn flood(&self) {
        self.flooded.store(true, Relaxed);
    }

    /// Whether the HTTP/2 client's frames were found a flood.
    pub(crate) fn flooded(&self) -> bool {
        self.flooded.load(Relaxed)
    }

    /// Ready once the client has reset more HTTP/2 streams, soon after opening them, than
    /// its budget allows.
    pub(crate) async fn too_many_resets(&self) {
        self.resets_over.notified().await;
    }

    /// A request begins: its exchange ends when both guards have dropped, the one with the
    /// request's body and the one with its answer's. Until then hyper is not between two
    /// messages, whatever else it says: an answer can end before its request's body (a
    /// payment API that answers early), and bytes of that body are not the next request.
    pub(crate) fn begin(self: &Arc<Self>) -> (InFlight, InFlight) {
        self.begun.store(true, Relaxed);
        self.in_flight.fetch_add(2, Relaxed);
        let half = || InFlight {
            activity: self.clone(),
            answer: None,
        };
        (half(), half())
    }

    /// Reads that brought bytes, over the socket's life: one that differs from an earlier
    /// look says bytes came since (see `drain` in `worker`).
    pub(crate) fn reads(&self) -> u32 {
        self.reads.load(Relaxed)
    }

    /// When the connection went idle: the end of its last answer, with nothing read since,
    /// nothing in flight and nothing waiting to be written; `Err` with when to look again
    /// (at `now + every`, or when the last answer is `after` old).
    pub(crate) fn idle_since(&self, now: Instant, after: Duration) -> Result<Instant, Instant> {
        let busy = !self.begun.load(Relaxed)
            || self.in_flight.load(Relaxed) != 0
            || self.reads.load(Relaxed) != self.reads_at_answer.load(Relaxed)
            || self.blocked_since.load(Relaxed) != 0;
        if busy {
            return Err(now + after);
        }
        let at = self.answered();
        if now >= at + after {
            Ok(at)
        } else {
            Err(at + after)
        }
    }

    fn ended(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.answered_at.store(self.nanos(), Relaxed);
            self.tail.store(true, Relaxed);
            self.reads_at_answer
                .store(self.reads.load(Relaxed), Relaxed);
        }
    }

    /// Since when nothing has been in flight: the last exchange's end (its answer's last
    /// bytes out), or the connection's start; `None` while an exchange is in flight. What
    /// the client sends besides requests (an HTTP/2 client's PINGs, SETTINGS, window
    /// updates) does not count.
    pub(crate) fn quiet_since(&self) -> Option<Instant> {
        (self.in_flight.load(Relaxed) == 0).then(|| self.answered())
    }

    /// When an HTTP/1 connection's next head is due: `timeout` after the connection's start
    /// (see [`Activity::resumed`]) or its last answer's end (once its last bytes went out),
    /// whichever was last; `None` while an exchange is in flight or bytes of an answer wait
    /// to be taken (a client that takes none of them is closed as
    /// [`stalled`](Self::stalled) instead).
    pub(crate) fn head_due(&self, timeout: Duration) -> Option<Instant> {
        if self.blocked_since.load(Relaxed) != 0 {
            return None;
        }
        self.quiet_since().map(|at| at + timeout)
    }

    /// When the last exchange ended (the connection's start before one did).
    fn answered(&self) -> Instant {
        self.born + Duration::from_nanos(self.answered_at.load(Relaxed))
    }

    /// Since when the client has taken none of what hyper holds for it, if it holds some.
    pub(crate) fn blocked_since(&self) -> Option<Instant> {
        let since = self.blocked_since.load(Relaxed);
        (since != 0).then(|| self.born + Duration::from_nanos(since))
    }

    /// Starts a new epoch, unless an HTTP/2 answer that handed hyper a frame in the epoch
    /// before this one has not been polled since: it has waited a whole epoch at least for
    /// the client to take it (the client gives it no flow-control window, or reads
    /// nothing), and `false` says so. Its bucket is the one the new epoch would reuse.
    pub(crate) fn next_epoch(&self) -> bool {
        let epoch = self.epoch.load(Relaxed).wrapping_add(1);
        if self.handed[(epoch & 1) as usize].load(Relaxed) != 0 {
            return false;
        }
        self.epoch.store(epoch, Relaxed);
        true
    }

    /// An HTTP/2 answer handed hyper a frame: the epoch to give back to [`Activity::taken`].
    fn handed(&self) -> u32 {
        let epoch = self.epoch.load(Relaxed);
        self.handed[(epoch & 1) as usize].fetch_add(1, Relaxed);
        epoch
    }

    /// What an answer handed in `epoch` was taken (it is polled again, or let go of).
    fn taken(&self, epoch: u32) {
        self.handed[(epoch & 1) as usize].fetch_sub(1, Relaxed);
    }

    /// Whether the client has taken none of what hyper holds for it for `limit` (a client
    /// that stopped reading its answer).
    pub(crate) fn stalled(&self, now: Instant, limit: Duration) -> bool {
        self.blocked_since()
            .is_some_and(|since| now >= since + limit)
    }

    /// Now, in nanoseconds since `born`.
    fn nanos(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Half of an exchange in flight, from the service's call to the end of the request's body
/// or of its answer's.
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    /// An HTTP/2 answer's: see [`InFlight::watched`]. (Boxed: every exchange's halves are
    /// moved a few times, and an HTTP/1 one's are the smaller for it.)
    answer: Option<Box<Answer>>,
}

/// What an HTTP/2 answer's body keeps to tell whether the client takes it.
#[derive(Debug, Default)]
struct Answer {
    /// Since which epoch it has held a frame hyper has not come back for, if it does.
    handed: Option<u32>,
    /// The rest of a chunk longer than [`PIECE`], handed on in pieces.
    rest: Bytes,
    /// When its stream was opened, in nanoseconds since the connection's `born`.
    opened: u64,
    /// Whether it came to its end (or failed: the payment API's doing, not the client's).
    /// Let go of before, the client gave the exchange up: it reset its stream.
    settled: AtomicBool,
}

/// The most an HTTP/2 answer hands hyper at once: HTTP/2's smallest largest frame.
const PIECE: usize = 16 << 10;

impl InFlight {
    /// An HTTP/2 answer's half: its body ([`Tracked`]) also tells whether the client takes
    /// what it hands on (see [`Activity::next_epoch`]). hyper polls an answer again once it
    /// has flow-control window left beyond what it holds of it, i.e. once the client has
    /// taken that (and the socket has too); so that this says something of every few frames
    /// rather than of a chunk as long as the payment API's, the body hands chunks on in
    /// pieces of at most [`PIECE`].
    pub(crate) fn watched(mut self) -> Self {
        self.answer = Some(Box::new(Answer {
            opened: self.activity.nanos(),
            ..Answer::default()
        }));
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(a) = &self.answer {
            if let Some(epoch) = a.handed {
                self.activity.taken(epoch);
            }
            if !a.settled.load(Relaxed) {
                // Given up before its end: hyper lets go of the service's future, or of
                // the answer's body, when the client resets the stream.
                let age = self.activity.nanos().saturating_sub(a.opened);
                self.activity.reset(Duration::from_nanos(age));
            }
        }
        self.activity.ended();
    }
}

pin_project_lite::pin_project! {
    /// A body (a request's, an answer's) holding its half of the exchange's [`InFlight`]
    /// until it is let go of (at its end, or given up).
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, in_flight: Option<InFlight>) -> Self {
        Tracked { body, in_flight }
    }

    /// What of an answer's chunk is still to be handed on.
    fn rest(&self) -> &Bytes {
        static NONE: Bytes = Bytes::new();
        match &self.in_flight {
            Some(InFlight {
                answer: Some(a), ..
            }) => &a.rest,
            _ => &NONE,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    #[inline(always)]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(InFlight {
            activity,
            answer: Some(answer),
        }) = this.in_flight
        else {
            let polled = this.body.poll_frame(cx);
            // A request's body: what it carried (see `Activity::carried`).
            if let (Some(request), Poll::Ready(Some(Ok(frame)))) = (this.in_flight, &polled) {
                if let Some(data) = frame.data_ref() {
                    let n = data.remaining() as u64;
                    request.activity.body_read.fetch_add(n, Relaxed);
                }
            }
            return polled;
        };
        // Polled again: what it handed before was taken.
        if let Some(epoch) = answer.handed.take() {
            activity.taken(epoch);
        }
        let mut piece = if !answer.rest.is_empty() {
            std::mem::take(&mut answer.rest)
        } else {
            match std::task::ready!(this.body.poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(trailers) => {
                        answer.settled.store(true, Relaxed);
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                },
                // Its end, or the payment API's failure.
                other => {
                    answer.settled.store(true, Relaxed);
                    return Poll::Ready(other);
                }
            }
        };
        if piece.len() > PIECE {
            answer.rest = piece.split_off(PIECE);
        }
        answer.handed = Some(activity.handed());
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    #[inline(always)]
    fn is_end_stream(&self) -> bool {
        let end = self.rest().is_empty() && self.body.is_end_stream();
        if end {
            // hyper asks before it sends a head with no body, and after each frame.
            if let Some(InFlight {
                answer: Some(a), ..
            }) = &self.in_flight
            {
                a.settled.store(true, Relaxed);
            }
        }
        end
    }

    #[inline(always)]
    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let rest = self.rest().len() as u64;
        if rest != 0 {
            // The upper bound first: a lower bound above the upper one panics.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + rest);
            }
            hint.set_lower(hint.lower() + rest);
        }
        hint
    }
}

pin_project_lite::pin_project! {
    /// A connection's transport as hyper gets it: the bytes a former hyper connection read
    /// and did not parse first, and every read and write noted in the [`Activity`].
    pub(crate) struct Seen<T, F = NoFrames> {
        #[pin]
        pub(crate) io: T,
        pub(crate) unread: Bytes,
        pub(crate) activity: Arc<Activity>,
        // What else it does with the bytes: nothing, or count an HTTP/2 connection's frames.
        pub(crate) frames: F,
    }
}

/// What a transport does with its bytes besides noting them in the [`Activity`].
pub(crate) trait Frames {
    /// The bytes just read: `false` once the connection's frames are a flood.
    fn read(&mut self, bytes: &[u8], activity: &Activity) -> bool;
    /// The bytes just written (taken by the socket): the first `n` of `bufs`.
    fn wrote(&mut self, bufs: &[std::io::IoSlice<'_>], n: usize);
}

/// An HTTP/1 connection's: nothing (and no bytes in its task).
#[derive(Debug, Default)]
pub(crate) struct NoFrames;

impl Frames for NoFrames {
    #[inline(always)]
    fn read(&mut self, _: &[u8], _: &Activity) -> bool {
        true
    }

    #[inline(always)]
    fn wrote(&mut self, _: &[std::io::IoSlice<'_>], _: usize) {}
}

/// An HTTP/2 connection's: its frames counted (see `flood`).
impl Frames for Box<Count> {
    fn read(&mut self, bytes: &[u8], activity: &Activity) -> bool {
        Count::read(self, bytes, activity.carried())
    }

    fn wrote(&mut self, bufs: &[std::io::IoSlice<'_>], n: usize) {
        self.wrote_vectored(bufs, n);
    }
}

impl<T> Seen<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Seen {
            io,
            unread: Bytes::new(),
            activity,
            frames: NoFrames,
        }
    }
}

impl<T> Seen<T, Box<Count>> {
    /// An HTTP/2 connection's: once its frames are a flood (see `flood`), its reads fail,
    /// which ends it, and `activity` says so ([`Activity::flooded`]).
    pub(crate) fn counting_frames(io: T, activity: Arc<Activity>) -> Self {
        Seen {
            io,
            unread: Bytes::new(),
            activity,
            frames: Box::default(),
        }
    }
}

impl<T: tokio::io::AsyncRead, F: Frames> tokio::io::AsyncRead for Seen<T, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = if this.unread.is_empty() {
            this.io.poll_read(cx, buf)
        } else {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            if this.unread.is_empty() {
                // The buffer those bytes were read into goes with them.
                *this.unread = Bytes::new();
            }
            Poll::Ready(Ok(()))
        };
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Relaxed);
            if !this.frames.read(&buf.filled()[before..], this.activity) {
                this.activity.flood();
                return Poll::Ready(Err(flood()));
            }
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite, F> Seen<T, F> {
    /// `r`, a write's outcome, noted: pending means hyper still holds bytes to send. A
    /// write that goes out after one that could not may be an answer's last bytes: hyper let
    /// go of the answer when it took them, but a client reading slowly gets them only now,
    /// and the idle timeout counts from then.
    #[inline(always)]
    fn wrote<R>(activity: &Activity, r: Poll<R>) -> Poll<R> {
        let blocked = r.is_pending();
        if (activity.blocked_since.load(Relaxed) != 0) != blocked {
            Self::turned(activity, blocked);
        }
        r
    }

    /// Writes turned blocked (from now), or went out again: that moment is the last
    /// answer's end if it is later and the answer may still have been on its way out.
    #[cold]
    fn turned(activity: &Activity, blocked: bool) {
        let now = activity.nanos().max(1);
        if blocked {
            activity.blocked_since.store(now, Relaxed);
        } else {
            activity.blocked_since.store(0, Relaxed);
            if activity.tail.load(Relaxed) && now > activity.answered_at.load(Relaxed) {
                activity.answered_at.store(now, Relaxed);
            }
        }
    }
}

impl<T: tokio::io::AsyncWrite, F: Frames> tokio::io::AsyncWrite for Seen<T, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.frames.wrote(&[std::io::IoSlice::new(buf)], n);
        }
        Self::wrote(this.activity, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.frames.wrote(bufs, n);
        }
        Self::wrote(this.activity, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let r = Self::wrote(this.activity, this.io.poll_flush(cx));
        if r.is_ready() {
            this.activity.tail.store(false, Relaxed);
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::future::Future;

    /// The reset budget: its burst at once, then one every `every`, no more kept than the
    /// burst however long the connection was quiet; a reset of a stream older than
    /// [`PREMATURE`] spends none. The default's (100, 600 ms) and another's alike.
    #[test]
    fn the_reset_budget_is_a_burst_then_a_rate() {
        let budget = |burst, ms| ResetBudget {
            burst,
            every: Duration::from_millis(ms),
        };
        // The default, another, and the ends of the settings' ranges (the largest: no
        // overflow of the moment kept).
        for budget in [
            ResetBudget::default(),
            budget(7, 25),
            budget(1, 1),
            budget(1_000_000, 3_600_000),
        ] {
            let a = Activity::with_budget(budget);
            let every = budget.every.as_nanos() as u64;
            let start = 3_600 * 1_000_000_000;
            for i in 0..budget.burst {
                assert!(a.spend_reset(start), "reset {i} of the burst");
            }
            assert!(!a.spend_reset(start), "past the burst");
            assert!(!a.spend_reset(start + every - 1), "before the next comes");
            assert!(a.spend_reset(start + every));
            assert!(!a.spend_reset(start + every));
            // Quiet for longer than the whole burst takes to come back: the burst again.
            let later = start + (u64::from(budget.burst) + 1) * every;
            for _ in 0..budget.burst {
                assert!(a.spend_reset(later));
            }
            assert!(!a.spend_reset(later));

            let b = Activity::with_budget(budget);
            for _ in 0..2 * budget.burst {
                b.reset(PREMATURE);
            }
            assert!(b.spend_reset(b.nanos()), "late resets spent nothing");
        }
    }

    /// A burst of 0 is no budget: however many resets come at once, none is refused.
    #[test]
    fn a_reset_budget_of_zero_counts_nothing() {
        let a = Activity::with_budget(ResetBudget {
            burst: 0,
            every: Duration::from_millis(600),
        });
        for _ in 0..10_000 {
            assert!(a.spend_reset(5));
        }
        let over = a.too_many_resets();
        let mut over = std::pin::pin!(over);
        for _ in 0..1_000 {
            a.reset(Duration::ZERO);
        }
        assert!(poll_once(over.as_mut()).is_pending());
    }

    /// An HTTP/2 exchange given up before its answer's end (before the answer, or in its
    /// body) spends the reset budget; an HTTP/1 one (its connection closed) does not, nor
    /// does an answer that came to its end, had no body, or failed (the payment API's doing).
    #[tokio::test]
    async fn only_an_http2_stream_given_up_before_its_answers_end_counts_as_a_reset() {
        let a = Activity::new();
        let burst = ResetBudget::default().burst;
        for _ in 0..burst {
            drop(a.begin());
            let whole = Tracked::new(Full::new(Bytes::from("ok")), Some(a.begin().1.watched()));
            assert_eq!(&whole.collect().await.unwrap().to_bytes()[..], b"ok");
            let empty = Tracked::new(Full::new(Bytes::new()), Some(a.begin().1.watched()));
            assert!(empty.is_end_stream(), "a head with no body");
            let mut failed = Tracked::new(Fails, Some(a.begin().1.watched()));
            assert!(failed.frame().await.unwrap().is_err());
        }
        assert_eq!(
            a.resets_due.load(Relaxed),
            0,
            "none of those spent the budget"
        );

        let a = Activity::new();
        for _ in 0..burst / 2 {
            drop(a.begin().1.watched());
            let mut cut = Tracked::new(
                Full::new(Bytes::from(vec![0; 2 * PIECE])),
                Some(a.begin().1.watched()),
            );
            assert!(cut.frame().await.is_some());
        }
        let over = a.too_many_resets();
        let mut over = std::pin::pin!(over);
        assert!(poll_once(over.as_mut()).is_pending(), "within the budget");
        drop(a.begin().1.watched());
        assert!(poll_once(over.as_mut()).is_ready(), "past the budget");
    }

    /// What the HTTP/2 flood bound credits a connection's requests with: each request the
    /// service took, and its body's bytes as the service reads them; not its answer's
    /// (those are counted as they are written).
    #[tokio::test]
    async fn requests_and_the_bodies_read_are_what_a_connection_carried() {
        let a = Activity::new();
        assert_eq!(a.carried(), 0);
        let (reading, answering) = a.begin();
        a.took();
        let body = Tracked::new(Full::new(Bytes::from(vec![7; 5000])), Some(reading));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 5000);
        let answer = Tracked::new(
            Full::new(Bytes::from(vec![7; 900])),
            Some(answering.watched()),
        );
        assert_eq!(answer.collect().await.unwrap().to_bytes().len(), 900);
        assert_eq!(a.carried(), REQUEST + 5000);
        drop(a.begin());
        assert_eq!(
            a.carried(),
            REQUEST + 5000,
            "a request the service did not take"
        );
        a.took();
        assert_eq!(a.carried(), 2 * REQUEST + 5000);
    }

    /// An answer whose body fails at once.
    struct Fails;

    impl Body for Fails {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(Err(std::io::ErrorKind::BrokenPipe.into())))
        }
    }

    /// Polls `f` once.
    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// An HTTP/2 answer handed on in pieces: the same bytes, its end and its size told
    /// right while part of a chunk is held back.
    #[tokio::test]
    async fn an_answer_in_pieces_is_the_same_bytes_and_size() {
        let activity = Activity::new();
        let (_request, answer) = activity.begin();
        let body = Full::new(Bytes::from(vec![7u8; 40_000]));
        let mut t = Tracked::new(body, Some(answer.watched()));
        assert_eq!(t.size_hint().exact(), Some(40_000));
        let first = t.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), PIECE);
        assert!(!t.is_end_stream());
        assert_eq!(t.size_hint().exact(), Some(40_000 - PIECE as u64));
        // Handed, not taken: through the next epoch, and no further.
        assert_eq!(activity.handed[0].load(Relaxed), 1);
        assert!(activity.next_epoch());
        assert!(!activity.next_epoch(), "waited a whole epoch");
        let rest = t.collect().await.unwrap().to_bytes();
        assert_eq!(first.len() + rest.len(), 40_000);
        assert!(rest.iter().all(|&b| b == 7));
        assert_eq!(
            activity.handed.each_ref().map(|h| h.load(Relaxed)),
            [0, 0],
            "let go of"
        );
        assert!(activity.next_epoch());
    }
}
