//! Cost of one log event for the code that logs, with the gateway log layer added to the
//! stderr layer (here writing to a sink): without the layer, with the layer while the
//! gateway is gone (queue full: the event is counted as dropped), and with the layer
//! while a shipper drains the queue. The proxy must not slow down when the gateway is
//! gone: "queue full" should cost no more than the baseline plus a counter increment.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use openshell_sandbox::gateway::logs;
use tracing_subscriber::layer::SubscriberExt;

fn event(n: u64) {
    tracing::info!(target: "openshell::audit", action = "allow", host = "api.example.com", port = 443, n, "decision");
}

fn stderr_like() -> impl tracing_subscriber::Layer<tracing_subscriber::Registry> {
    tracing_subscriber::fmt::layer().with_writer(std::io::sink)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("log event");
    let mut n = 0u64;

    let baseline = tracing_subscriber::registry().with(stderr_like());
    tracing::subscriber::with_default(baseline, || {
        group.bench_function("without the gateway layer", |b| b.iter(|| event(black_box(n))));
    });

    // The gateway is gone: nobody drains the queue, so it is full.
    let (layer, queue) = logs::queue("bench", 1024);
    let full = tracing_subscriber::registry().with(stderr_like()).with(layer);
    tracing::subscriber::with_default(full, || {
        for i in 0..2048 {
            event(i);
        }
        group.bench_function("gateway layer, gateway down (queue full)", |b| b.iter(|| event(black_box(n))));
    });
    drop(queue);

    // The gateway is up: a runtime drains the queue as fast as it fills.
    let (layer, queue) = logs::queue("bench", 4096);
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        let mut queue = queue;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if queue.try_take().is_none() {
                    std::thread::yield_now();
                }
            }
        })
    };
    let draining = tracing_subscriber::registry().with(stderr_like()).with(layer);
    tracing::subscriber::with_default(draining, || {
        group.bench_function("gateway layer, queue draining", |b| {
            b.iter(|| {
                n += 1;
                event(black_box(n))
            })
        });
    });
    stop.store(true, Ordering::Relaxed);
    let _ = drainer.join();
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
