//! Matching 64 names against 10, 100 and 1000 subscription patterns: the
//! precompiled trie (`PatternSet`) versus testing each `Pattern` in turn.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eventbus::pattern::{Pattern, PatternSet};
use std::time::Duration;

/// The `k`-th pattern: a mix of exact names and the usual wildcard shapes.
fn pattern(k: usize) -> String {
    let (svc, entity) = (k / 4, k % 7);
    match k % 4 {
        0 => format!("svc{svc}.entity{entity}.created"),
        1 => format!("svc{svc}.*"),
        2 => format!("svc{svc}.entity{entity}.#"),
        _ => format!("*.entity{k}.updated"),
    }
}

/// A name matched by `pattern(k)`, varied by `i`.
fn matching_name(k: usize, i: usize) -> String {
    let (svc, entity) = (k / 4, k % 7);
    match k % 4 {
        0 => format!("svc{svc}.entity{entity}.created"),
        1 => format!("svc{svc}.x{i}"),
        2 => format!("svc{svc}.entity{entity}.field{i}.changed"),
        _ => format!("other{i}.entity{k}.updated"),
    }
}

/// 64 names: 32 matched by the first 10 patterns (so by every set), 32 by none.
fn names() -> Vec<String> {
    (0..32)
        .map(|i| matching_name(i % 10, i))
        .chain((0..32).map(|i| format!("svc{i}x.entity{i}.deleted")))
        .collect()
}

fn bench(c: &mut Criterion) {
    let names = names();
    let mut group = c.benchmark_group("pattern_match");
    group
        .throughput(Throughput::Elements(names.len() as u64))
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10, 100, 1000] {
        let patterns: Vec<Pattern> = (0..n)
            .map(|k| Pattern::parse(&pattern(k)).expect("valid"))
            .collect();
        let set: PatternSet<usize> = patterns.iter().zip(0..).collect();
        group.bench_with_input(BenchmarkId::new("trie", n), &set, |b, set| {
            b.iter(|| {
                for name in &names {
                    set.for_each_match(name, |v| {
                        black_box(v);
                    });
                }
            });
        });
        group.bench_with_input(
            BenchmarkId::new("naive_linear", n),
            &patterns,
            |b, patterns| {
                b.iter(|| {
                    for name in &names {
                        for (i, p) in patterns.iter().enumerate() {
                            if p.matches(name) {
                                black_box(i);
                            }
                        }
                    }
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
