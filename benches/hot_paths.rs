//! Criterion micro-benchmarks of what every viewer request runs: request-path
//! normalisation, the index lookup, Range parsing and the validators of a response head.
//! `cargo bench --bench hot_paths`; compare runs on the same machine, never across machines.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use tidecache::config::{ByteSize, StoreConfig};
use tidecache::object_path::from_request;
use tidecache::serve::Validators;
use tidecache::serve::range::parse;
use tidecache::store::Stores;
use tidecache::store::writer::ObjectWriter;

fn request_paths(c: &mut Criterion) {
    c.bench_function("from_request plain", |b| {
        b.iter(|| from_request(black_box("/title123/1080p/seg_00001.m4s")))
    });
    c.bench_function("from_request escaped", |b| {
        b.iter(|| from_request(black_box("/title%20123//1080p/seg_00001.m4s")))
    });
}

fn ranges(c: &mut Criterion) {
    c.bench_function("range single", |b| {
        b.iter(|| parse(black_box("bytes=0-65535"), black_box(2 << 20)))
    });
    c.bench_function("range multi", |b| {
        b.iter(|| parse(black_box("bytes=0-99,200-299,-500"), black_box(2 << 20)))
    });
}

fn index_and_head(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let stores = Arc::new(Stores::load(&[StoreConfig {
        path: dir.path().to_owned(),
        capacity: Some(ByteSize(1 << 30)),
    }]));
    for number in 0..1000 {
        let path = format!("t/seg_{number:05}.m4s");
        let data = number.to_string().into_bytes();
        let mut writer = ObjectWriter::begin(
            &stores,
            &path,
            data.len() as u64,
            Sha256::digest(&data).into(),
        )
        .expect("writer");
        writer.write(&data).expect("write");
        writer.finish().expect("finish");
    }
    c.bench_function("index lookup", |b| {
        b.iter(|| stores.lookup(black_box("t/seg_00500.m4s")))
    });
    let meta = stores.lookup("t/seg_00500.m4s").expect("stored");
    c.bench_function("validators of a response head", |b| {
        b.iter(|| Validators::of(black_box(&meta)))
    });
}

/// What counting popularity adds to a request: a path counted already (the common case),
/// and a stream of 100,000 distinct paths through a full sketch (every request takes a
/// counter over).
fn popularity(c: &mut Criterion) {
    use tidecache::serve::popularity::Popularity;
    let popularity = Popularity::new();
    let hot: Vec<String> = (0..200)
        .map(|i| format!("title{i}/1080p/seg_00042.m4s"))
        .collect();
    let mut next = 0usize;
    c.bench_function("popularity hit, 200 paths", |b| {
        b.iter(|| {
            next = (next + 1) % hot.len();
            popularity.hit(black_box(&hot[next]), 65_536);
        })
    });
    let tail: Vec<String> = (0..100_000)
        .map(|i| format!("title{i}/1080p/seg_00042.m4s"))
        .collect();
    c.bench_function("popularity hit, 100000 paths", |b| {
        b.iter(|| {
            next = (next + 7919) % tail.len();
            popularity.hit(black_box(&tail[next]), 65_536);
        })
    });
}

criterion_group!(hot_paths, request_paths, ranges, index_and_head, popularity);
criterion_main!(hot_paths);
