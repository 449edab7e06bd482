//! UTF-8 strings that share the receive buffer: [`ShortStr`] (at most 255 bytes, for names, keys
//! and short properties) and [`Text`] (any length, for header string values).
//!
//! Both hold a [`Bytes`] slice of the frame they were decoded from, so decoding a routing key or a
//! queue name copies nothing. Both are valid UTF-8 by construction: every constructor checks, and
//! nothing else can build one.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::limits::SHORT_STR_SIZE_MAX;

/// Valid UTF-8 of any length, backed by [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    /// Wraps `bytes` if they are valid UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Text, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Text(bytes))
    }

    /// A text that points at static memory: no allocation.
    pub const fn from_static(text: &'static str) -> Text {
        Text(Bytes::from_static(text.as_bytes()))
    }

    /// The text as a `&str`.
    pub fn as_str(&self) -> &str {
        // Every constructor validated the bytes, and `Bytes` never changes them; a failure here is
        // a bug in this module, so it is asserted rather than handled.
        std::str::from_utf8(&self.0).expect("Text holds validated utf-8")
    }

    /// The underlying bytes, shared with the buffer they came from.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Bytes::from(text))
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(Bytes::copy_from_slice(text.as_bytes()))
    }
}

/// Valid UTF-8 of at most [`SHORT_STR_SIZE_MAX`] bytes, backed by [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortStr(Text);

/// Why a string cannot become a [`ShortStr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortStrError {
    /// The bytes are not valid UTF-8.
    InvalidUtf8,
    /// The string is longer than [`SHORT_STR_SIZE_MAX`] bytes; the length is given.
    TooLong(usize),
}

impl fmt::Display for ShortStrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShortStrError::InvalidUtf8 => write!(f, "short string is not valid utf-8"),
            ShortStrError::TooLong(length) => {
                write!(
                    f,
                    "short string of {length} bytes exceeds {SHORT_STR_SIZE_MAX}"
                )
            }
        }
    }
}

impl std::error::Error for ShortStrError {}

impl ShortStr {
    /// Wraps `bytes` if they are valid UTF-8 and short enough.
    pub fn from_utf8(bytes: Bytes) -> Result<ShortStr, ShortStrError> {
        if bytes.len() > SHORT_STR_SIZE_MAX {
            return Err(ShortStrError::TooLong(bytes.len()));
        }
        Text::from_utf8(bytes)
            .map(ShortStr)
            .map_err(|_| ShortStrError::InvalidUtf8)
    }

    /// A short string that points at static memory.
    ///
    /// # Panics
    /// If `text` is longer than [`SHORT_STR_SIZE_MAX`] bytes: a constant that long is a bug.
    pub const fn from_static(text: &'static str) -> ShortStr {
        assert!(
            text.len() <= SHORT_STR_SIZE_MAX,
            "static short string too long"
        );
        ShortStr(Text::from_static(text))
    }

    /// The string as a `&str`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The underlying bytes, shared with the buffer they came from.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }
}

impl TryFrom<&str> for ShortStr {
    type Error = ShortStrError;

    fn try_from(text: &str) -> Result<ShortStr, ShortStrError> {
        ShortStr::from_utf8(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl TryFrom<String> for ShortStr {
    type Error = ShortStrError;

    fn try_from(text: String) -> Result<ShortStr, ShortStrError> {
        ShortStr::from_utf8(Bytes::from(text))
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Deref for ShortStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_reject_256_bytes_and_accept_255() {
        assert!(ShortStr::try_from("a".repeat(255)).is_ok());
        assert_eq!(
            ShortStr::try_from("a".repeat(256)),
            Err(ShortStrError::TooLong(256))
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let bytes = Bytes::from_static(&[0x66, 0xff, 0x6f]);
        assert_eq!(
            ShortStr::from_utf8(bytes.clone()),
            Err(ShortStrError::InvalidUtf8)
        );
        assert!(Text::from_utf8(bytes).is_err());
    }

    #[test]
    fn a_short_string_shares_the_buffer_it_was_made_from() {
        let frame = Bytes::from_static(b"xxorders");
        let name = ShortStr::from_utf8(frame.slice(2..)).unwrap();
        assert_eq!(name, "orders");
        assert_eq!(name.as_bytes().as_ptr(), frame[2..].as_ptr());
    }
}
