//! Decoding a compressed upstream answer before the rewrite.

use std::borrow::Cow;
use std::io::Read;

use http::HeaderValue;

/// Decodes `raw` per its `Content-Encoding` (gzip, deflate, br, zstd; identity as is), with
/// the decoded size bounded by `limit`. `None` when the encoding is unknown, the data is
/// corrupt, or it decodes to more than `limit`: the caller then passes the answer through.
pub(crate) fn decode<'a>(
    encoding: Option<&HeaderValue>,
    raw: &'a [u8],
    limit: usize,
) -> Option<Cow<'a, [u8]>> {
    let Some(encoding) = encoding else {
        return Some(Cow::Borrowed(raw));
    };
    let encoding = encoding.to_str().ok()?.trim();
    let reader: Box<dyn Read + '_> = match encoding.to_ascii_lowercase().as_str() {
        "" | "identity" => return Some(Cow::Borrowed(raw)),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        // RFC 9110's deflate is zlib-wrapped; some servers send it raw.
        "deflate" if raw.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(raw))
        }
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(raw)),
        "br" => Box::new(brotli::Decompressor::new(raw, 8192)),
        "zstd" => Box::new(zstd::stream::read::Decoder::with_buffer(raw).ok()?),
        _ => return None,
    };
    let mut out = Vec::with_capacity(raw.len() * 4);
    reader.take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(Cow::Owned(out))
}

#[cfg(test)]
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
    }
}
