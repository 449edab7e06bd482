//! The topic exchange: a trie over the words of its binding keys, matched against a routing key by
//! walking every live branch in step, one routing-key word at a time.
//!
//! A trie node stands for a binding-key prefix. Its edges are literal words, `*` (one word) and `#`
//! (zero or more words); a node reached by a `#` edge also loops on itself for any word, because
//! the `#` may absorb more. Matching keeps the set of nodes whose prefix matches the routing-key
//! words read so far (an NFA simulation), taking the `#` edge of every node entered without
//! reading a word, since `#` may match none. Each node enters the set at most once per word, so a
//! route costs `O(words × live nodes)` edge lookups, at most `O(words × trie nodes)`, and never
//! more: a backtracking matcher is exponential in the number of `#` for keys such as
//! `#.a.#.a.#.a` against `a.a.a...`. Consecutive `#` words are folded into one when a binding is
//! inserted (`#.#` matches exactly what `#` matches), so no `#` node has a `#` edge.
//!
//! The invariant: every node index in the trie and in the scratch sets is below `nodes.len()`,
//! and node 0 is the root (the empty prefix).

use std::mem;

use super::NameMap;
use super::targets::SlotSet;

/// The marker of a missing `*` or `#` edge.
const NO_NODE: u32 = u32::MAX;

const ONE_WORD: &str = "*";
const ANY_WORDS: &str = "#";
const WORD_SEPARATOR: char = '.';

/// Nodes with at most this many literal edges keep them in a list compared word by word: most
/// nodes of real binding sets have one or two (`region` → `<r>` → `sensor`), and comparing a short
/// word costs less than hashing it.
const LISTED_EDGE_COUNT_MAX: usize = 8;

#[derive(Debug)]
struct TopicNode {
    literal_edges: LiteralEdges,
    one_word_edge: u32,
    any_words_edge: u32,
    /// Reached by a `#` edge: stays live on any word.
    absorbs_words: bool,
    /// The queue slots of bindings whose key ends here, free of repeats.
    queue_slots: Box<[u32]>,
}

/// The literal-word edges of a node, by word.
#[derive(Debug)]
enum LiteralEdges {
    Listed(Box<[(Box<str>, u32)]>),
    Hashed(NameMap<u32>),
}

impl LiteralEdges {
    fn get(&self, word: &str) -> Option<u32> {
        match self {
            LiteralEdges::Listed(edges) => edges
                .iter()
                .find(|(edge_word, _)| &**edge_word == word)
                .map(|&(_, child)| child),
            LiteralEdges::Hashed(edges) => edges.get(word).copied(),
        }
    }
}

/// A compiled topic exchange.
#[derive(Debug)]
pub(super) struct TopicTrie {
    nodes: Box<[TopicNode]>,
}

/// The live node sets of a topic route: reused between routes.
#[derive(Debug, Default)]
pub(crate) struct TopicScratch {
    live: Vec<u32>,
    next: Vec<u32>,
    /// A node is in `next` when its mark equals `stamp`; each word gets a fresh stamp.
    marks: Vec<u32>,
    stamp: u32,
}

impl TopicScratch {
    fn next_stamp(&mut self) -> u32 {
        if self.stamp == u32::MAX {
            self.marks.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
        self.stamp
    }
}

impl TopicTrie {
    /// Adds to `matched` the queues of every binding whose key matches `routing_key`.
    pub(super) fn route(
        &self,
        routing_key: &str,
        scratch: &mut TopicScratch,
        matched: &mut SlotSet,
    ) {
        if scratch.marks.len() < self.nodes.len() {
            scratch.marks.resize(self.nodes.len(), 0);
        }
        scratch.next.clear();
        let stamp = scratch.next_stamp();
        self.enter(0, stamp, scratch);

        for word in routing_key.split(WORD_SEPARATOR) {
            mem::swap(&mut scratch.live, &mut scratch.next);
            scratch.next.clear();
            let stamp = scratch.next_stamp();
            for index in 0..scratch.live.len() {
                let node_index = scratch.live[index];
                let node = &self.nodes[node_index as usize];
                if let Some(child) = node.literal_edges.get(word) {
                    self.enter(child, stamp, scratch);
                }
                if node.one_word_edge != NO_NODE {
                    self.enter(node.one_word_edge, stamp, scratch);
                }
                if node.absorbs_words {
                    self.enter(node_index, stamp, scratch);
                }
            }
            if scratch.next.is_empty() {
                return;
            }
        }

        for &node_index in &scratch.next {
            matched.insert_all(&self.nodes[node_index as usize].queue_slots);
        }
    }

    /// Puts `node_index` in the next live set, with the `#` node below it: a `#` may match zero
    /// words, so its node is live wherever its parent is.
    fn enter(&self, node_index: u32, stamp: u32, scratch: &mut TopicScratch) {
        let mut node_index = node_index;
        while node_index != NO_NODE {
            let mark = &mut scratch.marks[node_index as usize];
            if *mark == stamp {
                return;
            }
            *mark = stamp;
            scratch.next.push(node_index);
            node_index = self.nodes[node_index as usize].any_words_edge;
        }
    }
}

/// A topic trie under construction.
#[derive(Debug)]
pub(super) struct TopicTrieBuilder {
    nodes: Vec<BuilderNode>,
}

#[derive(Debug, Default)]
struct BuilderNode {
    literal_edges: NameMap<u32>,
    one_word_edge: Option<u32>,
    any_words_edge: Option<u32>,
    absorbs_words: bool,
    queue_slots: Vec<u32>,
}

impl Default for TopicTrieBuilder {
    fn default() -> Self {
        TopicTrieBuilder {
            nodes: vec![BuilderNode::default()],
        }
    }
}

impl TopicTrieBuilder {
    /// Adds a binding of `binding_key` to the queue in `queue_slot`. Cost: one hash lookup or
    /// insert per word.
    pub(super) fn insert(&mut self, binding_key: &str, queue_slot: u32) {
        let mut node_index = 0_u32;
        let mut previous_word_was_any = false;
        for word in binding_key.split(WORD_SEPARATOR) {
            let is_any = word == ANY_WORDS;
            if is_any && previous_word_was_any {
                continue;
            }
            previous_word_was_any = is_any;
            node_index = self.child(node_index, word);
        }
        self.nodes[node_index as usize].queue_slots.push(queue_slot);
    }

    /// The child of `parent` along `word`, created if absent.
    fn child(&mut self, parent: u32, word: &str) -> u32 {
        let next_index = u32::try_from(self.nodes.len()).expect("trie node count fits u32");
        let parent_node = &mut self.nodes[parent as usize];
        let (child, absorbs_words) = match word {
            ONE_WORD => (*parent_node.one_word_edge.get_or_insert(next_index), false),
            ANY_WORDS => (*parent_node.any_words_edge.get_or_insert(next_index), true),
            literal => {
                let child = parent_node
                    .literal_edges
                    .entry(literal.into())
                    .or_insert(next_index);
                (*child, false)
            }
        };
        if child == next_index {
            self.nodes.push(BuilderNode {
                absorbs_words,
                ..BuilderNode::default()
            });
        }
        child
    }

    pub(super) fn finish(self) -> TopicTrie {
        let nodes = self
            .nodes
            .into_iter()
            .map(|node| {
                let mut queue_slots = node.queue_slots;
                queue_slots.sort_unstable();
                queue_slots.dedup();
                let literal_edges = if node.literal_edges.len() <= LISTED_EDGE_COUNT_MAX {
                    LiteralEdges::Listed(node.literal_edges.into_iter().collect())
                } else {
                    let mut hashed = node.literal_edges;
                    hashed.shrink_to_fit();
                    LiteralEdges::Hashed(hashed)
                };
                TopicNode {
                    literal_edges,
                    one_word_edge: node.one_word_edge.unwrap_or(NO_NODE),
                    any_words_edge: node.any_words_edge.unwrap_or(NO_NODE),
                    absorbs_words: node.absorbs_words,
                    queue_slots: queue_slots.into_boxed_slice(),
                }
            })
            .collect();
        TopicTrie { nodes }
    }
}
