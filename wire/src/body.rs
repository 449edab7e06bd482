//! The message body: properties and payload, encoded once by the publisher and carried unchanged
//! by the broker (journal, rings, deliveries).
//!
//! The broker validates a body once, where it enters, with [`Body::parse`]. The result is a cheap
//! view over the same [`Bytes`]: the fixed properties are read out, string properties and the
//! payload are slices, and headers are walked lazily from their validated range (a headers
//! exchange usually needs one or two of them). From then on [`Body::as_bytes`] is the exact blob
//! to store and forward, and parsing it again later cannot fail.
//!
//! Layout (offsets from the start of the body; `PROTOCOL.md` section "Message body"):
//!
//! | Offset                 | Size | Field           | Notes                                   |
//! |------------------------|------|-----------------|-----------------------------------------|
//! | `BODY_VERSION_OFFSET`  | 1    | format version  | `1`                                     |
//! | `BODY_FLAGS_OFFSET`    | 2    | property flags  | bit `n` set: property `n` is present    |
//! | `BODY_PREFIX_SIZE`     | var  | properties      | present ones, in ascending bit order    |
//! | after the properties   | rest | payload         | everything up to the end of the body    |
//!
//! | Bit | Property         | Encoding                                    |
//! |-----|------------------|---------------------------------------------|
//! | 0   | content type     | short string                                |
//! | 1   | headers          | table                                       |
//! | 2   | priority         | `u8`                                        |
//! | 3   | expiration       | `u64` milliseconds of time to live          |
//! | 4   | message id       | short string                                |
//! | 5   | correlation id   | short string                                |
//! | 6   | reply-to         | short string                                |
//! | 7   | timestamp        | `u64` milliseconds since the Unix epoch     |
//! | 8-15| reserved         | must be zero                                |

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, put_short_str};
use crate::error::Error;
use crate::table::{Table, Value};
use crate::text::ShortStr;

/// The body format this crate writes and reads.
pub const BODY_FORMAT_VERSION: u8 = 1;

/// Offset of the format version byte.
pub const BODY_VERSION_OFFSET: usize = 0;
/// Offset of the `u16` property flags.
pub const BODY_FLAGS_OFFSET: usize = BODY_VERSION_OFFSET + 1;
/// Size of the fixed prefix before the first property.
pub const BODY_PREFIX_SIZE: usize = BODY_FLAGS_OFFSET + 2;

const _: () = assert!(BODY_PREFIX_SIZE == 3);

const FLAG_CONTENT_TYPE: u16 = 1 << 0;
const FLAG_HEADERS: u16 = 1 << 1;
const FLAG_PRIORITY: u16 = 1 << 2;
const FLAG_EXPIRATION: u16 = 1 << 3;
const FLAG_MESSAGE_ID: u16 = 1 << 4;
const FLAG_CORRELATION_ID: u16 = 1 << 5;
const FLAG_REPLY_TO: u16 = 1 << 6;
const FLAG_TIMESTAMP: u16 = 1 << 7;
const FLAGS_DEFINED: u16 = 0x00ff;

/// The properties of a message, owned, for building a body or inspecting one in full.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// MIME type of the payload, for example `application/json`.
    pub content_type: Option<ShortStr>,
    /// Application headers; also what a headers exchange matches on.
    pub headers: Option<Table>,
    /// Priority; larger is more urgent. A queue without priorities ignores it.
    pub priority: Option<u8>,
    /// Time to live in milliseconds, counted from when the broker accepts the message.
    pub expiration_ms: Option<u64>,
    /// Application message identifier.
    pub message_id: Option<ShortStr>,
    /// Identifier of the request this message answers.
    pub correlation_id: Option<ShortStr>,
    /// Where replies should be published (usually a queue name).
    pub reply_to: Option<ShortStr>,
    /// Milliseconds since the Unix epoch, set by the publisher.
    pub timestamp_ms: Option<u64>,
}

impl Properties {
    fn flags(&self) -> u16 {
        let mut flags = 0;
        let present = [
            (self.content_type.is_some(), FLAG_CONTENT_TYPE),
            (self.headers.is_some(), FLAG_HEADERS),
            (self.priority.is_some(), FLAG_PRIORITY),
            (self.expiration_ms.is_some(), FLAG_EXPIRATION),
            (self.message_id.is_some(), FLAG_MESSAGE_ID),
            (self.correlation_id.is_some(), FLAG_CORRELATION_ID),
            (self.reply_to.is_some(), FLAG_REPLY_TO),
            (self.timestamp_ms.is_some(), FLAG_TIMESTAMP),
        ];
        for (is_present, flag) in present {
            if is_present {
                flags |= flag;
            }
        }
        flags
    }

    /// Appends a body made of these properties and `payload` to `dst`. On error `dst` is left as
    /// it was.
    pub fn encode_body(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        let start = dst.len();
        let result = self.encode_body_unchecked(payload, dst);
        if result.is_err() {
            dst.truncate(start);
        }
        debug_assert!(
            result.is_err()
                || Body::parse(Bytes::copy_from_slice(&dst[start..]))
                    .is_ok_and(|body| body.properties() == *self && body.payload() == payload),
            "an encoded body does not parse back to its properties and payload"
        );
        result
    }

    /// A body made of these properties and `payload`, as one buffer ready for a publish.
    pub fn to_body(&self, payload: &[u8]) -> Result<Bytes, Error> {
        let mut body = BytesMut::with_capacity(BODY_PREFIX_SIZE + 64 + payload.len());
        self.encode_body(payload, &mut body)?;
        Ok(body.freeze())
    }

    fn encode_body_unchecked(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u8(BODY_FORMAT_VERSION);
        dst.put_u16_le(self.flags());
        if let Some(content_type) = &self.content_type {
            put_short_str(dst, content_type);
        }
        if let Some(headers) = &self.headers {
            headers.encode(dst)?;
        }
        if let Some(priority) = self.priority {
            dst.put_u8(priority);
        }
        if let Some(expiration_ms) = self.expiration_ms {
            dst.put_u64_le(expiration_ms);
        }
        for text in [&self.message_id, &self.correlation_id, &self.reply_to]
            .into_iter()
            .flatten()
        {
            put_short_str(dst, text);
        }
        if let Some(timestamp_ms) = self.timestamp_ms {
            dst.put_u64_le(timestamp_ms);
        }
        dst.put_slice(payload);
        Ok(())
    }
}

/// A validated message body: the exact bytes plus where each part lies in them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    bytes: Bytes,
    content_type: Option<ShortStr>,
    headers: Option<Range<usize>>,
    priority: Option<u8>,
    expiration_ms: Option<u64>,
    message_id: Option<ShortStr>,
    correlation_id: Option<ShortStr>,
    reply_to: Option<ShortStr>,
    timestamp_ms: Option<u64>,
    payload_offset: usize,
}

impl Body {
    /// Validates `bytes` as a body. Errors give offsets from the start of the body; a broker
    /// rejects such a message with [`crate::ErrorCode::INVALID_BODY`].
    pub fn parse(bytes: Bytes) -> Result<Body, Error> {
        let mut reader = Reader::new(bytes.clone(), 0);

        let version = reader.u8("body format version")?;
        if version != BODY_FORMAT_VERSION {
            return Err(Error::BadValue {
                offset: BODY_VERSION_OFFSET,
                field: "body format version",
                value: u64::from(version),
            });
        }
        let flags = reader.u16("property flags")?;
        if flags & !FLAGS_DEFINED != 0 {
            return Err(Error::BadValue {
                offset: BODY_FLAGS_OFFSET,
                field: "property flags",
                value: u64::from(flags),
            });
        }

        let present = |flag: u16| flags & flag != 0;
        let content_type = present(FLAG_CONTENT_TYPE)
            .then(|| reader.short_str("content type"))
            .transpose()?;
        let headers = if present(FLAG_HEADERS) {
            let start = reader.position();
            Table::validate(&mut reader)?;
            Some(start..reader.position())
        } else {
            None
        };
        let priority = present(FLAG_PRIORITY)
            .then(|| reader.u8("priority"))
            .transpose()?;
        let expiration_ms = present(FLAG_EXPIRATION)
            .then(|| reader.u64("expiration"))
            .transpose()?;
        let message_id = present(FLAG_MESSAGE_ID)
            .then(|| reader.short_str("message id"))
            .transpose()?;
        let correlation_id = present(FLAG_CORRELATION_ID)
            .then(|| reader.short_str("correlation id"))
            .transpose()?;
        let reply_to = present(FLAG_REPLY_TO)
            .then(|| reader.short_str("reply-to"))
            .transpose()?;
        let timestamp_ms = present(FLAG_TIMESTAMP)
            .then(|| reader.u64("timestamp"))
            .transpose()?;

        Ok(Body {
            payload_offset: reader.position(),
            bytes,
            content_type,
            headers,
            priority,
            expiration_ms,
            message_id,
            correlation_id,
            reply_to,
            timestamp_ms,
        })
    }

    /// The whole body, exactly as received: what the broker stores and forwards.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload, shared with the body.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(self.payload_offset..)
    }

    /// The content type property.
    pub fn content_type(&self) -> Option<&ShortStr> {
        self.content_type.as_ref()
    }

    /// Whether the headers property is present (possibly empty).
    pub fn has_headers(&self) -> bool {
        self.headers.is_some()
    }

    /// The headers in wire order; empty when the property is absent.
    pub fn headers(&self) -> Headers {
        let range = self.headers.clone().unwrap_or(0..0);
        let mut reader = Reader::new(self.bytes.slice(range), 0);
        // The range was validated by `parse`; an empty range (no headers) reads as zero entries.
        let remaining = reader
            .u16("table entry count")
            .map(usize::from)
            .unwrap_or(0);
        Headers { reader, remaining }
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<Value> {
        self.headers()
            .find(|(name, _)| name.as_str() == key)
            .map(|(_, value)| value)
    }

    /// The priority property.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// The time to live in milliseconds.
    pub fn expiration_ms(&self) -> Option<u64> {
        self.expiration_ms
    }

    /// The message id property.
    pub fn message_id(&self) -> Option<&ShortStr> {
        self.message_id.as_ref()
    }

    /// The correlation id property.
    pub fn correlation_id(&self) -> Option<&ShortStr> {
        self.correlation_id.as_ref()
    }

    /// The reply-to property.
    pub fn reply_to(&self) -> Option<&ShortStr> {
        self.reply_to.as_ref()
    }

    /// The timestamp property, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.timestamp_ms
    }

    /// All properties as an owned value (allocates the header table).
    pub fn properties(&self) -> Properties {
        Properties {
            content_type: self.content_type.clone(),
            headers: self
                .headers
                .as_ref()
                .map(|_| Table::from_wire(self.headers().collect())),
            priority: self.priority,
            expiration_ms: self.expiration_ms,
            message_id: self.message_id.clone(),
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.clone(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// The headers of a validated [`Body`], decoded one at a time.
#[derive(Debug)]
pub struct Headers {
    reader: Reader,
    remaining: usize,
}

impl Iterator for Headers {
    type Item = (ShortStr, Value);

    fn next(&mut self) -> Option<(ShortStr, Value)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // `Body::parse` validated every entry of this range, so these reads succeed; ending the
        // iteration on a failure keeps the iterator total without a panic path.
        let key = self.reader.short_str("table key").ok()?;
        let value = Value::decode(&mut self.reader).ok()?;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Text;

    fn full_properties() -> Properties {
        let mut headers = Table::new();
        headers.insert(
            ShortStr::from_static("region"),
            Value::Str(Text::from("eu")),
        );
        headers.insert(ShortStr::from_static("attempt"), Value::Int(2));
        Properties {
            content_type: Some(ShortStr::from_static("application/json")),
            headers: Some(headers),
            priority: Some(5),
            expiration_ms: Some(60_000),
            message_id: Some(ShortStr::from_static("m-1")),
            correlation_id: Some(ShortStr::from_static("c-1")),
            reply_to: Some(ShortStr::from_static("replies")),
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn an_empty_body_is_three_bytes_and_has_no_properties() {
        let body = Properties::default().to_body(b"").unwrap();
        assert_eq!(&body[..], &[BODY_FORMAT_VERSION, 0, 0]);
        let parsed = Body::parse(body).unwrap();
        assert_eq!(parsed.properties(), Properties::default());
        assert!(parsed.payload().is_empty());
    }

    #[test]
    fn every_property_survives_a_round_trip() {
        let properties = full_properties();
        let body = Body::parse(properties.to_body(b"{\"id\":1}").unwrap()).unwrap();
        assert_eq!(body.properties(), properties);
        assert_eq!(&body.payload()[..], b"{\"id\":1}");
        assert_eq!(body.header("attempt"), Some(Value::Int(2)));
        assert_eq!(body.header("missing"), None);
    }

    #[test]
    fn the_payload_is_a_slice_of_the_body_not_a_copy() {
        let bytes = full_properties().to_body(b"payload").unwrap();
        let body = Body::parse(bytes.clone()).unwrap();
        assert_eq!(body.payload().as_ptr(), bytes[bytes.len() - 7..].as_ptr());
    }

    #[test]
    fn repeated_header_keys_survive_a_round_trip_and_the_first_wins() {
        // Version 1, headers only: two entries named "k", ints 1 and 2, then payload "p".
        let mut bytes = vec![1, 0b10, 0, 2, 0];
        for value in [1u8, 2] {
            bytes.extend_from_slice(&[1, b'k', 3, value, 0, 0, 0, 0, 0, 0, 0]);
        }
        bytes.push(b'p');
        let body = Body::parse(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(body.header("k"), Some(Value::Int(1)));
        assert_eq!(
            body.properties().headers.map(|headers| headers.len()),
            Some(2)
        );
        assert_eq!(&body.properties().to_body(b"p").unwrap()[..], &bytes[..]);
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let error = Body::parse(Bytes::from_static(&[2, 0, 0])).unwrap_err();
        assert_eq!(
            error,
            Error::BadValue {
                offset: 0,
                field: "body format version",
                value: 2
            }
        );
    }

    #[test]
    fn reserved_property_bits_are_refused() {
        let error = Body::parse(Bytes::from_static(&[1, 0, 1])).unwrap_err();
        assert!(matches!(
            error,
            Error::BadValue {
                offset: 1,
                value: 0x100,
                ..
            }
        ));
    }

    #[test]
    fn a_truncated_property_reports_its_offset() {
        // Expiration flag set, but only 2 of its 8 bytes present.
        let error = Body::parse(Bytes::from_static(&[1, 0b1000, 0, 7, 7])).unwrap_err();
        assert_eq!(
            error,
            Error::Truncated {
                offset: 3,
                field: "expiration",
                needed: 8,
                available: 2
            }
        );
    }

    #[test]
    fn invalid_utf8_in_a_property_is_refused() {
        let error = Body::parse(Bytes::from_static(&[1, 1, 0, 1, 0xc3])).unwrap_err();
        assert_eq!(
            error,
            Error::InvalidUtf8 {
                offset: 4,
                field: "content type"
            }
        );
    }
}
