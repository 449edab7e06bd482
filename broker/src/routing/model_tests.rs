//! Property tests: the routing table against a deliberately simple model that shares no matching
//! code with it. The model scans every binding for every message, matches topics with a recursive
//! word-by-word matcher and compares header values through a canonical form. Words and header
//! keys come from small alphabets so that a good share of messages match (checked by
//! `generated_cases_route_a_good_share_of_messages_somewhere`).
//!
//! A failure prints the minimal case, and proptest records its seed in
//! `broker/proptest-regressions/routing/model_tests.txt` so that the next run replays it first.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::*;

/// Binding-key words: two literals, the empty word and both wildcards.
const BINDING_WORDS: [&str; 5] = ["a", "b", "", "*", "#"];

/// Routing-key words: literals, the empty word, and wildcard characters that must stay literal.
const ROUTING_WORDS: [&str; 5] = ["a", "b", "", "a", "*"];

const HEADER_KEYS: [&str; 4] = ["k", "m", "x-k", "x-match"];

const MATCH_MODES: [&str; 4] = ["all", "any", "all-with-x", "any-with-x"];

const QUEUE_COUNT_MAX: usize = 6;

/// A header value the test owns, lent to the table as a [`HeaderValue`].
#[derive(Clone, Debug)]
enum OwnedHeader {
    Str(&'static str),
    Bytes(&'static [u8]),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl OwnedHeader {
    fn lend(&self) -> HeaderValue<'_> {
        match *self {
            OwnedHeader::Str(value) => HeaderValue::Str(value),
            OwnedHeader::Bytes(value) => HeaderValue::Bytes(value),
            OwnedHeader::Int(value) => HeaderValue::Int(value),
            OwnedHeader::Float(value) => HeaderValue::Float(value),
            OwnedHeader::Bool(value) => HeaderValue::Bool(value),
        }
    }
}

#[derive(Clone, Debug)]
struct Message {
    exchange: String,
    routing_key: String,
    headers: Vec<(&'static str, OwnedHeader)>,
}

#[derive(Clone, Debug)]
enum RoutingKeyChoice {
    Words(String),
    BindingKey(usize),
}

#[derive(Clone, Debug)]
struct Case {
    metadata: RoutingMetadata,
    messages: Vec<Message>,
}

fn exchange_kind() -> impl Strategy<Value = ExchangeKind> {
    prop_oneof![
        Just(ExchangeKind::Direct),
        Just(ExchangeKind::Fanout),
        Just(ExchangeKind::Topic),
        Just(ExchangeKind::Headers),
    ]
}

fn key_from(
    words: &'static [&'static str],
    word_count_max: usize,
) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(words), 1..=word_count_max)
        .prop_map(|words| words.join("."))
}

fn argument_value() -> impl Strategy<Value = ArgumentValue> {
    prop_oneof![
        Just(ArgumentValue::Void),
        Just(ArgumentValue::Str("1".to_owned())),
        Just(ArgumentValue::Str("2".to_owned())),
        Just(ArgumentValue::Bytes(b"1".to_vec())),
        Just(ArgumentValue::Int(1)),
        Just(ArgumentValue::Int(2)),
        Just(ArgumentValue::Float(1.0)),
        Just(ArgumentValue::Bool(true)),
    ]
}

fn header_value() -> impl Strategy<Value = OwnedHeader> {
    prop_oneof![
        Just(OwnedHeader::Str("1")),
        Just(OwnedHeader::Str("2")),
        Just(OwnedHeader::Bytes(b"1")),
        Just(OwnedHeader::Int(1)),
        Just(OwnedHeader::Int(2)),
        Just(OwnedHeader::Float(1.0)),
        Just(OwnedHeader::Bool(true)),
    ]
}

fn binding_arguments() -> impl Strategy<Value = Vec<BindingArgument>> {
    let mode = prop::option::of(prop::sample::select(&MATCH_MODES[..]));
    let conditions = prop::collection::vec(
        (prop::sample::select(&HEADER_KEYS[..3]), argument_value()),
        0..=3,
    );
    (mode, conditions).prop_map(|(mode, conditions)| {
        let mode = mode.map(|mode| BindingArgument {
            key: "x-match".to_owned(),
            value: ArgumentValue::Str(mode.to_owned()),
        });
        let conditions = conditions.into_iter().map(|(key, value)| BindingArgument {
            key: key.to_owned(),
            value,
        });
        mode.into_iter().chain(conditions).collect()
    })
}

fn case() -> impl Strategy<Value = Case> {
    let exchanges = prop::collection::vec(exchange_kind(), 1..=4);
    let owners = prop::collection::vec(0_u16..3, 1..=QUEUE_COUNT_MAX);
    let bindings = prop::collection::vec(
        (
            0_usize..4,
            0_usize..QUEUE_COUNT_MAX,
            key_from(&BINDING_WORDS, 4),
            binding_arguments(),
        ),
        0..=16,
    );
    // A routing key is random words, a queue's name (for the default exchange) or a copy of some
    // binding's key (so that direct bindings match often enough to be tested; for the default
    // exchange, another queue name).
    let routing_key = prop_oneof![
        2 => key_from(&ROUTING_WORDS, 4).prop_map(RoutingKeyChoice::Words),
        1 => (0..QUEUE_COUNT_MAX).prop_map(|index| RoutingKeyChoice::Words(format!("q{index}"))),
        1 => (0_usize..16).prop_map(RoutingKeyChoice::BindingKey),
    ];
    let messages = prop::collection::vec(
        (
            0_usize..6,
            routing_key,
            prop::collection::vec(
                (prop::sample::select(&HEADER_KEYS[..]), header_value()),
                0..=3,
            ),
        ),
        1..=8,
    );
    (exchanges, owners, bindings, messages).prop_map(|(kinds, owners, bindings, messages)| {
        let exchanges: Vec<ExchangeSpec> = kinds
            .iter()
            .enumerate()
            .map(|(index, &kind)| ExchangeSpec {
                name: format!("e{index}"),
                kind,
            })
            .collect();
        let queues: Vec<QueueSpec> = owners
            .iter()
            .enumerate()
            .map(|(index, &owner)| QueueSpec {
                name: format!("q{index}"),
                id: QueueId(1000 - 7 * index as u32),
                owner: ShardId(owner),
            })
            .collect();
        let bindings: Vec<BindingSpec> = bindings
            .into_iter()
            .map(|(exchange, queue, key, arguments)| BindingSpec {
                exchange: exchanges[exchange % exchanges.len()].name.clone(),
                queue: queues[queue % queues.len()].name.clone(),
                key,
                arguments,
            })
            .collect();
        let messages = messages
            .into_iter()
            .map(|(exchange, routing_key, headers)| {
                let exchange = match exchange.checked_sub(2) {
                    None if exchange == 0 => String::new(),
                    None => "missing".to_owned(),
                    Some(index) => exchanges[index % exchanges.len()].name.clone(),
                };
                let keys: Vec<&String> = bindings
                    .iter()
                    .filter(|binding| binding.exchange == exchange)
                    .map(|binding| &binding.key)
                    .collect();
                let routing_key = match routing_key {
                    RoutingKeyChoice::Words(words) => words,
                    RoutingKeyChoice::BindingKey(index) if exchange.is_empty() => {
                        format!("q{}", index % QUEUE_COUNT_MAX)
                    }
                    RoutingKeyChoice::BindingKey(index) if !keys.is_empty() => {
                        keys[index % keys.len()].clone()
                    }
                    RoutingKeyChoice::BindingKey(_) => String::new(),
                };
                Message {
                    exchange,
                    routing_key,
                    headers,
                }
            })
            .collect();
        Case {
            metadata: RoutingMetadata {
                exchanges,
                queues,
                bindings,
            },
            messages,
        }
    })
}

/// The model: which queue ids a message reaches, by a linear scan of the metadata.
fn model_route(metadata: &RoutingMetadata, message: &Message) -> Result<BTreeSet<u32>, RouteError> {
    let queue_id = |name: &str| {
        metadata
            .queues
            .iter()
            .find(|queue| queue.name == name)
            .unwrap()
            .id
            .0
    };
    if message.exchange.is_empty() {
        let named = metadata
            .queues
            .iter()
            .filter(|queue| queue.name == message.routing_key);
        return Ok(named.map(|queue| queue.id.0).collect());
    }
    let Some(exchange) = metadata
        .exchanges
        .iter()
        .find(|exchange| exchange.name == message.exchange)
    else {
        return Err(RouteError::UnknownExchange);
    };

    let mut reached = BTreeSet::new();
    for binding in metadata
        .bindings
        .iter()
        .filter(|binding| binding.exchange == exchange.name)
    {
        let matched = match exchange.kind {
            ExchangeKind::Direct => binding.key == message.routing_key,
            ExchangeKind::Fanout => true,
            ExchangeKind::Topic => {
                let pattern: Vec<&str> = binding.key.split('.').collect();
                let words: Vec<&str> = message.routing_key.split('.').collect();
                model_topic_matches(&pattern, &words)
            }
            ExchangeKind::Headers => model_headers_match(&binding.arguments, &message.headers),
        };
        if matched {
            reached.insert(queue_id(&binding.queue));
        }
    }
    Ok(reached)
}

/// Backtracking, exponential in the number of `#`: fine for four-word patterns.
fn model_topic_matches(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => {
            (0..=words.len()).any(|skip| model_topic_matches(rest, &words[skip..]))
        }
        Some((&"*", rest)) => !words.is_empty() && model_topic_matches(rest, &words[1..]),
        Some((literal, rest)) => {
            words.first() == Some(literal) && model_topic_matches(rest, &words[1..])
        }
    }
}

fn model_headers_match(arguments: &[BindingArgument], headers: &[(&str, OwnedHeader)]) -> bool {
    let mode = match arguments.iter().find(|argument| argument.key == "x-match") {
        None => "all",
        Some(BindingArgument {
            value: ArgumentValue::Str(mode),
            ..
        }) => mode.as_str(),
        Some(other) => panic!("the generator makes only string modes, got {other:?}"),
    };
    let with_x = mode.ends_with("-with-x");
    let mut outcomes = arguments
        .iter()
        .filter(|argument| {
            if with_x {
                argument.key != "x-match"
            } else {
                !argument.key.starts_with("x-")
            }
        })
        .map(|argument| {
            let found = headers.iter().find(|(key, _)| *key == argument.key);
            match (found, &argument.value) {
                (None, _) => false,
                (Some(_), ArgumentValue::Void) => true,
                (Some((_, header)), value) => canonical_argument(value) == canonical_header(header),
            }
        });
    if mode.starts_with("all") {
        outcomes.all(|outcome| outcome)
    } else {
        outcomes.any(|outcome| outcome)
    }
}

/// How RabbitMQ sees a value after decoding: strings and byte arrays are both binaries.
#[derive(Debug, PartialEq)]
enum Canonical {
    Binary(Vec<u8>),
    Integer(i64),
    FloatBits(u64),
    Boolean(bool),
    Nothing,
}

fn canonical_argument(value: &ArgumentValue) -> Canonical {
    match value {
        ArgumentValue::Void => Canonical::Nothing,
        ArgumentValue::Str(text) => Canonical::Binary(text.clone().into_bytes()),
        ArgumentValue::Bytes(bytes) => Canonical::Binary(bytes.clone()),
        ArgumentValue::Int(integer) => Canonical::Integer(*integer),
        ArgumentValue::Float(float) => Canonical::FloatBits(float.to_bits()),
        ArgumentValue::Bool(boolean) => Canonical::Boolean(*boolean),
    }
}

fn canonical_header(value: &OwnedHeader) -> Canonical {
    match value {
        OwnedHeader::Str(text) => Canonical::Binary(text.as_bytes().to_vec()),
        OwnedHeader::Bytes(bytes) => Canonical::Binary(bytes.to_vec()),
        OwnedHeader::Int(integer) => Canonical::Integer(*integer),
        OwnedHeader::Float(float) => Canonical::FloatBits(float.to_bits()),
        OwnedHeader::Bool(boolean) => Canonical::Boolean(*boolean),
    }
}

/// Routes `message` through `table`, checking the shard grouping on the way.
fn table_route(
    table: &RoutingTable,
    metadata: &RoutingMetadata,
    message: &Message,
    out: &mut RouteTargets,
) -> Result<BTreeSet<u32>, RouteError> {
    let headers: Vec<(&str, HeaderValue<'_>)> = message
        .headers
        .iter()
        .map(|(key, value)| (*key, value.lend()))
        .collect();
    table.route(&message.exchange, &message.routing_key, &headers[..], out)?;

    let reached: BTreeSet<u32> = out.queues().iter().map(|id| id.0).collect();
    assert_eq!(
        reached.len(),
        out.len(),
        "a queue is listed twice: {:?}",
        out.queues()
    );
    let mut grouped_count = 0;
    for (shard, queues) in out.by_shard() {
        assert_eq!(out.for_shard(shard), queues);
        for id in queues {
            let owner = metadata
                .queues
                .iter()
                .find(|queue| queue.id == *id)
                .unwrap()
                .owner;
            assert_eq!(owner, shard, "queue {id:?} grouped under the wrong shard");
        }
        grouped_count += queues.len();
    }
    assert_eq!(grouped_count, out.len());
    Ok(reached)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn table_routes_every_message_to_the_queues_the_model_finds(case in case()) {
        let table = RoutingTable::build(1, &case.metadata).expect("generated metadata is valid");
        let mut out = RouteTargets::new();
        for message in &case.messages {
            let expected = model_route(&case.metadata, message);
            let actual = table_route(&table, &case.metadata, message, &mut out);
            prop_assert_eq!(actual, expected, "message {:?}", message);
        }
    }

    #[test]
    fn topic_trie_agrees_with_the_model_on_longer_keys(
        patterns in prop::collection::vec(key_from(&BINDING_WORDS, 7), 1..=12),
        keys in prop::collection::vec(key_from(&ROUTING_WORDS, 9), 1..=16),
    ) {
        check_topic_against_model(&patterns, keys)?;
    }

    /// Twelve literals give trie nodes more literal edges than fit the listed form, so the hashed
    /// form is checked too.
    #[test]
    fn topic_trie_agrees_with_the_model_on_wide_nodes(
        patterns in prop::collection::vec(key_from(&WIDE_BINDING_WORDS, 3), 1..=40),
        keys in prop::collection::vec(key_from(&WIDE_BINDING_WORDS[..12], 3), 1..=16),
    ) {
        check_topic_against_model(&patterns, keys)?;
    }
}

const WIDE_BINDING_WORDS: [&str; 14] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "", "*", "#",
];

/// Binds pattern `i` to queue `q<i>` on one topic exchange and routes every key both ways.
fn check_topic_against_model(
    patterns: &[String],
    keys: Vec<String>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let metadata = RoutingMetadata {
        exchanges: vec![ExchangeSpec {
            name: "t".to_owned(),
            kind: ExchangeKind::Topic,
        }],
        queues: (0..patterns.len())
            .map(|index| QueueSpec {
                name: format!("q{index}"),
                id: QueueId(index as u32),
                owner: ShardId(index as u16 % 2),
            })
            .collect(),
        bindings: patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| BindingSpec {
                exchange: "t".to_owned(),
                queue: format!("q{index}"),
                key: pattern.clone(),
                arguments: Vec::new(),
            })
            .collect(),
    };
    let table = RoutingTable::build(1, &metadata).expect("valid");
    let mut out = RouteTargets::new();
    for routing_key in keys {
        let message = Message {
            exchange: "t".to_owned(),
            routing_key,
            headers: Vec::new(),
        };
        let expected = model_route(&metadata, &message);
        let actual = table_route(&table, &metadata, &message, &mut out);
        prop_assert_eq!(actual, expected, "key {:?}", message.routing_key);
    }
    Ok(())
}

/// A property test whose generator never produces a match would pass against a table that routes
/// nowhere; this checks that each exchange kind is exercised with real matches.
#[test]
fn generated_cases_route_a_good_share_of_messages_somewhere() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut routed_by_kind = std::collections::HashMap::<Option<ExchangeKind>, (u32, u32)>::new();
    for _ in 0..400 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        for message in &case.messages {
            let Ok(reached) = model_route(&case.metadata, message) else {
                continue;
            };
            let kind = case
                .metadata
                .exchanges
                .iter()
                .find(|exchange| exchange.name == message.exchange);
            let counts = routed_by_kind
                .entry(kind.map(|exchange| exchange.kind))
                .or_default();
            counts.0 += u32::from(!reached.is_empty());
            counts.1 += 1;
        }
    }

    for kind in [
        None,
        Some(ExchangeKind::Direct),
        Some(ExchangeKind::Fanout),
        Some(ExchangeKind::Topic),
        Some(ExchangeKind::Headers),
    ] {
        let (routed, total) = routed_by_kind[&kind];
        let share = f64::from(routed) / f64::from(total);
        println!("{kind:?}: {routed} of {total} messages routed somewhere ({share:.2})");
        assert!(
            share > 0.2,
            "{kind:?}: only {routed} of {total} messages matched anything"
        );
    }
}
