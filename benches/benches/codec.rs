//! Encode and decode throughput of every message type, the borrowed hot-path
//! views, and frame splitting.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use elko_benches::sample_messages;
use elko_protocol::*;

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
        let bytes = m.to_bytes().expect("encodes");
        dec.throughput(Throughput::Bytes(bytes.len() as u64));
        let ty = bytes[4];
        let body = bytes.slice(5..);
        dec.bench_function(BenchmarkId::from_parameter(m.message_type().name()), |b| {
            b.iter(|| black_box(Message::decode(ty, &body).expect("decodes")))
        });
    }
    dec.finish();

    let mut hot = c.benchmark_group("hot_path");
    let said = Said {
        context_seq: 99_999,
        from: "user-1234".into(),
        client_seq: 1234,
        sent_at_us: 1 << 33,
        text: "x".repeat(64),
    };
    let bytes = encode_frame_to_bytes(&said).expect("encodes");
    let body = bytes.slice(5..);
    hot.throughput(Throughput::Elements(1));
    hot.bench_function("SaidRef decode (no allocation)", |b| {
        b.iter(|| {
            black_box(
                decode_body_borrowed::<SaidRef<'_>>(MessageType::Said, &body).expect("decodes"),
            )
        })
    });
    hot.bench_function("Said decode (owned)", |b| {
        b.iter(|| black_box(decode_body::<Said>(MessageType::Said, &body).expect("decodes")))
    });
    let sref = SaidRef {
        context_seq: 99_999,
        from: "user-1234",
        client_seq: 1234,
        sent_at_us: 1 << 33,
        text: &said.text,
    };
    hot.bench_function("SaidRef encode", |b| {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        b.iter(|| {
            if buf.capacity() - buf.len() < 256 {
                buf = BytesMut::with_capacity(64 * 1024);
            }
            encode_frame(&sref, &mut buf).expect("encodes");
            black_box(buf.split().freeze())
        })
    });
    hot.finish();

    let mut split = c.benchmark_group("frame_decoder");
    let msgs = sample_messages();
    let mut stream = BytesMut::new();
    for i in 0..1000 {
        msgs[i % msgs.len()].encode(&mut stream).expect("encodes");
    }
    let stream = stream.freeze();
    split.throughput(Throughput::Elements(1000));
    split.bench_function("split 1000 mixed frames", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut n = 0;
            for chunk in stream.chunks(16 * 1024) {
                d.extend(chunk);
                while let Some(f) = d.next_frame().expect("valid") {
                    n += f.body.len();
                }
            }
            black_box(n)
        })
    });
    split.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = codec
}
criterion_main!(benches);
