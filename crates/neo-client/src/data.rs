//! Object data as it travels: zlib compression when it pays, SHA-1 of the
//! bytes sent (architecture.md §0.2).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
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
        if let Some(compressed) = deflate(data) {
            let checksum = checksum(&compressed);
            return Encoded {
                compression: ZLIB,
                checksum,
                data: Bytes::from(compressed),
            };
        }
    }
    Encoded {
        compression: RAW,
        checksum: checksum(data),
        data: data.clone(),
    }
}

thread_local! {
    /// One compressor per thread, reset between objects: setting one up
    /// zeroes hundreds of KiB of tables, which took most of a commit's
    /// client CPU when done per object.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), true));
    /// Likewise for decompression.
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(true));
}

/// `data` zlib-compressed, if that is strictly smaller.
fn deflate(data: &[u8]) -> Option<Vec<u8>> {
    DEFLATE.with(|deflate| {
        let mut deflate = deflate.borrow_mut();
        deflate.reset();
        // Room for anything smaller than the input and no more: a
        // compressed stream that does not end in it is not worth it.
        let mut out = Vec::with_capacity(data.len() - 1);
        let status = deflate.compress_vec(data, &mut out, FlushCompress::Finish);
        (matches!(status, Ok(Status::StreamEnd)) && out.len() < data.len()).then_some(out)
    })
}

/// `data` zlib-decompressed, refused beyond `max_size` bytes.
fn inflate(data: &[u8], max_size: usize) -> Result<Vec<u8>, DecodeError> {
    INFLATE.with(|inflate| {
        let mut inflate = inflate.borrow_mut();
        inflate.reset(true);
        let mut out = Vec::new();
        loop {
            // Room for a few times the input at first, then doubling (flate2
            // zeroes the room it is given: no more than needed), never for
            // more than one byte beyond the limit.
            let wanted = if out.is_empty() {
                data.len().saturating_mul(4).max(256)
            } else {
                out.len()
            };
            let room = wanted.min(max_size.saturating_add(1) - out.len());
            if out.capacity() - out.len() < room {
                out.reserve_exact(room);
            }
            let before = (inflate.total_in(), inflate.total_out());
            let consumed = usize::try_from(before.0).unwrap_or(usize::MAX);
            let input = data.get(consumed..).unwrap_or_default();
            let status = inflate
                .decompress_vec(input, &mut out, FlushDecompress::None)
                .map_err(|e| DecodeError::Zlib(e.to_string()))?;
            if out.len() > max_size {
                return Err(DecodeError::TooLarge(max_size));
            }
            if status == Status::StreamEnd {
                return Ok(out);
            }
            if (inflate.total_in(), inflate.total_out()) == before {
                return Err(DecodeError::Zlib("truncated stream".to_owned()));
            }
        }
    })
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
    decompress(compression, data, max_size).map(Some)
}

/// Decompresses data whose checksum was not (or could not be) verified.
pub fn decompress(
    compression: Option<u8>,
    data: &Bytes,
    max_size: usize,
) -> Result<Bytes, DecodeError> {
    match compression.unwrap_or(RAW) {
        RAW => Ok(data.clone()),
        // The limit guards against a decompression bomb from a peer.
        ZLIB => inflate(data, max_size).map(Bytes::from),
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
    fn round_trips_through_the_reused_compressors() {
        // Sizes that make decompression grow its buffer several times, and
        // data that does not compress, one after the other on one thread.
        let mut noise = Vec::with_capacity(4096);
        let mut x: u32 = 1;
        for _ in 0..4096 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            noise.push((x >> 16) as u8);
        }
        for data in [
            vec![0u8; 1 << 20],
            noise.clone(),
            b"abcabcabcabcabcabcabcabc".repeat(100),
            noise,
            vec![b'z'; 1],
        ] {
            let data = Bytes::from(data);
            let encoded = encode(&data, true);
            let decoded = decode(
                Some(encoded.compression),
                &encoded.checksum,
                &encoded.data,
                1 << 21,
            );
            assert_eq!(decoded, Ok(Some(data)));
        }
    }

    #[test]
    fn truncated_zlib_stream_is_refused() {
        let encoded = encode(&Bytes::from(vec![b'x'; 1000]), true);
        let cut = encoded.data.slice(..encoded.data.len() - 3);
        assert!(matches!(
            decode(Some(ZLIB), &checksum(&cut), &cut, 1 << 20),
            Err(DecodeError::Zlib(_))
        ));
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
