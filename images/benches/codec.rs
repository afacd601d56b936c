//! Image codec throughput on real CRIU 4.2 images: framing parse, typed decode (prost), and
//! encode back to file bytes, for core, mm and pagemap images of the fixtures.
//!
//! Run: `cargo bench -p stasis-images --bench codec` (fixtures from `$STASIS_FIXTURES` or the
//! first `shared/fixtures` above the crate).

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stasis_images::framing::Image;
use stasis_images::magic::ImageKind;
use stasis_images::pagemap::Pagemap;
use stasis_images::pb;

fn fixtures() -> PathBuf {
    if let Some(p) = std::env::var_os("STASIS_FIXTURES") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/fixtures"))
        .find(|d| d.join("criu-4.2").is_dir())
        .expect("fixtures not found: set STASIS_FIXTURES")
}

fn load(rel: &str) -> Vec<u8> {
    let p = fixtures().join("criu-4.2").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn bench_typed<M: prost::Message + Default>(
    c: &mut Criterion,
    label: &str,
    kind: ImageKind,
    bytes: &[u8],
) {
    let mut g = c.benchmark_group(label);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| Image::parse(std::hint::black_box(bytes)).unwrap())
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            Image::parse(std::hint::black_box(bytes))
                .unwrap()
                .decode::<M>()
                .unwrap()
        })
    });
    let msgs: Vec<M> = Image::parse(bytes).unwrap().decode().unwrap();
    g.bench_function("encode", |b| {
        b.iter(|| Image::from_messages(kind, std::hint::black_box(&msgs)).to_bytes())
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let core = load("fx-threads/core-30200.img");
    bench_typed::<pb::CoreEntry>(c, "core", ImageKind::Core, &core);
    let mm = load("fx-mem/mm-30100.img");
    bench_typed::<pb::MmEntry>(c, "mm", ImageKind::Mm, &mm);

    let pm = load("fx-mem/pagemap-30100.img");
    let mut g = c.benchmark_group("pagemap");
    g.throughput(Throughput::Bytes(pm.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| Image::parse(std::hint::black_box(&pm)).unwrap())
    });
    g.bench_function("decode", |b| {
        b.iter(|| Pagemap::from_image(&Image::parse(std::hint::black_box(&pm)).unwrap()).unwrap())
    });
    let map = Pagemap::from_image(&Image::parse(&pm).unwrap()).unwrap();
    g.bench_function("encode", |b| {
        b.iter(|| std::hint::black_box(&map).to_image().to_bytes())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
