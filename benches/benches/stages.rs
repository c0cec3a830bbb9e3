//! Criterion benches of the backup pipeline's hot stages, each reported as bytes per second of
//! volume data:
//! - `chunking`: FastCDC over a 64 MiB in-memory buffer, streaming ([`Chunker`]) and one-shot
//!   ([`ChunkerParams::cut_all`]);
//! - `blake3`: chunk ids of 64 KiB chunks, plain and keyed;
//! - `zstd`: [`EnvelopeCodec::seal`] without encryption at levels -1, 1 and 3 (and opening at 1)
//!   on 64 KiB chunks of mixed data;
//! - `aes_gcm`: sealing and opening without compression, and the encrypted default (zstd 1 + AES);
//! - `index`: [`Store::has_chunk`] hits and misses, and [`Store::add_refs`] in the engine's
//!   groups of 256 chunks. One lookup or reference stands for one 64 KiB chunk of volume data.
//!
//! Run: `cargo bench -p blockvault-benches --bench stages -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;

use blockvault_benches::mixed_buffer;
use blockvault_core::chunker::{Chunker, ChunkerParams};
use blockvault_core::keys::chunk_id;
use blockvault_core::manifest::ManifestBuilder;
use blockvault_core::{BackupId, ChunkId, Compression, DataKey, EnvelopeCodec, ManifestEntry};
use blockvault_store::{RefBatch, Store, StoreConfig};
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHUNK: usize = 64 << 10;
/// Chunks the per-chunk benches cycle through (8 MiB of mixed data).
const POOL: usize = 128;
/// Chunks indexed in the store of the `index` benches (16 GiB of volume at 64 KiB).
const INDEXED: usize = 1 << 18;
/// The engine's group size: chunks per `add_refs` call.
const GROUP: usize = 256;

/// 64 KiB chunks of mixed data (binaries, text, random, zeros), with their plain ids.
fn chunk_pool() -> Vec<(ChunkId, Vec<u8>)> {
    mixed_buffer(POOL * CHUNK, 7)
        .chunks_exact(CHUNK)
        .map(|c| (chunk_id(c, None), c.to_vec()))
        .collect()
}

fn chunking(c: &mut Criterion) {
    let data = mixed_buffer(64 << 20, 1);
    let params = ChunkerParams::default();
    let chunks = params.cut_all(&data).len();
    eprintln!(
        "chunking: 64 MiB of mixed data -> {chunks} chunks (avg {} KiB)",
        data.len() / chunks.max(1) / 1024
    );
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.bench_function("chunker_stream_64MiB", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for chunk in Chunker::new(black_box(&data[..]), params).expect("valid params") {
                n += chunk.expect("in-memory read").data.len();
            }
            assert_eq!(n, data.len());
            n
        })
    });
    g.bench_function("cut_all_64MiB", |b| {
        b.iter(|| params.cut_all(black_box(&data)).len())
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let pool = chunk_pool();
    let key = DataKey::generate();
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("plain_64KiB", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % POOL;
            chunk_id(black_box(&pool[i].1), None)
        })
    });
    g.bench_function("keyed_64KiB", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % POOL;
            chunk_id(black_box(&pool[i].1), Some(&key))
        })
    });
    g.finish();
}

/// Envelope bytes over plaintext bytes across the pool.
fn ratio(codec: EnvelopeCodec, pool: &[(ChunkId, Vec<u8>)]) -> f64 {
    let sealed: usize = pool
        .iter()
        .map(|(id, d)| codec.seal(id, d, None).len())
        .sum();
    sealed as f64 / (pool.len() * CHUNK) as f64
}

fn compression(c: &mut Criterion) {
    let pool = chunk_pool();
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for level in [-1, 1, 3] {
        let codec = EnvelopeCodec {
            compression: Compression::Zstd { level },
        };
        eprintln!(
            "zstd level {level}: sealed/raw = {:.3} over {POOL} mixed 64 KiB chunks",
            ratio(codec, &pool)
        );
        g.bench_with_input(BenchmarkId::new("seal_64KiB", level), &codec, |b, codec| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % POOL;
                let (id, data) = &pool[i];
                codec.seal(id, black_box(data), None)
            })
        });
    }
    let codec = EnvelopeCodec {
        compression: Compression::Zstd { level: 1 },
    };
    let sealed: Vec<Vec<u8>> = pool.iter().map(|(id, d)| codec.seal(id, d, None)).collect();
    g.bench_function(BenchmarkId::new("open_64KiB", 1), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % POOL;
            EnvelopeCodec::open(&pool[i].0, black_box(&sealed[i]), None).expect("valid envelope")
        })
    });
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let key = DataKey::generate();
    let pool: Vec<(ChunkId, Vec<u8>)> = chunk_pool()
        .into_iter()
        .map(|(_, d)| (chunk_id(&d, Some(&key)), d))
        .collect();
    let raw = EnvelopeCodec {
        compression: Compression::None,
    };
    let zstd1 = EnvelopeCodec {
        compression: Compression::Zstd { level: 1 },
    };
    let sealed: Vec<Vec<u8>> = pool
        .iter()
        .map(|(id, d)| raw.seal(id, d, Some(&key)))
        .collect();
    let mut g = c.benchmark_group("aes_gcm");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("seal_64KiB", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % POOL;
            let (id, data) = &pool[i];
            raw.seal(id, black_box(data), Some(&key))
        })
    });
    // Includes re-deriving the keyed BLAKE3 id of the plaintext, as every open does.
    g.bench_function("open_64KiB", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % POOL;
            EnvelopeCodec::open(&pool[i].0, black_box(&sealed[i]), Some(&key))
                .expect("valid envelope")
        })
    });
    g.bench_function("seal_zstd1_64KiB", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % POOL;
            let (id, data) = &pool[i];
            zstd1.seal(id, black_box(data), Some(&key))
        })
    });
    g.finish();
}

fn random_ids(rng: &mut StdRng, n: usize) -> Vec<ChunkId> {
    (0..n).map(|_| ChunkId(rng.gen())).collect()
}

/// A store in a temporary directory with `INDEXED` chunks in sealed packs of 4096, flushed so
/// lookups go through the SST files and their Bloom filters as in a long-lived store.
fn indexed_store(rng: &mut StdRng) -> (tempfile::TempDir, Store, Vec<ChunkId>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::init(dir.path().join("store"), StoreConfig::default()).expect("init store");
    let ids = random_ids(rng, INDEXED);
    let envelope = [0u8; 32];
    for part in ids.chunks(4096) {
        let mut w = store.new_pack().expect("new pack");
        for id in part {
            w.append(*id, CHUNK as u32, &envelope).expect("append");
        }
        store.seal_pack(w).expect("seal pack");
    }
    store.flush().expect("flush");
    (dir, store, ids)
}

/// One engine group: `GROUP` references and, as in one group of 16, a full manifest block.
fn ref_batches(ids: &[ChunkId]) -> Vec<RefBatch> {
    let mut mb = ManifestBuilder::default();
    let mut blocks = Vec::new();
    for id in ids {
        if let Some(b) = mb.push(ManifestEntry::Chunk {
            id: *id,
            len: CHUNK as u32,
        }) {
            blocks.push(b);
        }
    }
    blocks.extend(mb.finish());
    let mut batches: Vec<RefBatch> = ids
        .chunks(GROUP)
        .map(|c| RefBatch {
            chunks: c.to_vec(),
            blocks: Vec::new(),
            parent: None,
        })
        .collect();
    let last = batches.last_mut().expect("at least one group");
    last.blocks = blocks
        .into_iter()
        .enumerate()
        .map(|(n, b)| (n as u32, b))
        .collect();
    batches
}

fn index(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let (_dir, store, ids) = indexed_store(&mut rng);
    let mut shuffled = ids.clone();
    rand::seq::SliceRandom::shuffle(&mut shuffled[..], &mut rng);
    let absent = random_ids(&mut rng, 1 << 16);

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("has_chunk_hit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % shuffled.len();
            let hit = store.has_chunk(black_box(&shuffled[i])).expect("lookup");
            debug_assert!(hit);
            hit
        })
    });
    g.bench_function("has_chunk_miss", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % absent.len();
            store.has_chunk(black_box(&absent[i])).expect("lookup")
        })
    });

    // 16 groups of 256 = one manifest block of 4096 entries = 256 MiB of volume per iteration.
    let per_iter = 16 * GROUP;
    g.throughput(Throughput::Bytes((per_iter * CHUNK) as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.bench_function("add_refs_4096_new", |b| {
        let mut rng = StdRng::seed_from_u64(4);
        b.iter_batched(
            || {
                (
                    BackupId::new(),
                    ref_batches(&random_ids(&mut rng, per_iter)),
                )
            },
            |(backup, batches)| {
                for batch in &batches {
                    let present = store.add_refs(&backup, batch).expect("add refs");
                    debug_assert!(present.iter().all(|p| !p));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("add_refs_4096_dedup", |b| {
        let mut at = 0;
        b.iter_batched(
            || {
                at = (at + per_iter) % (ids.len() - per_iter);
                (BackupId::new(), ref_batches(&shuffled[at..at + per_iter]))
            },
            |(backup, batches)| {
                for batch in &batches {
                    let present = store.add_refs(&backup, batch).expect("add refs");
                    debug_assert!(present.iter().all(|p| *p));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, chunking, hashing, compression, encryption, index);
criterion_main!(benches);
