//! The primitive encodings every frame and the message body are built from: little-endian
//! integers, booleans, flag bytes, `u8`-prefixed short strings, `u32`-prefixed byte strings and
//! counts.
//!
//! [`Reader`] walks a [`Bytes`] buffer and hands out slices of it, so nothing it reads is copied.
//! Each read names the field it expects, and every failure reports the offset of that field from
//! the start of the buffer. A length is compared with its limit and with the bytes actually present
//! before anything is sliced or allocated. The writing helpers check the same limits, so an
//! encoder cannot produce a frame its own decoder would refuse.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::limits::SHORT_STR_SIZE_MAX;
use crate::text::{ShortStr, Text};

/// A cursor over a buffer being decoded.
#[derive(Debug)]
pub(crate) struct Reader {
    input: Bytes,
    position: usize,
}

impl Reader {
    /// A reader over `input`, starting at `position` (a frame reader starts after the header, so
    /// offsets in errors stay counted from the start of the frame).
    pub(crate) fn new(input: Bytes, position: usize) -> Reader {
        debug_assert!(position <= input.len());
        Reader { input, position }
    }

    pub(crate) fn position(&self) -> usize {
        self.position
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    /// The next `count` bytes, shared with the input.
    pub(crate) fn take(&mut self, count: usize, field: &'static str) -> Result<Bytes, Error> {
        if count > self.remaining() {
            return Err(Error::Truncated {
                offset: self.position,
                field,
                needed: count,
                available: self.remaining(),
            });
        }
        let slice = self.input.slice(self.position..self.position + count);
        self.position += count;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Error> {
        if N > self.remaining() {
            return Err(Error::Truncated {
                offset: self.position,
                field,
                needed: N,
                available: self.remaining(),
            });
        }
        let mut array = [0u8; N];
        array.copy_from_slice(&self.input[self.position..self.position + N]);
        self.position += N;
        Ok(array)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Error> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, Error> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn f64(&mut self, field: &'static str) -> Result<f64, Error> {
        Ok(f64::from_le_bytes(self.array(field)?))
    }

    /// A boolean byte: exactly `0` or `1`, so that every value has one encoding.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, Error> {
        let offset = self.position;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::BadValue {
                offset,
                field,
                value: u64::from(value),
            }),
        }
    }

    /// A flag byte whose bits outside `defined` must be zero: a bit this version does not know
    /// could change the meaning of the request, so it is refused rather than ignored.
    pub(crate) fn flags(&mut self, field: &'static str, defined: u8) -> Result<u8, Error> {
        let offset = self.position;
        let flags = self.u8(field)?;
        if flags & !defined != 0 {
            return Err(Error::BadValue {
                offset,
                field,
                value: u64::from(flags),
            });
        }
        Ok(flags)
    }

    /// A `u8` length and that many bytes of UTF-8.
    pub(crate) fn short_str(&mut self, field: &'static str) -> Result<ShortStr, Error> {
        let length = self.u8(field)?;
        let offset = self.position;
        let bytes = self.take(usize::from(length), field)?;
        ShortStr::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { offset, field })
    }

    /// A `u32` length, checked against `limit`, and that many bytes.
    pub(crate) fn long_bytes(&mut self, field: &'static str, limit: usize) -> Result<Bytes, Error> {
        let offset = self.position;
        let length = self.u32(field)?;
        if u64::from(length) > limit as u64 {
            return Err(Error::LengthOverLimit {
                offset,
                field,
                length: u64::from(length),
                limit: limit as u64,
            });
        }
        self.take(length as usize, field)
    }

    /// A `u32` length and that many bytes of UTF-8.
    pub(crate) fn text(&mut self, field: &'static str) -> Result<Text, Error> {
        let bytes = self.long_bytes(field, usize::MAX)?;
        let offset = self.position - bytes.len();
        Text::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { offset, field })
    }

    /// A `u16` count, checked against `limit` before any entry is read.
    pub(crate) fn count(&mut self, field: &'static str, limit: usize) -> Result<usize, Error> {
        let offset = self.position;
        let count = self.u16(field)?;
        if usize::from(count) > limit {
            return Err(Error::LengthOverLimit {
                offset,
                field,
                length: u64::from(count),
                limit: limit as u64,
            });
        }
        Ok(usize::from(count))
    }

    /// Fails if any input is left: a frame has exactly one encoding of its fields.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.remaining() != 0 {
            return Err(Error::TrailingBytes {
                offset: self.position,
                count: self.remaining(),
            });
        }
        Ok(())
    }
}

/// The capacity to reserve for `count` entries of at least `entry_size_min` bytes each: never more
/// than the remaining input could hold, so a small frame announcing a large (but within-limit)
/// count cannot make the decoder allocate far more than the frame's own size.
pub(crate) fn capacity_for(count: usize, reader: &Reader, entry_size_min: usize) -> usize {
    debug_assert!(entry_size_min > 0);
    count.min(reader.remaining() / entry_size_min)
}

pub(crate) fn put_short_str(dst: &mut BytesMut, text: &ShortStr) {
    // `ShortStr` guarantees the bound; asserted because a longer length would wrap in the cast.
    assert!(text.len() <= SHORT_STR_SIZE_MAX);
    dst.put_u8(text.len() as u8);
    dst.put_slice(text.as_bytes());
}

pub(crate) fn put_long_bytes(
    dst: &mut BytesMut,
    bytes: &[u8],
    field: &'static str,
    limit: usize,
) -> Result<(), Error> {
    let limit = limit.min(u32::MAX as usize);
    if bytes.len() > limit {
        return Err(Error::EncodeOverLimit {
            field,
            length: bytes.len() as u64,
            limit: limit as u64,
        });
    }
    dst.put_u32_le(bytes.len() as u32);
    dst.put_slice(bytes);
    Ok(())
}

pub(crate) fn put_count(
    dst: &mut BytesMut,
    count: usize,
    field: &'static str,
    limit: usize,
) -> Result<(), Error> {
    debug_assert!(limit <= usize::from(u16::MAX));
    if count > limit {
        return Err(Error::EncodeOverLimit {
            field,
            length: count as u64,
            limit: limit as u64,
        });
    }
    dst.put_u16_le(count as u16);
    Ok(())
}

pub(crate) fn put_bool(dst: &mut BytesMut, value: bool) {
    dst.put_u8(u8::from(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_read_reports_the_field_offset_and_shortfall() {
        let mut reader = Reader::new(Bytes::from_static(&[1, 2, 3]), 1);
        assert_eq!(
            reader.u32("sequence"),
            Err(Error::Truncated {
                offset: 1,
                field: "sequence",
                needed: 4,
                available: 2
            })
        );
    }

    #[test]
    fn a_length_over_its_limit_fails_before_the_bytes_are_looked_for() {
        let mut reader = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]), 0);
        assert!(matches!(
            reader.long_bytes("credentials", 4096),
            Err(Error::LengthOverLimit {
                offset: 0,
                length: 0xffff_ffff,
                limit: 4096,
                ..
            })
        ));
    }

    #[test]
    fn booleans_other_than_zero_and_one_are_refused() {
        let mut reader = Reader::new(Bytes::from_static(&[2]), 0);
        assert!(matches!(
            reader.bool("redelivered"),
            Err(Error::BadValue { value: 2, .. })
        ));
    }

    #[test]
    fn undefined_flag_bits_are_refused() {
        let mut reader = Reader::new(Bytes::from_static(&[0b1000_0001]), 0);
        assert!(matches!(
            reader.flags("flags", 0b1),
            Err(Error::BadValue { value: 0x81, .. })
        ));
    }
}
