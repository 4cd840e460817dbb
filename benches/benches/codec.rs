//! Codec throughput: encode and decode of every message type, the borrowed
//! hot-path views (`SayRef`, `SaidRef`), and `FrameDecoder` splitting a
//! stream of 1000 mixed frames.
//!
//! Each encode/decode benchmark handles one whole frame per iteration;
//! criterion reports bytes per second (frame length on the wire, header
//! included), and `codec_table` adds messages per second from the same
//! estimates. Before criterion starts, the bench prints how many allocations
//! one encode and one decode of each message make (counted by the global
//! allocator), so the "decodes without allocating" claim is checked, not
//! assumed.
//!
//! Run: `cargo bench -p elko-benches --bench codec`, then
//! `cargo run --release -p elko-benches --bin codec_table` for the table.

use bytes::BytesMut;
use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use elko_benches::{
    allocations_during, mixed_stream, sample_messages, set_counting, CountingAlloc,
};
use elko_protocol::*;
use std::time::Duration;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The hot path's utterance: 64 bytes of text from a ten-byte user name.
const TEXT: &str = "the quick brown fox jumps over the lazy dog; the lazy dog sleeps";
const _: () = assert!(TEXT.len() == 64);

fn say_ref() -> SayRef<'static> {
    SayRef {
        client_seq: 1234,
        sent_at_us: 1 << 50,
        text: TEXT,
    }
}

fn said_ref() -> SaidRef<'static> {
    SaidRef {
        context_seq: 99_999,
        from: "user-1234",
        client_seq: 1234,
        sent_at_us: 1 << 50,
        text: TEXT,
    }
}

/// Split `stream` into frames, fed in `chunk`-byte reads as the engine does.
fn split(stream: &[u8], chunk: usize) -> usize {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut n = 0;
    for c in stream.chunks(chunk) {
        d.extend(c);
        while let Some(f) = d.next_frame().expect("valid stream") {
            n += f.body.len();
        }
    }
    n
}

/// Allocations per call of `f`, averaged over 100 calls after one warm-up.
fn allocs_per_call(mut f: impl FnMut()) -> f64 {
    f();
    let ((), n) = allocations_during(|| (0..100).for_each(|_| f()));
    n as f64 / 100.0
}

fn print_allocations() {
    println!("allocations per call (counted by the global allocator):");
    println!(
        "{:<16} {:>7} {:>7} {:>7}",
        "message", "bytes", "encode", "decode"
    );
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for m in sample_messages() {
        let frame = m.to_bytes().expect("encodes");
        let enc = allocs_per_call(|| {
            buf.clear();
            m.encode(&mut buf).expect("encodes");
        });
        let dec = allocs_per_call(|| {
            black_box(Message::decode(frame[4], &frame[5..]).expect("decodes"));
        });
        println!(
            "{:<16} {:>7} {:>7.1} {:>7.1}",
            m.message_type().name(),
            frame.len(),
            enc,
            dec
        );
    }
    let said = encode_frame_to_bytes(&said_ref()).expect("encodes");
    let say = encode_frame_to_bytes(&say_ref()).expect("encodes");
    let views = [
        (
            "SaidRef decode",
            allocs_per_call(|| {
                black_box(
                    decode_body_borrowed::<SaidRef<'_>>(MessageType::Said, &said[5..])
                        .expect("decodes"),
                );
            }),
        ),
        (
            "SayRef decode",
            allocs_per_call(|| {
                black_box(
                    decode_body_borrowed::<SayRef<'_>>(MessageType::Say, &say[5..])
                        .expect("decodes"),
                );
            }),
        ),
        (
            "SaidRef encode",
            allocs_per_call(|| {
                buf.clear();
                encode_frame(&said_ref(), &mut buf).expect("encodes");
            }),
        ),
    ];
    for (name, n) in views {
        println!("{name:<16} {:>7} {n:>15.1}", "");
    }
    read_cycle_allocations();
}

/// Allocations per read in the engine's receive pattern: `extend` with one
/// read's bytes, split and drop every frame, then `shrink_if_idle` (as
/// `EventLoop::read_conn` does after a read that drained the socket).
fn read_cycle_allocations() {
    let said = encode_frame_to_bytes(&said_ref()).expect("encodes");
    let batch = |frames: usize| said.repeat(frames);
    let (eight, five, three) = (batch(8), batch(5), batch(3));
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut cycle = |read: &[u8]| {
        d.extend(read);
        while let Some(f) = d.next_frame().expect("valid stream") {
            black_box(f);
        }
        d.shrink_if_idle();
    };
    let same = allocs_per_call(|| cycle(&eight));
    let mut i = 0;
    let varying = allocs_per_call(|| {
        i += 1;
        cycle(if i % 2 == 0 { &five } else { &three })
    });
    println!("FrameDecoder read cycle (extend, split every frame, shrink_if_idle):");
    println!("  reads of one size (8 frames each):     {same:.1} allocations per read");
    println!("  reads of varying size (5, 3, 5, ...):  {varying:.1} allocations per read");
}

fn codec(c: &mut Criterion) {
    let mut enc = c.benchmark_group("encode");
    for m in sample_messages() {
        let len = m.to_bytes().expect("encodes").len();
        enc.throughput(Throughput::Bytes(len as u64));
        enc.bench_with_input(
            BenchmarkId::from_parameter(m.message_type().name()),
            &m,
            |b, m| {
                let mut buf = BytesMut::with_capacity(64 * 1024);
                b.iter(|| {
                    buf.clear();
                    m.encode(&mut buf).expect("encodes");
                    black_box(buf.len())
                })
            },
        );
    }
    enc.finish();

    let mut dec = c.benchmark_group("decode");
    for m in sample_messages() {
        let frame = m.to_bytes().expect("encodes");
        dec.throughput(Throughput::Bytes(frame.len() as u64));
        let ty = frame[4];
        let body = frame.slice(5..);
        dec.bench_function(BenchmarkId::from_parameter(m.message_type().name()), |b| {
            b.iter(|| black_box(Message::decode(ty, black_box(&body)).expect("decodes")))
        });
    }
    dec.finish();

    // The per-utterance path of a context: decode a Say, encode one Said for
    // every member, and each member's client decodes it.
    let mut hot = c.benchmark_group("hot_path");
    hot.throughput(Throughput::Elements(1));
    let say = encode_frame_to_bytes(&say_ref())
        .expect("encodes")
        .slice(5..);
    let said = encode_frame_to_bytes(&said_ref())
        .expect("encodes")
        .slice(5..);
    hot.bench_function("SayRef_decode_borrowed", |b| {
        b.iter(|| {
            black_box(
                decode_body_borrowed::<SayRef<'_>>(MessageType::Say, black_box(&say))
                    .expect("decodes"),
            )
        })
    });
    hot.bench_function("Say_decode_owned", |b| {
        b.iter(|| {
            black_box(decode_body::<Say>(MessageType::Say, black_box(&say)).expect("decodes"))
        })
    });
    hot.bench_function("SaidRef_decode_borrowed", |b| {
        b.iter(|| {
            black_box(
                decode_body_borrowed::<SaidRef<'_>>(MessageType::Said, black_box(&said))
                    .expect("decodes"),
            )
        })
    });
    hot.bench_function("Said_decode_owned", |b| {
        b.iter(|| {
            black_box(decode_body::<Said>(MessageType::Said, black_box(&said)).expect("decodes"))
        })
    });
    // As `Ctx::encode` does: frames cut from a 64 KiB arena, one allocation
    // per chunk.
    hot.bench_function("SaidRef_encode_arena", |b| {
        let mut arena = BytesMut::new();
        let m = said_ref();
        b.iter(|| {
            if arena.capacity() - arena.len() < 1024 {
                arena.reserve(64 * 1024);
            }
            encode_frame(black_box(&m), &mut arena).expect("encodes");
            black_box(arena.split().freeze())
        })
    });
    hot.bench_function("SaidRef_encode_to_bytes", |b| {
        let m = said_ref();
        b.iter(|| black_box(encode_frame_to_bytes(black_box(&m)).expect("encodes")))
    });
    hot.finish();

    let stream = mixed_stream(1000);
    let mut frames = c.benchmark_group("frame_decoder");
    frames.throughput(Throughput::Elements(1000));
    for chunk in [64 * 1024, 1500] {
        frames.bench_with_input(
            BenchmarkId::new("split_1000_mixed_frames", format!("{chunk}B_reads")),
            &chunk,
            |b, &chunk| b.iter(|| black_box(split(&stream, chunk))),
        );
    }
    frames.finish();
}

fn main() {
    print_allocations();
    // Counted; now time without the counter's atomic add per allocation.
    set_counting(false);
    let stream = mixed_stream(1000);
    println!(
        "frame_decoder stream: 1000 frames, {} bytes\n",
        stream.len()
    );
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    codec(&mut c);
    c.final_summary();
}
