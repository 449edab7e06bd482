//! Typed key-value tables: the argument tables of declares, binds and consumes, and the headers of
//! a message body.
//!
//! A table is a `u16` entry count followed by that many entries; an entry is a short-string key, a
//! one-byte type tag and the value. The value set is deliberately small (string, bytes, signed
//! integer, boolean, float): enough for queue arguments (`x-max-length`, `x-message-ttl`), headers
//! exchange matching and application metadata, without nested containers whose depth a decoder
//! would have to bound. Keys should be unique; where they are not, lookups return the first.
//!
//! | Tag    | Type  | Encoding                          |
//! |--------|-------|-----------------------------------|
//! | `0x01` | Str   | `u32` length, UTF-8 bytes         |
//! | `0x02` | Bytes | `u32` length, bytes               |
//! | `0x03` | Int   | `i64`, little-endian              |
//! | `0x04` | Bool  | `u8`, `0` or `1`                  |
//! | `0x05` | Float | `f64`, IEEE 754 bits little-endian |

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, capacity_for, put_bool, put_count, put_long_bytes, put_short_str};
use crate::error::Error;
use crate::limits::TABLE_ENTRY_COUNT_MAX;
use crate::text::{ShortStr, Text};

/// The smallest encoded entry: an empty key, a tag and a boolean.
const TABLE_ENTRY_SIZE_MIN: usize = 3;

const TAG_STR: u8 = 0x01;
const TAG_BYTES: u8 = 0x02;
const TAG_INT: u8 = 0x03;
const TAG_BOOL: u8 = 0x04;
const TAG_FLOAT: u8 = 0x05;

/// One table value.
#[derive(Clone, Debug)]
pub enum Value {
    /// UTF-8 text of any length.
    Str(Text),
    /// Opaque bytes.
    Bytes(Bytes),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A 64-bit float.
    Float(f64),
}

impl PartialEq for Value {
    /// Floats compare by bit pattern, so a decoded NaN equals the NaN that was encoded and the
    /// declare-equivalence check sees the bytes a client sent.
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(left), Value::Str(right)) => left == right,
            (Value::Bytes(left), Value::Bytes(right)) => left == right,
            (Value::Int(left), Value::Int(right)) => left == right,
            (Value::Bool(left), Value::Bool(right)) => left == right,
            (Value::Float(left), Value::Float(right)) => left.to_bits() == right.to_bits(),
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Value::Str(text) => {
                dst.put_u8(TAG_STR);
                put_long_bytes(dst, text.as_bytes(), "string value", usize::MAX)
            }
            Value::Bytes(bytes) => {
                dst.put_u8(TAG_BYTES);
                put_long_bytes(dst, bytes, "bytes value", usize::MAX)
            }
            Value::Int(int) => {
                dst.put_u8(TAG_INT);
                dst.put_i64_le(*int);
                Ok(())
            }
            Value::Bool(boolean) => {
                dst.put_u8(TAG_BOOL);
                put_bool(dst, *boolean);
                Ok(())
            }
            Value::Float(float) => {
                dst.put_u8(TAG_FLOAT);
                dst.put_f64_le(*float);
                Ok(())
            }
        }
    }

    pub(crate) fn decode(reader: &mut Reader) -> Result<Value, Error> {
        let offset = reader.position();
        match reader.u8("value type")? {
            TAG_STR => reader.text("string value").map(Value::Str),
            TAG_BYTES => reader
                .long_bytes("bytes value", usize::MAX)
                .map(Value::Bytes),
            TAG_INT => reader.i64("integer value").map(Value::Int),
            TAG_BOOL => reader.bool("boolean value").map(Value::Bool),
            TAG_FLOAT => reader.f64("float value").map(Value::Float),
            tag => Err(Error::BadValue {
                offset,
                field: "value type",
                value: u64::from(tag),
            }),
        }
    }
}

/// An ordered list of key-value entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    entries: Vec<(ShortStr, Value)>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }

    /// Sets `key` to `value`, replacing an earlier entry with the same key.
    pub fn insert(&mut self, key: ShortStr, value: Value) {
        match self
            .entries
            .iter_mut()
            .find(|(existing, _)| *existing == key)
        {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(existing, _)| existing.as_str() == key)
            .map(|(_, value)| value)
    }

    /// The entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &Value)> {
        self.entries.iter().map(|(key, value)| (key, value))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A table of exactly `entries`, repeated keys included, as decoded from the wire: keeping
    /// them is what makes a decoded table re-encode to the same bytes.
    pub(crate) fn from_wire(entries: Vec<(ShortStr, Value)>) -> Table {
        Table { entries }
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        put_count(
            dst,
            self.entries.len(),
            "table entry count",
            TABLE_ENTRY_COUNT_MAX,
        )?;
        for (key, value) in &self.entries {
            put_short_str(dst, key);
            value.encode(dst)?;
        }
        Ok(())
    }

    /// Checks a table's encoding without building it, for a body that keeps only its byte range.
    pub(crate) fn validate(reader: &mut Reader) -> Result<(), Error> {
        let count = reader.count("table entry count", TABLE_ENTRY_COUNT_MAX)?;
        for _ in 0..count {
            reader.short_str("table key")?;
            Value::decode(reader)?;
        }
        Ok(())
    }

    pub(crate) fn decode(reader: &mut Reader) -> Result<Table, Error> {
        let count = reader.count("table entry count", TABLE_ENTRY_COUNT_MAX)?;
        let mut entries = Vec::with_capacity(capacity_for(count, reader, TABLE_ENTRY_SIZE_MIN));
        for _ in 0..count {
            let key = reader.short_str("table key")?;
            let value = Value::decode(reader)?;
            entries.push((key, value));
        }
        Ok(Table { entries })
    }
}

impl FromIterator<(ShortStr, Value)> for Table {
    /// Builds a table in iteration order; a repeated key replaces the earlier value.
    fn from_iter<I: IntoIterator<Item = (ShortStr, Value)>>(entries: I) -> Table {
        let mut table = Table::new();
        for (key, value) in entries {
            table.insert(key, value);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserting_an_existing_key_replaces_its_value() {
        let mut table = Table::new();
        table.insert(ShortStr::from_static("x-max-length"), Value::Int(10));
        table.insert(ShortStr::from_static("x-max-length"), Value::Int(20));
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("x-max-length"), Some(&Value::Int(20)));
    }

    #[test]
    fn a_table_round_trips_every_value_type() {
        let table: Table = [
            ("s", Value::Str(Text::from("héllo"))),
            ("b", Value::Bytes(Bytes::from_static(&[0, 255]))),
            ("i", Value::Int(-3)),
            ("t", Value::Bool(true)),
            ("f", Value::Float(f64::NAN)),
        ]
        .into_iter()
        .map(|(key, value)| (ShortStr::try_from(key).unwrap(), value))
        .collect();
        let mut buffer = BytesMut::new();
        table.encode(&mut buffer).unwrap();
        let mut reader = Reader::new(buffer.freeze(), 0);
        assert_eq!(Table::decode(&mut reader).unwrap(), table);
        reader.finish().unwrap();
    }

    #[test]
    fn an_unknown_value_tag_is_a_bad_value_at_its_offset() {
        let bytes = Bytes::from_static(&[1, 0, 1, b'k', 0x09]);
        let error = Table::decode(&mut Reader::new(bytes, 0)).unwrap_err();
        assert_eq!(
            error,
            Error::BadValue {
                offset: 4,
                field: "value type",
                value: 9
            }
        );
    }

    #[test]
    fn a_table_count_over_the_limit_is_refused_before_reading_entries() {
        let bytes = Bytes::from_static(&[0x01, 0x01]);
        let error = Table::decode(&mut Reader::new(bytes, 0)).unwrap_err();
        assert!(matches!(
            error,
            Error::LengthOverLimit {
                length: 257,
                limit: 256,
                ..
            }
        ));
    }
}
