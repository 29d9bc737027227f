//! Where an outgoing packet is written: a reused `Vec<u8>`, or a `BytesMut` that packets
//! are split off (see [`TxArena`]), so writing and protecting a packet allocate nothing.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A growable byte buffer a packet is written into and then protected in place.
pub trait PacketBuf: AsRef<[u8]> + AsMut<[u8]> {
    fn clear(&mut self);
    fn append(&mut self, bytes: &[u8]);
    fn len(&self) -> usize {
        self.as_ref().len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PacketBuf for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self)
    }

    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes)
    }
}

impl PacketBuf for BytesMut {
    fn clear(&mut self) {
        BytesMut::clear(self)
    }

    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes)
    }
}

/// Outgoing packets split off one large chunk. A full chunk is set aside; once every
/// packet of a set-aside chunk has been dropped (sent), it is taken back instead of
/// allocating, so a steady flow of packets that are sent and dropped allocates nothing.
/// Chunks whose packets are still held (in a queue) are let go after a few rotations.
#[derive(Debug)]
pub struct TxArena {
    buf: BytesMut,
    /// Full chunks, oldest first.
    spares: VecDeque<BytesMut>,
    chunk: usize,
    chunks_allocated: u64,
}

/// Room kept free for the next packet.
const MAX_PACKET: usize = 2048;
/// Full chunks kept for reuse.
const MAX_SPARES: usize = 3;

impl TxArena {
    /// An arena that allocates `chunk` bytes at a time (at least two packets' worth).
    pub fn new(chunk: usize) -> Self {
        let chunk = chunk.max(2 * MAX_PACKET);
        TxArena {
            buf: BytesMut::with_capacity(chunk),
            spares: VecDeque::with_capacity(MAX_SPARES + 1),
            chunk,
            chunks_allocated: 1,
        }
    }

    /// An empty buffer with room for one packet.
    pub fn start(&mut self) -> &mut BytesMut {
        self.buf.clear();
        if self.buf.capacity() < MAX_PACKET {
            self.rotate();
        }
        &mut self.buf
    }

    /// Sets the full chunk aside and continues in the oldest spare whose packets have all
    /// gone, or in a new chunk.
    fn rotate(&mut self) {
        let chunk = self.chunk;
        let reclaimed = self.spares.front_mut().is_some_and(|oldest| oldest.try_reclaim(chunk));
        let next = match reclaimed {
            true => self.spares.pop_front().expect("front exists"),
            false => {
                self.chunks_allocated += 1;
                BytesMut::with_capacity(chunk)
            }
        };
        let full = std::mem::replace(&mut self.buf, next);
        if self.spares.len() == MAX_SPARES {
            self.spares.pop_front();
        }
        self.spares.push_back(full);
    }

    /// A copy of `data` in the arena, changed in place by `edit` (a stamp, a mark).
    pub fn copy_of(&mut self, data: &[u8], edit: impl FnOnce(&mut [u8])) -> Bytes {
        let buf = self.start();
        buf.extend_from_slice(data);
        edit(buf);
        self.finish()
    }

    /// Chunks allocated so far (the first included).
    pub fn chunks_allocated(&self) -> u64 {
        self.chunks_allocated
    }

    /// The packet being written (since [`TxArena::start`]).
    pub fn current(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The packet written since [`TxArena::start`].
    pub fn finish(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

impl Default for TxArena {
    fn default() -> Self {
        TxArena::new(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_come_out_whole_and_separate() {
        let mut arena = TxArena::new(0);
        let mut kept = Vec::new();
        for i in 0..10_000u32 {
            let b = arena.start();
            b.append(&i.to_be_bytes());
            b.append(&[i as u8; 100]);
            kept.push(arena.finish());
            if kept.len() > 50 {
                kept.remove(0);
            }
            let last = kept.last().unwrap();
            assert_eq!((&last[..4], last.len()), (&i.to_be_bytes()[..], 104));
        }
        for (n, p) in kept.iter().enumerate() {
            let i = 10_000 - 50 + n as u32;
            assert_eq!(&p[..4], &i.to_be_bytes()[..], "an older packet was overwritten");
            assert!(p[4..].iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn chunks_are_reused_once_their_packets_are_gone() {
        let mut arena = TxArena::new(8192);
        // Bursts of 30 packets held together (a fan-out before the shell sends it),
        // dropped after each burst: chunks fill mid-burst and are still taken back.
        let mut held = Vec::with_capacity(30);
        let mut bursts = |arena: &mut TxArena, n: usize| {
            for _ in 0..n {
                for _ in 0..30 {
                    arena.start().append(&[7; 300]);
                    held.push(arena.finish());
                }
                held.clear();
            }
        };
        bursts(&mut arena, 10);
        let warm = arena.chunks_allocated();
        bursts(&mut arena, 190);
        // Bursts of 9,000 bytes through 8 KiB chunks: a few chunks, reused ever after.
        assert!(warm <= 3, "{warm}");
        assert_eq!(arena.chunks_allocated(), warm);

        // Packets that stay held (a queue) make it allocate, never overwrite them.
        let kept: Vec<Bytes> = (0..100)
            .map(|i| {
                arena.start().append(&[i; 300]);
                arena.finish()
            })
            .collect();
        assert!(arena.chunks_allocated() > 2);
        assert!(kept.iter().enumerate().all(|(i, p)| p.iter().all(|&b| b == i as u8)));
    }
}
