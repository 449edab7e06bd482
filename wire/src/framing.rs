//! Incremental framing: cut whole frames out of a receive buffer as bytes arrive.
//!
//! [`FrameDecoder::decode`] looks at the caller's [`BytesMut`] receive buffer. As soon as the
//! 4-byte length prefix is there it is checked against the maximum frame size, so an oversized
//! frame is refused before the decoder waits for (or the caller buffers) a single byte of it; the
//! opcode is checked as soon as the header is complete, for the same reason. Until a whole frame
//! is present the decoder returns `Ok(None)` and reserves room for the rest, so the caller's next
//! read fills the buffer without repeated growth. A whole frame is split off the buffer and frozen
//! without copying, and the decoded [`Frame`] points into it.
//!
//! Any error means framing is lost: the caller reports the error's code (a `Close` frame) and
//! closes the connection; it must not call `decode` again on the same buffer.

use bytes::BytesMut;

use crate::error::Error;
use crate::frame::{FRAME_OPCODE_OFFSET, Frame, FrameHeader, sender_of};
use crate::limits::{FRAME_HEADER_SIZE, FRAME_SIZE_MAX, HANDSHAKE_FRAME_SIZE_MAX};

/// Cuts frames out of a receive buffer, enforcing the maximum frame size.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    frame_size_max: u32,
}

impl Default for FrameDecoder {
    /// A decoder for a fresh connection: limited to [`HANDSHAKE_FRAME_SIZE_MAX`].
    fn default() -> FrameDecoder {
        FrameDecoder::new(HANDSHAKE_FRAME_SIZE_MAX)
    }
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `frame_size_max` bytes, header included (capped at
    /// [`FRAME_SIZE_MAX`]).
    pub fn new(frame_size_max: u32) -> FrameDecoder {
        FrameDecoder {
            frame_size_max: frame_size_max.min(FRAME_SIZE_MAX),
        }
    }

    /// The current limit.
    pub fn frame_size_max(&self) -> u32 {
        self.frame_size_max
    }

    /// Changes the limit, for example to the negotiated size once the handshake completes
    /// ([`crate::connection::Connection::frame_size_max`]).
    pub fn set_frame_size_max(&mut self, frame_size_max: u32) {
        self.frame_size_max = frame_size_max.min(FRAME_SIZE_MAX);
    }

    /// Decodes the next frame from the front of `buffer`, or returns `Ok(None)` if it is not all
    /// there yet. A decoded frame's bytes are removed from `buffer`.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(length) = buffer.get(..4) else {
            return Ok(None);
        };
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]);
        let frame_size = FRAME_HEADER_SIZE as u64 + u64::from(length);
        if frame_size > u64::from(self.frame_size_max) {
            return Err(Error::FrameTooLarge {
                size: frame_size,
                limit: self.frame_size_max,
            });
        }

        let Some(header) = FrameHeader::peek(buffer) else {
            return Ok(None);
        };
        if sender_of(header.opcode).is_none() {
            return Err(Error::UnknownOpcode {
                offset: FRAME_OPCODE_OFFSET,
                opcode: header.opcode,
            });
        }

        // Bounded by `frame_size_max` (checked above), so this is at most one frame's room.
        let frame_size = frame_size as usize;
        if buffer.len() < frame_size {
            buffer.reserve(frame_size - buffer.len());
            return Ok(None);
        }
        let frame = buffer.split_to(frame_size).freeze();
        Frame::decode(frame).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Ack, Heartbeat};

    fn encoded(frame: Frame) -> BytesMut {
        let mut buffer = BytesMut::new();
        frame.encode(&mut buffer, FRAME_SIZE_MAX).unwrap();
        buffer
    }

    #[test]
    fn a_frame_arriving_one_byte_at_a_time_decodes_once_complete() {
        let frame = Frame::Ack(Ack {
            delivery_tag: 42,
            multiple: true,
        });
        let bytes = encoded(frame.clone());
        let mut decoder = FrameDecoder::default();
        let mut buffer = BytesMut::new();
        for (index, byte) in bytes.iter().enumerate() {
            buffer.extend_from_slice(&[*byte]);
            let decoded = decoder.decode(&mut buffer).unwrap();
            if index + 1 < bytes.len() {
                assert_eq!(decoded, None);
            } else {
                assert_eq!(decoded, Some(frame.clone()));
            }
        }
        assert!(buffer.is_empty());
    }

    #[test]
    fn two_frames_in_one_read_decode_in_order() {
        let mut buffer = encoded(Frame::Heartbeat(Heartbeat));
        buffer.extend_from_slice(&encoded(Frame::Ack(Ack {
            delivery_tag: 1,
            multiple: false,
        })));
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.decode(&mut buffer).unwrap(),
            Some(Frame::Heartbeat(Heartbeat))
        );
        assert!(matches!(
            decoder.decode(&mut buffer).unwrap(),
            Some(Frame::Ack(_))
        ));
        assert_eq!(decoder.decode(&mut buffer).unwrap(), None);
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_first_four_bytes() {
        let mut buffer = BytesMut::from(&[0x00, 0x40, 0x00, 0x00][..]);
        let error = FrameDecoder::default().decode(&mut buffer).unwrap_err();
        assert_eq!(
            error,
            Error::FrameTooLarge {
                size: 0x4008,
                limit: HANDSHAKE_FRAME_SIZE_MAX
            }
        );
        assert!(
            buffer.capacity() < 0x4000,
            "nothing was reserved for the refused frame"
        );
    }

    #[test]
    fn an_unknown_opcode_is_refused_before_its_payload_arrives() {
        let mut buffer = BytesMut::from(&[0x10, 0, 0, 0, 0x99, 0x09, 0, 0][..]);
        let error = FrameDecoder::default().decode(&mut buffer).unwrap_err();
        assert_eq!(
            error,
            Error::UnknownOpcode {
                offset: 4,
                opcode: 0x0999
            }
        );
    }

    #[test]
    fn the_decoder_never_accepts_more_than_the_protocol_maximum() {
        let decoder = FrameDecoder::new(u32::MAX);
        assert_eq!(decoder.frame_size_max(), FRAME_SIZE_MAX);
    }
}
