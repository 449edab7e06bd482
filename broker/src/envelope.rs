//! The envelope: what the broker wraps around a message body on the rings and in the journal.
//!
//! The body (properties and payload, in the `wire` format) is opaque here. The envelope carries
//! what the broker needs to route, store and deliver it: the target queues on one shard, the
//! exchange and routing key it was published with, the publish time and flags. It is an rkyv
//! archive so that the owner shard and a journal replay read it in place, without decoding.
//!
//! Format decisions:
//! - rkyv is pinned to `=0.8.18` with the `unaligned` format (workspace `Cargo.toml`): a record
//!   read from a journal page or a slice of a network buffer starts at any byte, and the default
//!   format refuses access at an odd address. [`tests::the_archived_bytes_of_a_known_envelope_are_pinned`]
//!   fails if an rkyv upgrade changes a single byte, because journals written before would then be
//!   misread.
//! - Fields are built from borrowed data ([`Envelope`], with `InlineAsBox`), so the body is copied
//!   once, into the archive. With the copy into the journal's DMA buffer that makes two copies per
//!   message on the publish path; a delivery adds one into the connection's write buffer.
//! - Delivery state (delivery tag, redelivered, delivery count, journal offset) is not in the
//!   archive: it changes after the message is stored, and the archive never does.

use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::with::InlineAsBox;

/// The flag bits of [`Envelope::flags`].
pub mod flags {
    /// The publisher asked for an unroutable message to be returned.
    pub const MANDATORY: u8 = 1 << 0;
    /// The message was stored in a durable queue's journal and must survive a restart.
    pub const PERSISTENT: u8 = 1 << 1;
    /// Every bit this broker version writes; a replay refuses others.
    pub const KNOWN: u8 = MANDATORY | PERSISTENT;
}

/// Target queues one envelope can name: one per queue on one shard that a single publish routed
/// to. A fanout to more queues on one shard is split into several envelopes.
pub const TARGET_QUEUES_MAX: usize = 1024;

/// The archived root: four relative pointers with lengths (8 bytes each with the `unaligned`
/// format's 32-bit offsets), the timestamp and the flags. Pinned so that a layout change is seen.
const ARCHIVED_ENVELOPE_BYTES: usize = 4 * 8 + 8 + 1;
const _: () = assert!(size_of::<ArchivedEnvelope<'static>>() == ARCHIVED_ENVELOPE_BYTES);
const _: () = assert!(align_of::<ArchivedEnvelope<'static>>() == 1);

/// An envelope as the publishing shard builds it, borrowing everything.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(archived = ArchivedEnvelope)]
pub struct Envelope<'a> {
    /// Queue ids on the receiving shard, ascending and without duplicates.
    #[rkyv(with = InlineAsBox)]
    pub queues: &'a [u32],
    #[rkyv(with = InlineAsBox)]
    pub exchange: &'a str,
    #[rkyv(with = InlineAsBox)]
    pub routing_key: &'a str,
    /// Wall-clock time the broker accepted the publish, in nanoseconds since the Unix epoch.
    pub published_at_ns: u64,
    pub flags: u8,
    /// The message body in the wire format, validated once where it entered the broker.
    #[rkyv(with = InlineAsBox)]
    pub body: &'a [u8],
}

/// Archived bytes that passed validation once, in place and shareable across shards.
#[derive(Clone, Debug)]
pub struct StoredEnvelope {
    bytes: Bytes,
}

/// Bytes that are not a valid envelope.
#[derive(Debug)]
pub struct EnvelopeError {
    pub message: String,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid envelope: {}", self.message)
    }
}

impl std::error::Error for EnvelopeError {}

impl Envelope<'_> {
    /// An upper bound of the archive's size: the fixed part, the fields' bytes, and alignment
    /// slack (the archive is unaligned, so there is little).
    fn archive_bytes_max(&self) -> usize {
        ARCHIVED_ENVELOPE_BYTES
            + 4 * self.queues.len()
            + self.exchange.len()
            + self.routing_key.len()
            + self.body.len()
            + 64
    }

    /// Archives the envelope. The body is copied once, here.
    pub fn encode(&self) -> StoredEnvelope {
        assert!(!self.queues.is_empty() && self.queues.len() <= TARGET_QUEUES_MAX);
        assert!(self.queues.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(self.flags & !flags::KNOWN, 0);

        // Sized up front: a growing buffer doubles, and the queues keep the whole allocation
        // for as long as they hold the message while their memory limit counts only its length.
        let buffer: AlignedVec = AlignedVec::with_capacity(self.archive_bytes_max());
        let archive = rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, buffer)
            .expect("serialising into memory cannot fail");
        StoredEnvelope {
            bytes: Bytes::from_owner(archive),
        }
    }
}

impl StoredEnvelope {
    /// Validates bytes from outside this process (a journal record) before anything reads them.
    pub fn validate(bytes: Bytes) -> Result<StoredEnvelope, EnvelopeError> {
        let archived =
            rkyv::access::<ArchivedEnvelope<'static>, rancor::Error>(&bytes).map_err(|error| {
                EnvelopeError {
                    message: error.to_string(),
                }
            })?;
        let queues = archived.queues.get();
        if queues.is_empty() || queues.len() > TARGET_QUEUES_MAX {
            let message = format!(
                "{} target queues, expected 1 to {TARGET_QUEUES_MAX}",
                queues.len()
            );
            return Err(EnvelopeError { message });
        }
        if archived.flags & !flags::KNOWN != 0 {
            return Err(EnvelopeError {
                message: format!("unknown flags {:#04x}", archived.flags),
            });
        }
        Ok(StoredEnvelope { bytes })
    }

    /// The archive, read in place.
    pub fn archived(&self) -> &ArchivedEnvelope<'static> {
        // SAFETY: `bytes` is immutable and was either produced by `rkyv::to_bytes` for this type
        // in `Envelope::encode` or passed `rkyv::access`'s validation in `validate`; those are the
        // only constructors. The `unaligned` format makes any start address valid.
        unsafe { rkyv::access_unchecked::<ArchivedEnvelope<'static>>(&self.bytes) }
    }

    /// The archive's bytes, as stored in the journal.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The message body, sharing the archive's memory.
    pub fn body(&self) -> Bytes {
        self.bytes.slice_ref(self.archived().body.get())
    }
}

impl ArchivedEnvelope<'_> {
    pub fn queue_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.queues.get().iter().map(|id| id.to_native())
    }

    pub fn exchange(&self) -> &str {
        self.exchange.get()
    }

    pub fn routing_key(&self) -> &str {
        self.routing_key.get()
    }

    pub fn published_at_ns(&self) -> u64 {
        self.published_at_ns.to_native()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u32>, Vec<u8>) {
        (vec![3, 7], b"\x01\x02body".to_vec())
    }

    #[test]
    fn the_archive_fits_the_buffer_sized_for_it() {
        for (queue_count, body_bytes) in [(1, 0), (1, 4096), (7, 3), (1024, 65_536)] {
            let queues: Vec<u32> = (0..queue_count).collect();
            let body = vec![1u8; body_bytes];
            let envelope = Envelope {
                queues: &queues,
                exchange: "an-exchange",
                routing_key: "a.routing.key",
                published_at_ns: 1,
                flags: 0,
                body: &body,
            };
            let archive = rkyv::to_bytes::<rancor::Error>(&envelope).unwrap();
            assert!(archive.len() <= envelope.archive_bytes_max());
        }
    }

    #[test]
    fn an_envelope_reads_back_in_place_with_the_body_shared() {
        let (queues, body) = sample();
        let envelope = Envelope {
            queues: &queues,
            exchange: "orders",
            routing_key: "eu.new",
            published_at_ns: 1_700_000_000_000_000_000,
            flags: flags::PERSISTENT,
            body: &body,
        };
        let stored = envelope.encode();
        let archived = stored.archived();
        assert_eq!(archived.queue_ids().collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(archived.exchange(), "orders");
        assert_eq!(archived.routing_key(), "eu.new");
        assert_eq!(archived.published_at_ns(), 1_700_000_000_000_000_000);
        assert_eq!(archived.flags, flags::PERSISTENT);
        let shared = stored.body();
        assert_eq!(&shared[..], &body[..]);
        let range = stored.bytes().as_ptr_range();
        assert!(
            range.contains(&shared.as_ptr()),
            "the body is a slice of the archive"
        );
    }

    #[test]
    fn an_envelope_validates_at_an_odd_offset() {
        let (queues, body) = sample();
        let envelope = Envelope {
            queues: &queues,
            exchange: "",
            routing_key: "q",
            published_at_ns: 5,
            flags: 0,
            body: &body,
        };
        let stored = envelope.encode();
        let mut shifted = vec![0xAAu8];
        shifted.extend_from_slice(stored.bytes());
        let bytes = Bytes::from(shifted).slice(1..);
        let validated = StoredEnvelope::validate(bytes).unwrap();
        assert_eq!(validated.archived().routing_key(), "q");
    }

    #[test]
    fn damaged_or_foreign_bytes_are_refused_not_read() {
        let (queues, body) = sample();
        let envelope = Envelope {
            queues: &queues,
            exchange: "x",
            routing_key: "k",
            published_at_ns: 1,
            flags: 0,
            body: &body,
        };
        let good = envelope.encode().bytes().to_vec();
        assert!(StoredEnvelope::validate(Bytes::from_static(b"")).is_err());
        assert!(StoredEnvelope::validate(Bytes::from_static(&[0xFF; 64])).is_err());
        for cut in [1, good.len() / 2, good.len() - 1] {
            assert!(StoredEnvelope::validate(Bytes::from(good[..cut].to_vec())).is_err());
        }
        // Every single-byte change either fails validation or leaves a readable envelope; none
        // may make an access out of bounds (that would be caught by the validator, not UB).
        for index in 0..good.len() {
            let mut damaged = good.clone();
            damaged[index] ^= 0xFF;
            if let Ok(envelope) = StoredEnvelope::validate(Bytes::from(damaged)) {
                let _ = envelope.archived().queue_ids().count();
                let _ = envelope.body().len();
            }
        }
    }

    /// Pins the archived layout. If this fails after a dependency change, journals written by
    /// earlier builds would be misread: bump the journal format version instead of editing this.
    #[test]
    fn the_archived_bytes_of_a_known_envelope_are_pinned() {
        let queues = [1u32, 2];
        let envelope = Envelope {
            queues: &queues,
            exchange: "ex",
            routing_key: "rk",
            published_at_ns: 0x0102_0304_0506_0708,
            flags: flags::MANDATORY,
            body: b"hi",
        };
        let stored = envelope.encode();
        let hex: String = stored
            .bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(hex, GOLDEN_HEX);
    }

    const GOLDEN_HEX: &str = concat!(
        "0100000002000000", // the queue ids 1 and 2, little-endian u32
        "6578",             // "ex"
        "726b",             // "rk"
        "6869",             // "hi"
        "f2ffffff02000000", // queues: relative offset -14, length 2
        "f2ffffff02000000", // exchange: relative offset -14, length 2
        "ecffffff02000000", // routing key: relative offset -20, length 2
        "0807060504030201", // published_at_ns
        "01",               // flags: MANDATORY
        "ddffffff02000000", // body: relative offset -35, length 2
    );
}
