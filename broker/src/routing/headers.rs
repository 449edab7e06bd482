//! Headers-exchange matching: the borrowed view of a message's headers that routing reads, the
//! owned binding arguments that the control plane stores, and the compiled headers exchange.
//!
//! Equality between an argument value and a header value is exact, as in RabbitMQ (`=:=` on the
//! decoded values): integers equal integers of the same value, whatever width the wire used;
//! floats equal floats with the same bits (so `0.0` is not `-0.0`, and a NaN equals the same NaN);
//! an integer never equals a float; booleans equal booleans; and a string equals a string or a
//! byte array holding the same bytes, because RabbitMQ decodes both to the same binary. Nothing is
//! equal across any other pair of kinds.

use std::collections::HashMap;

use super::BINDING_ARGUMENT_COUNT_MAX;
use super::targets::SlotSet;

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
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// A compiled headers exchange. A condition (a key and an expected value) that several bindings
/// share is evaluated once per route, and a key that several conditions test is looked up once:
/// a route costs one header lookup per distinct key, one comparison per distinct condition, and
/// one boolean read per condition of each binding. RabbitMQ compares every argument of every
/// binding; with bindings that draw on a few keys and values this is several times cheaper, and
/// it is never more than one extra boolean per condition.
#[derive(Debug)]
pub(super) struct HeadersExchange {
    /// Distinct conditions, ordered by key so that equal keys are adjacent.
    conditions: Box<[BindingArgument]>,
    bindings: Box<[CompiledBinding]>,
    /// Indexes into `conditions`, one run per binding.
    condition_indexes: Box<[u32]>,
}

#[derive(Clone, Copy, Debug)]
struct CompiledBinding {
    queue_slot: u32,
    requires_all: bool,
    conditions_start: u32,
    conditions_end: u32,
}

impl HeadersExchange {
    /// Adds to `matched` the queues of every binding that `headers` satisfies. `holds` is scratch
    /// space: one flag per distinct condition.
    pub(super) fn route<H: MessageHeaders + ?Sized>(
        &self,
        headers: &H,
        holds: &mut Vec<bool>,
        matched: &mut SlotSet,
    ) {
        holds.clear();
        let mut previous_key: Option<&str> = None;
        let mut found = None;
        for condition in self.conditions.iter() {
            if previous_key != Some(condition.key.as_str()) {
                previous_key = Some(condition.key.as_str());
                found = headers.get(&condition.key);
            }
            holds.push(found.is_some_and(|actual| value_equals(&condition.value, actual)));
        }

        for binding in self.bindings.iter() {
            if matched.contains(binding.queue_slot) {
                continue;
            }
            let range = binding.conditions_start as usize..binding.conditions_end as usize;
            let mut outcomes = self.condition_indexes[range]
                .iter()
                .map(|&index| holds[index as usize]);
            let satisfied = if binding.requires_all {
                outcomes.all(|held| held)
            } else {
                outcomes.any(|held| held)
            };
            if satisfied {
                matched.insert(binding.queue_slot);
            }
        }
    }
}

/// A headers exchange under construction: conditions are interned as bindings arrive.
#[derive(Debug, Default)]
pub(super) struct HeadersExchangeBuilder {
    conditions: Vec<BindingArgument>,
    index_by_condition: HashMap<ConditionKey, u32>,
    bindings: Vec<CompiledBinding>,
    condition_indexes: Vec<u32>,
}

/// A condition in hashable form: floats by their bits, which is also how they compare.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConditionKey {
    key: String,
    value: ValueKey,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum ValueKey {
    Void,
    Str(String),
    Bytes(Vec<u8>),
    Int(i64),
    FloatBits(u64),
    Bool(bool),
}

impl HeadersExchangeBuilder {
    /// Adds a binding with these arguments, or returns `None` when its `x-match` is invalid.
    pub(super) fn add(&mut self, arguments: &[BindingArgument], queue_slot: u32) -> Option<()> {
        debug_assert!(arguments.len() <= BINDING_ARGUMENT_COUNT_MAX);
        let mode = MatchMode::from_arguments(arguments)?;
        let conditions_start = self.condition_index_count();
        for argument in arguments
            .iter()
            .filter(|argument| mode.is_condition(&argument.key))
        {
            let index = self.intern(argument);
            self.condition_indexes.push(index);
        }
        self.bindings.push(CompiledBinding {
            queue_slot,
            requires_all: mode.requires_all(),
            conditions_start,
            conditions_end: self.condition_index_count(),
        });
        Some(())
    }

    fn condition_index_count(&self) -> u32 {
        u32::try_from(self.condition_indexes.len()).expect("condition count fits u32")
    }

    fn intern(&mut self, argument: &BindingArgument) -> u32 {
        let value = match &argument.value {
            ArgumentValue::Void => ValueKey::Void,
            ArgumentValue::Str(text) => ValueKey::Str(text.clone()),
            ArgumentValue::Bytes(bytes) => ValueKey::Bytes(bytes.clone()),
            ArgumentValue::Int(integer) => ValueKey::Int(*integer),
            ArgumentValue::Float(float) => ValueKey::FloatBits(float.to_bits()),
            ArgumentValue::Bool(boolean) => ValueKey::Bool(*boolean),
        };
        let next_index = u32::try_from(self.conditions.len()).expect("condition count fits u32");
        let key = ConditionKey {
            key: argument.key.clone(),
            value,
        };
        let index = *self.index_by_condition.entry(key).or_insert(next_index);
        if index == next_index {
            self.conditions.push(argument.clone());
        }
        index
    }

    pub(super) fn finish(self) -> HeadersExchange {
        let mut order: Vec<u32> = (0..self.conditions.len() as u32).collect();
        order.sort_by(|&left, &right| {
            self.conditions[left as usize]
                .key
                .cmp(&self.conditions[right as usize].key)
        });
        let mut new_index = vec![0_u32; order.len()];
        for (position, &old) in order.iter().enumerate() {
            new_index[old as usize] = position as u32;
        }

        let mut conditions: Vec<Option<BindingArgument>> =
            self.conditions.into_iter().map(Some).collect();
        let conditions = order
            .iter()
            .map(|&old| {
                conditions[old as usize]
                    .take()
                    .expect("each condition moves once")
            })
            .collect();
        let condition_indexes = self
            .condition_indexes
            .iter()
            .map(|&old| new_index[old as usize])
            .collect();
        HeadersExchange {
            conditions,
            bindings: self.bindings.into_boxed_slice(),
            condition_indexes,
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
