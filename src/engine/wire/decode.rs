//! Decoding a compressed upstream answer before the rewrite. Each codec is a cargo feature
//! (`decompression-gzip`, `-deflate`, `-br`, `-zstd`; all on by default), as in tower-http:
//! an answer in an encoding this build does not decode passes through untouched.

use std::borrow::Cow;
#[cfg(any(
    feature = "decompression-gzip",
    feature = "decompression-deflate",
    feature = "decompression-br",
    feature = "decompression-zstd"
))]
use std::io::Read;

use http::HeaderValue;

/// Decodes `raw` per its `Content-Encoding` (gzip, deflate, br, zstd; identity as is), with
/// the decoded size bounded by `limit`. `None` when the encoding is unknown, the data is
/// corrupt, or it decodes to more than `limit`: the caller then passes the answer through.
#[cfg_attr(
    not(any(
        feature = "decompression-gzip",
        feature = "decompression-deflate",
        feature = "decompression-br",
        feature = "decompression-zstd"
    )),
    allow(unused_variables)
)]
pub(crate) fn decode<'a>(
    encoding: Option<&HeaderValue>,
    raw: &'a [u8],
    limit: usize,
) -> Option<Cow<'a, [u8]>> {
    match codec(encoding)? {
        Codec::Identity => Some(Cow::Borrowed(raw)),
        #[cfg(any(
            feature = "decompression-gzip",
            feature = "decompression-deflate",
            feature = "decompression-br",
            feature = "decompression-zstd"
        ))]
        codec => inflate(codec, raw, limit),
    }
}

/// `raw` decoded by `codec`, at most `limit` bytes of it.
#[cfg(any(
    feature = "decompression-gzip",
    feature = "decompression-deflate",
    feature = "decompression-br",
    feature = "decompression-zstd"
))]
fn inflate(codec: Codec, raw: &[u8], limit: usize) -> Option<Cow<'_, [u8]>> {
    let reader: Box<dyn Read + '_> = match codec {
        Codec::Identity => return Some(Cow::Borrowed(raw)),
        #[cfg(feature = "decompression-gzip")]
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        // RFC 9110's deflate is zlib-wrapped; some servers send it raw.
        #[cfg(feature = "decompression-deflate")]
        Codec::Deflate if raw.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(raw))
        }
        #[cfg(feature = "decompression-deflate")]
        Codec::Deflate => Box::new(flate2::read::DeflateDecoder::new(raw)),
        #[cfg(feature = "decompression-br")]
        Codec::Brotli => Box::new(brotli::Decompressor::new(raw, 8192)),
        #[cfg(feature = "decompression-zstd")]
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw).ok()?),
    };
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    reader.take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(Cow::Owned(out))
}

/// Whether `encoding` is one this build decodes (no encoding and `identity` included).
pub(crate) fn supported(encoding: Option<&HeaderValue>) -> bool {
    codec(encoding).is_some()
}

enum Codec {
    Identity,
    #[cfg(feature = "decompression-gzip")]
    Gzip,
    #[cfg(feature = "decompression-deflate")]
    Deflate,
    #[cfg(feature = "decompression-br")]
    Brotli,
    #[cfg(feature = "decompression-zstd")]
    Zstd,
}

fn codec(encoding: Option<&HeaderValue>) -> Option<Codec> {
    let Some(encoding) = encoding else {
        return Some(Codec::Identity);
    };
    let encoding = encoding.to_str().ok()?.trim();
    Some(match encoding.to_ascii_lowercase().as_str() {
        "" | "identity" => Codec::Identity,
        #[cfg(feature = "decompression-gzip")]
        "gzip" | "x-gzip" => Codec::Gzip,
        #[cfg(feature = "decompression-deflate")]
        "deflate" => Codec::Deflate,
        #[cfg(feature = "decompression-br")]
        "br" => Codec::Brotli,
        #[cfg(feature = "decompression-zstd")]
        "zstd" => Codec::Zstd,
        _ => return None,
    })
}

#[cfg(all(
    test,
    feature = "decompression-gzip",
    feature = "decompression-deflate",
    feature = "decompression-br",
    feature = "decompression-zstd"
))]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] = br#"{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"}}"#;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn decodes_every_supported_encoding() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(TEXT).unwrap();
        let gz = gz.finish().unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(TEXT).unwrap();
        let zl = zl.finish().unwrap();
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(TEXT)
            .unwrap();
        let zs = zstd::encode_all(TEXT, 3).unwrap();
        for (enc, data) in [("gzip", &gz), ("deflate", &zl), ("br", &br), ("zstd", &zs)] {
            assert_eq!(
                decode(Some(&hv(enc)), data, 1 << 20).as_deref(),
                Some(TEXT),
                "{enc}"
            );
        }
        assert_eq!(decode(None, TEXT, 10).as_deref(), Some(TEXT));
        assert_eq!(decode(Some(&hv("gzip")), &gz, 10), None, "over the limit");
        assert_eq!(decode(Some(&hv("gzip")), b"not gzip", 100), None);
        assert_eq!(decode(Some(&hv("compress")), TEXT, 100), None);
        assert!(supported(None) && supported(Some(&hv("GZIP"))));
        assert!(!supported(Some(&hv("compress"))));
    }
}
