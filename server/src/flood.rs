//! HTTP/2 frames that make the proxy work without a request's bytes, bounded: nginx's rule.
//!
//! An HTTP/2 client can send frames that carry nothing of a request, each of which the
//! server must read and handle: `WINDOW_UPDATE`s of one byte, `RST_STREAM`s of a stream
//! already answered, `PING`s and `SETTINGS` whose acknowledgements it reads, `PRIORITY`s,
//! empty `DATA`. The HTTP/2 library answers each and bounds what waits to be written, not
//! how many come: one connection sending them as fast as it can keeps a worker thread busy
//! for as long as it likes, and is seen nowhere (no request, no log line). nginx closes such
//! a connection ("http2 flood detected") once the bytes it has read, divided by eight, are
//! more than the bytes of request headers and bodies among them plus 1 MiB; so does the
//! proxy, counting an HTTP/2 connection's frames as its transport reads them ([`Count`],
//! kept by `idle::Seen`).
//!
//! A client's ordinary traffic is far within it: a request is mostly its headers and body;
//! the flow-control updates of a client downloading answers are a few hundred bytes a
//! megabyte; and the first 8 MiB of anything are free.

/// The bytes read may be this many times what requests' headers and bodies took...
const RATIO: u64 = 8;
/// ...plus this many times `RATIO` bytes.
const FREE: u64 = 1 << 20;

/// The connection preface (`PRI * HTTP/2.0…`), before the first frame.
const PREFACE: u8 = 24;

/// Frame types whose payload is a request's: `DATA`, `HEADERS`, `CONTINUATION`.
fn carries_a_request(kind: u8) -> bool {
    matches!(kind, 0x0 | 0x1 | 0x9)
}

/// What an HTTP/2 connection's frames read so far add up to.
#[derive(Debug, Clone)]
pub(crate) struct Count {
    /// Bytes of the preface still to come.
    preface: u8,
    /// The frame header being read, and how much of it has come.
    head: [u8; 9],
    head_len: u8,
    /// Bytes of the current frame's payload still to come.
    payload_left: u32,
    /// Bytes read, and bytes of requests' headers and bodies among them.
    total: u64,
    payload: u64,
}

impl Default for Count {
    fn default() -> Self {
        Count {
            preface: PREFACE,
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
            total: 0,
            payload: 0,
        }
    }
}

impl Count {
    /// Counts `bytes`, the next ones read: `false` once the connection is a flood.
    pub(crate) fn read(&mut self, mut bytes: &[u8]) -> bool {
        self.total = self.total.saturating_add(bytes.len() as u64);
        let skip = usize::from(self.preface).min(bytes.len());
        self.preface -= skip as u8;
        bytes = &bytes[skip..];
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
                if carries_a_request(h[3]) {
                    self.payload += u64::from(len);
                }
                self.payload_left = len;
            }
        }
        self.total / RATIO <= self.payload.saturating_add(FREE)
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

    /// Frames are found however the bytes are cut: requests' headers and bodies count as
    /// payload, the preface and other frames do not.
    #[test]
    fn frames_are_counted_across_reads() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, &[0; 6])); // SETTINGS
        bytes.extend(frame(0x1, &[7; 40])); // HEADERS
        bytes.extend(frame(0x9, &[7; 3])); // CONTINUATION
        bytes.extend(frame(0x8, &[0, 0, 0, 1])); // WINDOW_UPDATE
        bytes.extend(frame(0x0, &[1; 1000])); // DATA
        bytes.extend(frame(0x6, &[0; 8])); // PING
        for cut in [1, 2, 5, 9, 10, 24, 33, 100, bytes.len()] {
            let mut c = Count::default();
            for piece in bytes.chunks(cut) {
                assert!(c.read(piece));
            }
            assert_eq!(
                (c.total, c.payload),
                (bytes.len() as u64, 1043),
                "cut {cut}"
            );
            assert_eq!((c.head_len, c.payload_left, c.preface), (0, 0, 0));
        }
    }

    /// nginx's rule: closed once the bytes read over 8 are more than the requests' bytes
    /// plus 1 MiB; a client whose bytes are mostly requests never is.
    #[test]
    fn a_flood_is_the_bytes_read_over_eight_past_the_requests_plus_a_mebibyte() {
        let update = frame(0x8, &[0, 0, 0, 1]);
        let mut c = Count::default();
        assert!(c.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        let mut sent = 24u64;
        while c.read(&update) {
            sent += update.len() as u64;
            assert!(sent < 9 << 20, "not closed after {sent} bytes");
        }
        assert!(sent >= 8 << 20, "closed after {sent} bytes");

        // Requests, with a flow-control update now and then: however long, never a flood.
        let mut c = Count::default();
        assert!(c.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        let request = frame(0x1, &[9; 30]);
        let body = frame(0x0, &[b'x'; 1500]);
        for i in 0..20_000 {
            assert!(c.read(&request) && c.read(&body) && c.read(&update), "{i}");
        }
    }
}
