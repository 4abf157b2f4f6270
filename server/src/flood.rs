//! HTTP/2 frames that make the proxy work without an exchange's bytes, bounded: nginx's rule.
//!
//! An HTTP/2 client can send frames that carry nothing of a request, each of which the
//! server must read and handle: `WINDOW_UPDATE`s of one byte, `RST_STREAM`s of a stream
//! already answered, `PING`s and `SETTINGS` whose acknowledgements it reads, `PRIORITY`s.
//! The HTTP/2 library answers each and bounds what waits to be written, not how many come
//! (it does bound small or empty `DATA` frames, refused streams and `CONTINUATION`s): one
//! connection sending them as fast as it can keeps a worker thread busy for as long as it
//! likes, and is seen nowhere (no request, no log line). nginx closes such a connection
//! ("http2 flood detected") once the bytes of its frames, read and sent, divided by eight,
//! are more than what its exchanges carried plus 1 MiB; so does the proxy ([`Count`], kept
//! by `idle::Seen`). What an exchange carries is counted where the proxy takes it, so that
//! a frame that does no work earns nothing: the requests the service took ([`REQUEST`]
//! each, for its head), the bytes of their bodies it read (padding, and the data of streams
//! already reset, never reach it), and the answers' headers and bodies sent. The close is
//! at once, without `GOAWAY`, as a client's past its reset budget is.
//!
//! A client's ordinary traffic is far within it: the flow-control updates of a client
//! reading answers come with the answers' bytes, and the first 8 MiB of anything are free.

/// The bytes of frames may be this many times what the exchanges carried...
const RATIO: u64 = 8;
/// ...plus this many times `RATIO` bytes.
const FREE: u64 = 1 << 20;
/// What a request the service took earns, for its head (nginx credits the length of its
/// `HEADERS`: a request's headers, compressed, are some tens to hundreds of bytes).
pub(crate) const REQUEST: u64 = 256;

/// The client's connection preface (`PRI * HTTP/2.0…`), before its first frame.
const PREFACE: u8 = 24;

/// Where the byte stream the proxy writes is among its frames.
#[derive(Debug, Clone, Default)]
struct Walk {
    /// The frame header being written, and how much of it has gone.
    head: [u8; 9],
    head_len: u8,
    /// Bytes of the current frame's payload still to go.
    payload_left: u32,
}

impl Walk {
    /// Walks `bytes`, the next ones written: the bytes of answers' headers and bodies among
    /// them (`DATA`, `HEADERS`, `CONTINUATION` payloads, counted as each header goes).
    fn walk(&mut self, mut bytes: &[u8]) -> u64 {
        let mut payload = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.head_len);
            let n = bytes.len().min(9 - have);
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            self.head_len += n as u8;
            bytes = &bytes[n..];
            if self.head_len == 9 {
                self.head_len = 0;
                let h = self.head;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                if matches!(h[3], 0x0 | 0x1 | 0x9) {
                    payload += u64::from(len);
                }
                self.payload_left = len;
            }
        }
        payload
    }
}

/// What an HTTP/2 connection's frames, read and written, add up to.
#[derive(Debug, Clone)]
pub(crate) struct Count {
    /// Bytes of the client's preface still to come.
    preface: u8,
    written: Walk,
    /// Bytes of frames read and written.
    total: u64,
    /// Bytes of answers' headers and bodies written.
    answers: u64,
}

impl Default for Count {
    fn default() -> Self {
        Count {
            preface: PREFACE,
            written: Walk::default(),
            total: 0,
            answers: 0,
        }
    }
}

impl Count {
    /// Counts `bytes`, the next ones read, with `requests` what the requests the service
    /// took carried so far (see the module): `false` once the connection is a flood.
    pub(crate) fn read(&mut self, bytes: &[u8], requests: u64) -> bool {
        let skip = usize::from(self.preface).min(bytes.len());
        self.preface -= skip as u8;
        self.total = self.total.saturating_add((bytes.len() - skip) as u64);
        self.total / RATIO <= self.answers.saturating_add(requests).saturating_add(FREE)
    }

    /// Counts `bytes`, the next ones written (taken by the socket).
    pub(crate) fn wrote(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len() as u64);
        self.answers = self.answers.saturating_add(self.written.walk(bytes));
    }

    /// Counts the first `n` bytes of `bufs`, written as one.
    pub(crate) fn wrote_vectored(&mut self, bufs: &[std::io::IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let k = n.min(b.len());
            self.wrote(&b[..k]);
            n -= k;
        }
    }
}

/// The error a flooding connection's reads end in.
pub(crate) fn flood() -> std::io::Error {
    std::io::Error::other("HTTP/2 flood: frames without requests")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    const PRI: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Frames written are found however the bytes are cut: answers' headers and bodies
    /// count as what the exchanges carried, other frames for their bytes alone; bytes read
    /// count for their bytes, the client's preface for nothing.
    #[test]
    fn frames_are_counted_however_the_bytes_are_cut() {
        let mut frames = frame(0x4, &[0; 6]); // SETTINGS
        frames.extend(frame(0x1, &[7; 40])); // HEADERS
        frames.extend(frame(0x9, &[7; 3])); // CONTINUATION
        frames.extend(frame(0x8, &[0, 0, 0, 1])); // WINDOW_UPDATE
        frames.extend(frame(0x0, &[1; 1000])); // DATA
        frames.extend(frame(0x4, &[])); // SETTINGS ACK
        frames.extend(frame(0x6, &[0; 8])); // PING
        let read = [PRI, &frames].concat();
        let n = frames.len() as u64;
        for cut in [1, 2, 5, 9, 10, 24, 33, 100, read.len()] {
            let mut c = Count::default();
            for piece in read.chunks(cut) {
                assert!(c.read(piece, 0));
            }
            assert_eq!((c.total, c.answers), (n, 0), "read, cut {cut}");
            let slices: Vec<_> = frames.chunks(cut).map(std::io::IoSlice::new).collect();
            // Written as the socket takes them: all but 3 bytes, then those.
            c.wrote_vectored(&slices, frames.len() - 3);
            c.wrote(&frames[frames.len() - 3..]);
            assert_eq!((c.total, c.answers), (2 * n, 1043), "written, cut {cut}");
            assert_eq!((c.written.head_len, c.written.payload_left), (0, 0));
        }
    }

    /// nginx's rule: closed once the bytes of frames over 8 are more than what the
    /// exchanges carried plus 1 MiB (flow-control updates alone: after 8 MiB; `PING`s
    /// answered: after 4 MiB of them); requests and their answers, however small the
    /// requests and large the answers, never are.
    #[test]
    fn a_flood_is_the_frames_bytes_over_eight_past_what_the_exchanges_carried_plus_a_mebibyte() {
        let update = frame(0x8, &[0, 0, 0, 1]);
        let ping = frame(0x6, &[0; 8]);
        for (sent, answer, closed_after) in
            [(&update, None, 8 << 20), (&ping, Some(&ping), 4 << 20)]
        {
            let mut c = Count::default();
            assert!(c.read(PRI, 0));
            let mut read = 0u64;
            while c.read(sent, 0) {
                read += sent.len() as u64;
                if let Some(a) = answer {
                    c.wrote(a);
                }
                assert!(
                    read < closed_after + (1 << 20),
                    "not closed after {read} bytes"
                );
            }
            assert!(read >= closed_after - 64, "closed after {read} bytes");
        }

        // Requests of a few bytes each (a body of none), and answers of a mebibyte the
        // client updates the flow-control windows for (a stream's and the connection's a
        // frame): never.
        let mut c = Count::default();
        assert!(c.read(PRI, 0));
        let request = frame(0x1, &[9; 3]);
        let body = frame(0x0, &[b'x'; 16_384]);
        for i in 0..2_000u64 {
            assert!(c.read(&request, (i + 1) * REQUEST), "{i}");
            c.wrote(&frame(0x1, &[9; 20]));
            for _ in 0..64 {
                c.wrote(&body);
                assert!(c.read(&update, (i + 1) * REQUEST), "{i}");
                assert!(c.read(&update, (i + 1) * REQUEST), "{i}");
            }
        }
        // Requests alone, answered with a head and no body: never either.
        let mut c = Count::default();
        for i in 0..100_000u64 {
            assert!(c.read(&frame(0x1, &[9; 20]), (i + 1) * REQUEST), "{i}");
            c.wrote(&frame(0x1, &[9; 10]));
        }
    }
}
