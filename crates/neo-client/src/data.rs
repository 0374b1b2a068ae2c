//! Object data as it travels: zlib compression when it pays, SHA-1 of the
//! bytes sent (architecture.md §0.2).

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use neo_proto::Checksum;
use sha1::{Digest, Sha1};

/// `compression` value of raw data.
pub const RAW: u8 = 0;
/// `compression` value of zlib data.
pub const ZLIB: u8 = 1;

/// SHA-1 of `data`.
pub fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

/// Data ready to be sent in `AskStoreObject`.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// [`RAW`] or [`ZLIB`].
    pub compression: u8,
    /// SHA-1 of `data`.
    pub checksum: Checksum,
    /// The bytes sent.
    pub data: Bytes,
}

/// Encodes object data: zlib only if strictly smaller, as NEO/py does, so
/// that both implementations store the same bytes for the same object.
pub fn encode(data: &Bytes, compress: bool) -> Encoded {
    if compress && !data.is_empty() {
        let mut encoder =
            ZlibEncoder::new(Vec::with_capacity(data.len() / 2), Compression::default());
        // Writing to a Vec cannot fail.
        if encoder.write_all(data).is_ok() {
            if let Ok(compressed) = encoder.finish() {
                if compressed.len() < data.len() {
                    let checksum = checksum(&compressed);
                    return Encoded {
                        compression: ZLIB,
                        checksum,
                        data: Bytes::from(compressed),
                    };
                }
            }
        }
    }
    Encoded {
        compression: RAW,
        checksum: checksum(data),
        data: data.clone(),
    }
}

/// "No data": what a deletion or an undone creation sends and stores.
pub fn no_data() -> Encoded {
    Encoded {
        compression: RAW,
        checksum: Checksum::ZERO,
        data: Bytes::new(),
    }
}

/// Why received data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The SHA-1 of the data differs from the checksum sent with it.
    #[error("checksum mismatch")]
    Checksum,
    /// A `compression` value other than 0 and 1.
    #[error("unknown compression {0}")]
    Compression(u8),
    /// zlib refused the data.
    #[error("zlib: {0}")]
    Zlib(String),
    /// Decompressed data above the configured limit.
    #[error("decompressed data larger than {0} bytes")]
    TooLarge(usize),
}

/// Verifies and decompresses received data. `None` means "no data" (empty
/// data with the zero checksum: deletion or undone creation).
pub fn decode(
    compression: Option<u8>,
    sum: &Checksum,
    data: &Bytes,
    max_size: usize,
) -> Result<Option<Bytes>, DecodeError> {
    if data.is_empty() && *sum == Checksum::ZERO {
        return Ok(None);
    }
    if checksum(data) != *sum {
        return Err(DecodeError::Checksum);
    }
    match compression.unwrap_or(RAW) {
        RAW => Ok(Some(data.clone())),
        ZLIB => {
            // The limit guards against a decompression bomb from a peer.
            let limit = u64::try_from(max_size)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            let mut out = Vec::with_capacity(data.len().saturating_mul(3).min(max_size));
            ZlibDecoder::new(&data[..])
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| DecodeError::Zlib(e.to_string()))?;
            if out.len() > max_size {
                return Err(DecodeError::TooLarge(max_size));
            }
            Ok(Some(Bytes::from(out)))
        }
        other => Err(DecodeError::Compression(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_only_when_smaller() {
        let repetitive = Bytes::from(vec![b'x'; 1000]);
        let encoded = encode(&repetitive, true);
        assert_eq!(encoded.compression, ZLIB);
        assert!(encoded.data.len() < 1000);
        assert_eq!(
            decode(Some(ZLIB), &encoded.checksum, &encoded.data, 1 << 20),
            Ok(Some(repetitive))
        );
        let short = Bytes::from_static(b"ab");
        let encoded = encode(&short, true);
        assert_eq!(encoded.compression, RAW);
        assert_eq!(encoded.checksum, checksum(b"ab"));
    }

    #[test]
    fn empty_value_is_not_no_data() {
        let encoded = encode(&Bytes::new(), true);
        assert_ne!(encoded.checksum, Checksum::ZERO);
        assert_eq!(
            decode(Some(RAW), &encoded.checksum, &encoded.data, 10),
            Ok(Some(Bytes::new()))
        );
        let none = no_data();
        assert_eq!(decode(None, &none.checksum, &none.data, 10), Ok(None));
    }

    #[test]
    fn bad_data_is_refused() {
        let data = Bytes::from_static(b"hello");
        assert_eq!(
            decode(Some(RAW), &Checksum([1; 20]), &data, 10),
            Err(DecodeError::Checksum)
        );
        let sum = checksum(&data);
        assert!(matches!(
            decode(Some(ZLIB), &sum, &data, 10),
            Err(DecodeError::Zlib(_))
        ));
        assert_eq!(
            decode(Some(7), &sum, &data, 10),
            Err(DecodeError::Compression(7))
        );
        let big = encode(&Bytes::from(vec![0u8; 10_000]), true);
        assert_eq!(
            decode(Some(ZLIB), &big.checksum, &big.data, 100),
            Err(DecodeError::TooLarge(100))
        );
    }

    #[test]
    fn matches_neo_py_bytes() {
        // session-basic.jsonl seq 107: NEO/py's store of the root object.
        let sum = checksum(b"");
        assert_eq!(
            format!("{sum:?}"),
            "Checksum(da39a3ee5e6b4b0d3255bfef95601890afd80709)"
        );
    }
}
