//! The reader side of the backup pipeline: what a reader (a full read of the volume, or a CBT
//! reader) hands to the workers and the writer, in volume order.
//!
//! A reader calls [`Feed::chunk`] for each chunk it cut, [`Feed::hole`] for zeros it need not
//! store, and [`Feed::parent_chunk`] for a chunk it takes from the parent's manifest unread. Every
//! call is one numbered [`Item`] (holes are split into pieces); the writer puts the items back in
//! order.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockvault_core::chunker::{is_zero, RawChunk};
use blockvault_core::{ChunkId, ChunkKeys, EnvelopeCodec};
use blockvault_store::Store;
use crossbeam_channel::Sender;

use crate::budget::ByteBudget;
use crate::error::{Error, Result};
use crate::{CancelToken, VolumeKeys};

/// A worker's (or a reader's) verdict on one piece of the volume.
pub(crate) enum Processed {
    Hole,
    Chunk {
        id: ChunkId,
        /// Kept when the chunk looked stored already (needed only if GC removes it meanwhile).
        data: Option<Vec<u8>>,
        envelope: Option<Vec<u8>>,
    },
    /// A chunk of the parent's manifest, taken unread; the parent's references keep it stored.
    Parent {
        id: ChunkId,
    },
}

pub(crate) struct Item {
    pub(crate) seq: u64,
    pub(crate) len: u32,
    pub(crate) result: Result<Processed>,
}

impl Item {
    /// Budget bytes this item holds: chunks sent to a worker hold their length, holes and
    /// parent chunks nothing.
    pub(crate) fn held(&self) -> u64 {
        match self.result {
            Ok(Processed::Hole | Processed::Parent { .. }) => 0,
            _ => u64::from(self.len),
        }
    }
}

/// Holes are handed to the writer in pieces of at most this many bytes.
const HOLE_PIECE: u64 = 1 << 30;

fn process(
    store: &Store,
    codec: EnvelopeCodec,
    keys: ChunkKeys<'_>,
    chunk: RawChunk,
) -> Result<Processed> {
    let id = keys.chunk_id(&chunk.data);
    if store.has_chunk(&id)? {
        return Ok(Processed::Chunk {
            id,
            data: Some(chunk.data),
            envelope: None,
        });
    }
    let envelope = codec.seal(&id, &chunk.data, keys.data_key());
    Ok(Processed::Chunk {
        id,
        data: None,
        envelope: Some(envelope),
    })
}

/// Numbers a reader's output and sends chunks to the worker pool.
pub(crate) struct Feed<'a> {
    pub(crate) tx: Sender<Item>,
    pub(crate) seq: u64,
    pub(crate) keys: VolumeKeys,
    pub(crate) store: Arc<Store>,
    pub(crate) codec: EnvelopeCodec,
    pub(crate) budget: &'a ByteBudget,
    pub(crate) pool: &'a rayon::ThreadPool,
    pub(crate) abort: Arc<AtomicBool>,
    pub(crate) cancel: CancelToken,
}

impl Feed<'_> {
    /// `len` zero bytes, recorded without being stored (the manifest builder merges pieces).
    pub(crate) fn hole(&mut self, mut len: u64) {
        while len > 0 {
            let piece = len.min(HOLE_PIECE);
            let _ = self.tx.send(Item {
                seq: self.seq,
                len: piece as u32,
                result: Ok(Processed::Hole),
            });
            self.seq += 1;
            len -= piece;
        }
    }

    /// A chunk of the parent, taken as it is.
    pub(crate) fn parent_chunk(&mut self, id: ChunkId, len: u32) {
        let _ = self.tx.send(Item {
            seq: self.seq,
            len,
            result: Ok(Processed::Parent { id }),
        });
        self.seq += 1;
    }

    /// Whether the reader should stop: `Err` when the backup was cancelled, `Ok(true)` when the
    /// pipeline aborted (the writer failed and reports why).
    pub(crate) fn stopped(&self) -> Result<bool> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(self.abort.load(Ordering::Relaxed))
    }

    /// A chunk cut at volume offset `offset`: all-zero chunks become holes right here (no copy,
    /// no worker); others take their size from the byte budget and go to a worker. `Ok(false)`
    /// when the pipeline aborted.
    pub(crate) fn chunk(&mut self, offset: u64, data: &[u8]) -> Result<bool> {
        if self.stopped()? {
            return Ok(false);
        }
        let len = data.len() as u32;
        if is_zero(data) {
            self.hole(u64::from(len));
            return Ok(true);
        }
        if !self.budget.acquire(u64::from(len), &self.abort) {
            return Ok(false);
        }
        let chunk = RawChunk {
            offset,
            data: data.to_vec(),
        };
        let (tx, keys, store, codec, seq) = (
            self.tx.clone(),
            self.keys.clone(),
            self.store.clone(),
            self.codec,
            self.seq,
        );
        self.pool.spawn(move || {
            let result = process(&store, codec, keys.chunk_keys(), chunk);
            let _ = tx.send(Item { seq, len, result });
        });
        self.seq += 1;
        Ok(true)
    }
}
