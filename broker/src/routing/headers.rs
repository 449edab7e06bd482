//! Headers-exchange matching: the borrowed view of a message's headers that routing reads, the
//! owned binding arguments that the control plane stores, and the compiled form of one binding.
//!
//! Equality between an argument value and a header value is exact, as in RabbitMQ (`=:=` on the
//! decoded values): integers equal integers of the same value, whatever width the wire used;
//! floats equal floats with the same bits (so `0.0` is not `-0.0`, and a NaN equals the same NaN);
//! an integer never equals a float; booleans equal booleans; and a string equals a string or a
//! byte array holding the same bytes, because RabbitMQ decodes both to the same binary. Nothing is
//! equal across any other pair of kinds.

use super::BINDING_ARGUMENT_COUNT_MAX;

/// The binding argument that selects the match mode.
pub const MATCH_MODE_KEY: &str = "x-match";

/// Under `all` and `any`, arguments whose key starts with this are settings, not conditions.
const SETTING_PREFIX: &str = "x-";

/// A message header value, borrowed from the message body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeaderValue<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Read access to a message's headers. The wire crate's body view implements it, so routing never
/// decodes a header it does not ask for. When a message carries one key twice, `get` returns the
/// first.
pub trait MessageHeaders {
    fn get(&self, key: &str) -> Option<HeaderValue<'_>>;
}

/// The headers of a message that has none.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHeaders;

impl MessageHeaders for NoHeaders {
    fn get(&self, _key: &str) -> Option<HeaderValue<'_>> {
        None
    }
}

impl MessageHeaders for [(&str, HeaderValue<'_>)] {
    fn get(&self, key: &str) -> Option<HeaderValue<'_>> {
        self.iter()
            .find(|(name, _)| *name == key)
            .map(|&(_, value)| value)
    }
}

/// A binding argument value as the control plane stores it. `Void` (AMQP's field type `V`) asks
/// only that the header be present.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgumentValue {
    Void,
    Str(String),
    Bytes(Vec<u8>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One binding argument: a key and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingArgument {
    pub key: String,
    pub value: ArgumentValue,
}

/// How the conditions of a headers binding combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl MatchMode {
    /// Reads the mode from a binding's arguments: the first `x-match` wins, and none means `all`.
    /// Returns `None` for a value that is not one of the four names, which RabbitMQ refuses at
    /// bind time.
    pub fn from_arguments(arguments: &[BindingArgument]) -> Option<MatchMode> {
        let Some(argument) = arguments
            .iter()
            .find(|argument| argument.key == MATCH_MODE_KEY)
        else {
            return Some(MatchMode::All);
        };
        let name: &[u8] = match &argument.value {
            ArgumentValue::Str(name) => name.as_bytes(),
            ArgumentValue::Bytes(name) => name,
            _ => return None,
        };
        match name {
            b"all" => Some(MatchMode::All),
            b"any" => Some(MatchMode::Any),
            b"all-with-x" => Some(MatchMode::AllWithX),
            b"any-with-x" => Some(MatchMode::AnyWithX),
            _ => None,
        }
    }

    fn requires_all(self) -> bool {
        matches!(self, MatchMode::All | MatchMode::AllWithX)
    }

    fn is_condition(self, key: &str) -> bool {
        match self {
            MatchMode::All | MatchMode::Any => !key.starts_with(SETTING_PREFIX),
            MatchMode::AllWithX | MatchMode::AnyWithX => key != MATCH_MODE_KEY,
        }
    }
}

/// A headers binding with its settings stripped: what a route checks.
#[derive(Clone, Debug)]
pub(super) struct HeadersBinding {
    pub(super) queue_slot: u32,
    requires_all: bool,
    conditions: Box<[BindingArgument]>,
}

impl HeadersBinding {
    /// Compiles a binding's arguments, or returns `None` when its `x-match` is invalid.
    pub(super) fn compile(arguments: &[BindingArgument], queue_slot: u32) -> Option<Self> {
        debug_assert!(arguments.len() <= BINDING_ARGUMENT_COUNT_MAX);
        let mode = MatchMode::from_arguments(arguments)?;
        let conditions = arguments
            .iter()
            .filter(|argument| mode.is_condition(&argument.key))
            .cloned()
            .collect();
        Some(HeadersBinding {
            queue_slot,
            requires_all: mode.requires_all(),
            conditions,
        })
    }

    pub(super) fn matches<H: MessageHeaders + ?Sized>(&self, headers: &H) -> bool {
        let mut holds = self
            .conditions
            .iter()
            .map(|condition| match headers.get(&condition.key) {
                None => false,
                Some(actual) => value_equals(&condition.value, actual),
            });
        if self.requires_all {
            holds.all(|held| held)
        } else {
            holds.any(|held| held)
        }
    }
}

/// The equality described in the module docs; `Void` is presence, already established.
fn value_equals(expected: &ArgumentValue, actual: HeaderValue<'_>) -> bool {
    match (expected, actual) {
        (ArgumentValue::Void, _) => true,
        (ArgumentValue::Str(expected), HeaderValue::Str(actual)) => expected == actual,
        (ArgumentValue::Str(expected), HeaderValue::Bytes(actual)) => expected.as_bytes() == actual,
        (ArgumentValue::Bytes(expected), HeaderValue::Str(actual)) => {
            expected.as_slice() == actual.as_bytes()
        }
        (ArgumentValue::Bytes(expected), HeaderValue::Bytes(actual)) => expected == actual,
        (ArgumentValue::Int(expected), HeaderValue::Int(actual)) => *expected == actual,
        (ArgumentValue::Float(expected), HeaderValue::Float(actual)) => {
            expected.to_bits() == actual.to_bits()
        }
        (ArgumentValue::Bool(expected), HeaderValue::Bool(actual)) => *expected == actual,
        _ => false,
    }
}
