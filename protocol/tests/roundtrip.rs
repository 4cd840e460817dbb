//! Round trips, stream splitting and malformed input.
//!
//! - Every message survives encode -> [`FrameDecoder`] -> decode (proptest,
//!   with integers biased to the varint boundaries), and the borrowed twins
//!   `SayRef`/`SaidRef` produce the same bytes as the owned structs.
//! - A stream of frames decodes to the same messages however it is split: at
//!   every byte boundary, one byte at a time, and in random chunks.
//! - Malformed input fails with the specific error, never a panic, and never
//!   makes the decoder allocate much more than the frame holds (checked with a
//!   counting global allocator).

use bytes::BytesMut;
use elko_protocol::codec::DecodeError;
use elko_protocol::*;
use proptest::prelude::*;
use proptest::strategy::Union;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

// ---- allocation tracking --------------------------------------------------------

/// Global allocator that records, per thread, the largest single allocation
/// request since the last [`largest_allocation_during`] began.
struct TrackingAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not tracked.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the tracking only reads the requested size.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (we forward all).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// Run `f` and return its result with the largest single allocation it made
/// on this thread.
fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Run `f` and return its result with the number of allocations it made on
/// this thread.
fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = COUNT.with(Cell::get);
    let out = f();
    (out, COUNT.with(Cell::get) - before)
}

// ---- strategies ---------------------------------------------------------------

fn arb_u16() -> impl Strategy<Value = u16> {
    prop_oneof![
        0..=300u16,
        any::<u16>(),
        prop::sample::select(vec![250u16, 251, 252, 253, 254, 255, 256, u16::MAX]),
    ]
}

fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        0..=300u32,
        any::<u32>(),
        prop::sample::select(vec![250u32, 251, 65_535, 65_536, u32::MAX]),
    ]
}

fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=300u64,
        any::<u64>(),
        prop::sample::select(vec![
            250u64,
            251,
            65_535,
            65_536,
            u64::from(u32::MAX),
            1 << 32,
            u64::MAX
        ]),
    ]
}

/// Any string, including multi-byte UTF-8 and control characters (the wire
/// carries them; refusing them is `validate_id`'s job, not the codec's).
fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z/0-9]{1,12}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
    ]
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

fn arb_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        prop::sample::select(ErrorCode::ALL.to_vec()),
        arb_u16().prop_map(ErrorCode),
    ]
}

fn arb_history_entry() -> impl Strategy<Value = HistoryEntry> {
    (arb_u64(), arb_string(), arb_string(), arb_u64()).prop_map(
        |(context_seq, from, text, at_ms)| HistoryEntry {
            context_seq,
            from,
            text,
            at_ms,
        },
    )
}

fn arb_loop_load() -> impl Strategy<Value = LoopLoad> {
    (arb_u32(), arb_u32(), arb_u32(), arb_u16()).prop_map(
        |(connections, contexts, users, busy_permille)| LoopLoad {
            connections,
            contexts,
            users,
            busy_permille,
        },
    )
}

fn arb_say() -> impl Strategy<Value = Say> {
    (arb_u64(), arb_u64(), arb_string()).prop_map(|(client_seq, sent_at_us, text)| Say {
        client_seq,
        sent_at_us,
        text,
    })
}

fn arb_said() -> impl Strategy<Value = Said> {
    (arb_u64(), arb_string(), arb_u64(), arb_u64(), arb_string()).prop_map(
        |(context_seq, from, client_seq, sent_at_us, text)| Said {
            context_seq,
            from,
            client_seq,
            sent_at_us,
            text,
        },
    )
}

/// Every message variant, with arbitrary field values.
fn arb_message() -> impl Strategy<Value = Message> {
    let s = arb_string;
    let arms: Vec<BoxedStrategy<Message>> = vec![
        (any::<u32>(), arb_u16(), arb_u16(), s())
            .prop_map(|(magic, min_version, max_version, client_name)| {
                Hello {
                    magic,
                    min_version,
                    max_version,
                    client_name,
                }
                .into()
            })
            .boxed(),
        (
            arb_u16(),
            s(),
            (arb_u32(), arb_u16(), arb_u32(), arb_u32(), arb_u32()),
            any::<[u8; 16]>(),
        )
            .prop_map(|(version, server_id, l, challenge)| {
                Welcome {
                    version,
                    server_id,
                    limits: Limits {
                        max_frame: l.0,
                        max_id_len: l.1,
                        max_text_len: l.2,
                        heartbeat_ms: l.3,
                        idle_timeout_ms: l.4,
                    },
                    challenge,
                }
                .into()
            })
            .boxed(),
        (arb_code(), s())
            .prop_map(|(code, message)| ErrorFrame { code, message }.into())
            .boxed(),
        arb_u64().prop_map(|nonce| Ping { nonce }.into()).boxed(),
        arb_u64().prop_map(|nonce| Pong { nonce }.into()).boxed(),
        (arb_u32(), s(), s())
            .prop_map(|(request_id, user, context)| {
                EnterContext {
                    request_id,
                    user,
                    context,
                }
                .into()
            })
            .boxed(),
        (arb_u32(), s(), s())
            .prop_map(|(request_id, user, target_user)| {
                EnterWhereUser {
                    request_id,
                    user,
                    target_user,
                }
                .into()
            })
            .boxed(),
        (arb_u32(), s(), s(), arb_bytes(), arb_u32())
            .prop_map(
                |(request_id, context, contextd_addr, token, expires_in_ms)| {
                    Redirect {
                        request_id,
                        context,
                        contextd_addr,
                        token,
                        expires_in_ms,
                    }
                    .into()
                },
            )
            .boxed(),
        (arb_u32(), arb_code(), s())
            .prop_map(|(request_id, code, message)| {
                Denied {
                    request_id,
                    code,
                    message,
                }
                .into()
            })
            .boxed(),
        (s(), s(), arb_bytes())
            .prop_map(|(context, user, token)| {
                Enter {
                    context,
                    user,
                    token,
                }
                .into()
            })
            .boxed(),
        (
            s(),
            s(),
            prop::collection::vec(s(), 0..6),
            prop::collection::vec(arb_history_entry(), 0..4),
            arb_bytes(),
        )
            .prop_map(|(context, app, members, history, state)| {
                Snapshot {
                    context,
                    app,
                    members,
                    history,
                    state,
                }
                .into()
            })
            .boxed(),
        arb_say().prop_map(Message::from).boxed(),
        arb_said().prop_map(Message::from).boxed(),
        s().prop_map(|user| Joined { user }.into()).boxed(),
        s().prop_map(|user| Left { user }.into()).boxed(),
        Just(Exit {}.into()).boxed(),
        (arb_u16(), s())
            .prop_map(|(r, message)| {
                ReEnter {
                    reason: ReEnterReason(r),
                    message,
                }
                .into()
            })
            .boxed(),
        (arb_u16(), arb_bytes())
            .prop_map(|(op, body)| AppMessage { op, body }.into())
            .boxed(),
        (s(), arb_u64(), s(), arb_u16(), arb_u32(), any::<[u8; 32]>())
            .prop_map(
                |(provider_id, epoch, client_addr, workers, capacity, auth)| {
                    Register {
                        provider_id,
                        epoch,
                        client_addr,
                        workers,
                        capacity,
                        auth,
                    }
                    .into()
                },
            )
            .boxed(),
        s().prop_map(|director_id| Registered { director_id }.into())
            .boxed(),
        (arb_u64(), prop::collection::vec(arb_loop_load(), 0..6))
            .prop_map(|(seq, loops)| LoadReport { seq, loops }.into())
            .boxed(),
        s().prop_map(|context| Activate { context }.into()).boxed(),
        s().prop_map(|context| ContextOpened { context }.into())
            .boxed(),
        (s(), arb_code(), prop::option::of(s()))
            .prop_map(|(context, code, holder)| {
                ActivateFailed {
                    context,
                    code,
                    holder,
                }
                .into()
            })
            .boxed(),
        s().prop_map(|context| ContextClosed { context }.into())
            .boxed(),
        (s(), s())
            .prop_map(|(context, user)| UserEntered { context, user }.into())
            .boxed(),
        (s(), s())
            .prop_map(|(context, user)| UserExited { context, user }.into())
            .boxed(),
        (s(), s(), arb_u64(), arb_u64())
            .prop_map(|(context, user, token_id, expires_at_ms)| {
                ExpectClient {
                    context,
                    user,
                    token_id,
                    expires_at_ms,
                }
                .into()
            })
            .boxed(),
        Just(Drain {}.into()).boxed(),
        Just(ShuttingDown {}.into()).boxed(),
    ];
    assert_eq!(
        arms.len(),
        MessageType::ALL.len(),
        "one arm per message type"
    );
    Union::new(arms)
}

// ---- helpers --------------------------------------------------------------------

fn encode(m: &Message) -> Vec<u8> {
    m.to_bytes().expect("message encodes").to_vec()
}

fn encode_all(ms: &[Message]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in ms {
        m.encode(&mut out).expect("message encodes");
    }
    out.to_vec()
}

/// Feed `chunks` in order, decoding every frame as soon as it is complete.
/// Panics on a framing or decode error (the inputs here are valid).
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Message> {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut out = Vec::new();
    for chunk in chunks {
        d.extend(chunk);
        while let Some(frame) = d.next_frame().expect("valid stream") {
            out.push(frame.decode().expect("valid body"));
        }
    }
    assert_eq!(d.buffered(), 0, "bytes left over after the last frame");
    out
}

/// Every frame of `protocol/testdata/*.hex`, decoded, in file-name order.
fn vector_messages() -> Vec<Message> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("protocol/testdata exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    paths.sort();
    assert!(paths.len() >= MessageType::ALL.len(), "vectors missing");
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).expect("readable vector");
        let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = hex::decode(digits).expect("hex");
        out.extend(decode_chunks([&bytes[..]]));
    }
    out
}

/// The body of `m`'s frame (the frame without its 5-byte header).
fn body_of(m: &Message) -> Vec<u8> {
    encode(m)[FRAME_HEADER_LEN + 1..].to_vec()
}

fn frame_with(ty: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 1).expect("small test frame");
    let mut v = len.to_le_bytes().to_vec();
    v.push(ty);
    v.extend_from_slice(body);
    v
}

/// A bincode varint, as `docs/protocol.md` describes it.
fn varint(v: u64) -> Vec<u8> {
    if v <= 250 {
        vec![v as u8]
    } else if let Ok(v) = u16::try_from(v) {
        let mut out = vec![251];
        out.extend_from_slice(&v.to_le_bytes());
        out
    } else if let Ok(v) = u32::try_from(v) {
        let mut out = vec![252];
        out.extend_from_slice(&v.to_le_bytes());
        out
    } else {
        let mut out = vec![253];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }
}

fn string(s: &str) -> Vec<u8> {
    let mut out = varint(s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out
}

// ---- round trips ------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity(m in arb_message()) {
        let bytes = encode(&m);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.extend(&bytes);
        let frame = d.next_frame().expect("valid").expect("complete");
        prop_assert_eq!(d.buffered(), 0);
        prop_assert_eq!(frame.wire_len(), bytes.len());
        prop_assert_eq!(frame.ty, m.message_type() as u8);
        prop_assert_eq!(frame.decode().expect("decodes"), m);
    }

    #[test]
    fn our_varint_matches_the_codec(v in arb_u64()) {
        // Ping's body is exactly one u64, so it shows the varint rule alone.
        prop_assert_eq!(body_of(&Ping { nonce: v }.into()), varint(v));
    }

    #[test]
    fn say_ref_is_say(say in arb_say()) {
        let r = SayRef { client_seq: say.client_seq, sent_at_us: say.sent_at_us, text: &say.text };
        let owned = encode_frame_to_bytes(&say).expect("encodes");
        let borrowed = encode_frame_to_bytes(&r).expect("encodes");
        prop_assert_eq!(&owned, &borrowed);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.extend(&borrowed);
        let frame = d.next_frame().expect("valid").expect("complete");
        prop_assert_eq!(frame.decode_as::<SayRef<'_>>(MessageType::Say).expect("decodes"), r);
        prop_assert_eq!(frame.decode_owned::<Say>(MessageType::Say).expect("decodes"), say);
    }

    #[test]
    fn said_ref_is_said(said in arb_said()) {
        let r = SaidRef {
            context_seq: said.context_seq,
            from: &said.from,
            client_seq: said.client_seq,
            sent_at_us: said.sent_at_us,
            text: &said.text,
        };
        let owned = encode_frame_to_bytes(&said).expect("encodes");
        let borrowed = encode_frame_to_bytes(&r).expect("encodes");
        prop_assert_eq!(&owned, &borrowed);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.extend(&borrowed);
        let frame = d.next_frame().expect("valid").expect("complete");
        prop_assert_eq!(frame.decode_as::<SaidRef<'_>>(MessageType::Said).expect("decodes"), r);
        prop_assert_eq!(frame.decode_owned::<Said>(MessageType::Said).expect("decodes"), said);
    }

    /// Every proper prefix of a body is `Truncated`: decoding a prefix reads
    /// the same bytes as decoding the whole body until it runs off the end, and
    /// decoding the whole body uses every byte.
    #[test]
    fn proper_prefixes_of_a_body_are_truncated(m in arb_message()) {
        let body = body_of(&m);
        let ty = m.message_type();
        for k in 0..body.len() {
            prop_assert_eq!(
                Message::decode(ty as u8, &body[..k]),
                Err(DecodeError::Truncated { ty }),
                "prefix of {} of {} bytes", k, body.len()
            );
        }
    }

    #[test]
    fn trailing_bytes_are_refused(m in arb_message(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let ty = m.message_type();
        let mut body = body_of(&m);
        body.extend_from_slice(&extra);
        prop_assert_eq!(
            Message::decode(ty as u8, &body),
            Err(DecodeError::TrailingBytes { ty, extra: extra.len() })
        );
    }
}

// ---- splitting ---------------------------------------------------------------------

/// The vectors, plus a few larger messages so frames span many bytes.
fn split_stream() -> (Vec<Message>, Vec<u8>) {
    let mut ms = vector_messages();
    ms.push(
        Say {
            client_seq: 3,
            sent_at_us: 4,
            text: "é".repeat(200),
        }
        .into(),
    );
    ms.push(Exit {}.into());
    ms.push(
        AppMessage {
            op: 0,
            body: vec![0xab; 300],
        }
        .into(),
    );
    let bytes = encode_all(&ms);
    (ms, bytes)
}

#[test]
fn split_at_every_byte_boundary() {
    let (ms, bytes) = split_stream();
    for i in 0..=bytes.len() {
        let (a, b) = bytes.split_at(i);
        assert_eq!(decode_chunks([a, b]), ms, "split at byte {i}");
    }
}

#[test]
fn one_byte_at_a_time() {
    let (ms, bytes) = split_stream();
    assert_eq!(decode_chunks(bytes.chunks(1)), ms);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_chunk_sizes(sizes in prop::collection::vec(1usize..64, 1..64)) {
        let (ms, bytes) = split_stream();
        prop_assert_eq!(decode_chunks(chunked(&bytes, &sizes)), ms);
    }

    #[test]
    fn random_messages_in_random_chunks(
        ms in prop::collection::vec(arb_message(), 1..12),
        sizes in prop::collection::vec(1usize..40, 1..16),
    ) {
        let bytes = encode_all(&ms);
        prop_assert_eq!(decode_chunks(chunked(&bytes, &sizes)), ms);
    }
}

/// The receive path of an event loop: reads of whole frames for many
/// connections, through one shared block, allocate nothing once the block
/// exists (before, each read allocated a buffer and its shared header).
#[test]
fn whole_frames_through_a_shared_block_allocate_nothing() {
    let said = encode_all(&[Said {
        context_seq: 7,
        from: "alice".into(),
        client_seq: 3,
        sent_at_us: 4,
        text: "x".repeat(64),
    }
    .into()]);
    let mut block = BytesMut::with_capacity(64 * 1024);
    let mut decoders: Vec<FrameDecoder> = (0..40)
        .map(|_| FrameDecoder::new(DEFAULT_MAX_FRAME))
        .collect();
    // Reads of one, two or three frames, as a socket gives them.
    let reads: Vec<Vec<u8>> = (1..=3).map(|k| said.repeat(k)).collect();
    let mut read_all = |rounds: usize| {
        let mut frames = 0;
        for r in 0..rounds {
            for (i, d) in decoders.iter_mut().enumerate() {
                d.extend_shared(&reads[(r + i) % 3], &mut block);
                while let Some(f) = d.next_frame().expect("valid") {
                    frames += usize::from(f.ty == MessageType::Said as u8);
                }
                d.shrink_if_idle();
            }
        }
        frames
    };
    read_all(1); // the block becomes shared: its one header allocation
    let (frames, allocations) = allocations_during(|| read_all(10_000));
    let expected: usize = (0..10_000usize)
        .flat_map(|r| (0..40).map(move |i| (r + i) % 3 + 1))
        .sum();
    assert_eq!(frames, expected);
    assert_eq!(allocations, 0);
}

/// Cut `bytes` into chunks of the given sizes, cycling through them.
fn chunked<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = bytes;
    for s in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at((*s).min(rest.len()));
        chunks.push(a);
        rest = b;
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two connections' streams read in turn into one small shared block (as
    /// an event loop does), some frames kept until the end so the block is
    /// sometimes pinned and sometimes reused: every frame comes out intact.
    #[test]
    fn two_streams_through_one_shared_block(
        ms_a in prop::collection::vec(arb_message(), 1..10),
        ms_b in prop::collection::vec(arb_message(), 1..10),
        sizes in prop::collection::vec(1usize..300, 1..16),
        keep_every in 1usize..5,
        block_size in 16usize..512,
    ) {
        let (bytes_a, bytes_b) = (encode_all(&ms_a), encode_all(&ms_b));
        let reversed: Vec<usize> = sizes.iter().rev().copied().collect();
        let (chunks_a, chunks_b) = (chunked(&bytes_a, &sizes), chunked(&bytes_b, &reversed));
        let mut block = bytes::BytesMut::with_capacity(block_size);
        let mut decoders = [FrameDecoder::new(DEFAULT_MAX_FRAME), FrameDecoder::new(DEFAULT_MAX_FRAME)];
        let mut out: [Vec<Message>; 2] = [Vec::new(), Vec::new()];
        let mut kept: [Vec<(usize, elko_protocol::Frame)>; 2] = [Vec::new(), Vec::new()];
        let mut n = 0usize;
        for i in 0..chunks_a.len().max(chunks_b.len()) {
            for (side, chunks) in [&chunks_a, &chunks_b].into_iter().enumerate() {
                let Some(chunk) = chunks.get(i) else { continue };
                decoders[side].extend_shared(chunk, &mut block);
                while let Some(frame) = decoders[side].next_frame().expect("valid stream") {
                    n += 1;
                    if n % keep_every == 0 {
                        kept[side].push((out[side].len(), frame));
                        out[side].push(Exit {}.into()); // decoded at the end
                    } else {
                        out[side].push(frame.decode().expect("valid body"));
                    }
                }
            }
        }
        for side in 0..2 {
            prop_assert_eq!(decoders[side].buffered(), 0);
            for (at, frame) in kept[side].drain(..) {
                out[side][at] = frame.decode().expect("valid body");
            }
        }
        prop_assert_eq!(&out[0], &ms_a);
        prop_assert_eq!(&out[1], &ms_b);
    }
}

// ---- framing errors -----------------------------------------------------------------

#[test]
fn oversize_length_is_refused_from_the_header_alone() {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_PREAUTH);
    // Three header bytes are not enough to judge.
    d.extend(&4097u32.to_le_bytes()[..3]);
    assert_eq!(d.next_frame(), Ok(None));
    d.extend(&4097u32.to_le_bytes()[3..]);
    assert_eq!(
        d.next_frame(),
        Err(FrameError::TooLarge {
            len: 4097,
            max: 4096
        })
    );
    // Exactly the limit is fine, and waits for its body.
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_PREAUTH);
    d.extend(&4096u32.to_le_bytes());
    assert_eq!(d.next_frame(), Ok(None));

    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    d.extend(&u32::MAX.to_le_bytes());
    assert_eq!(
        d.next_frame(),
        Err(FrameError::TooLarge {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME
        })
    );
}

#[test]
fn oversize_length_after_valid_frames() {
    let mut bytes = encode(&Ping { nonce: 1 }.into());
    bytes.extend_from_slice(&65_537u32.to_le_bytes());
    bytes.push(0x04);
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    d.extend(&bytes);
    assert!(matches!(d.next_frame(), Ok(Some(_))));
    assert_eq!(
        d.next_frame(),
        Err(FrameError::TooLarge {
            len: 65_537,
            max: 65_536
        })
    );
}

#[test]
fn zero_length_is_refused() {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    d.extend(&[0, 0, 0, 0]);
    assert_eq!(d.next_frame(), Err(FrameError::Empty));
}

#[test]
fn unknown_type_bytes() {
    for b in 0..=255u8 {
        if MessageType::from_u8(b).is_some() {
            continue;
        }
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.extend(&frame_with(b, &[1, 2, 3]));
        let frame = d
            .next_frame()
            .expect("framing does not look at the type")
            .expect("complete");
        assert_eq!(frame.decode(), Err(DecodeError::UnknownType(b)));
        assert_eq!(frame.message_type(), Err(DecodeError::UnknownType(b)));
    }
}

#[test]
fn decode_as_checks_the_type() {
    let bytes = encode(&Ping { nonce: 1 }.into());
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    d.extend(&bytes);
    let frame = d.next_frame().expect("valid").expect("complete");
    assert_eq!(
        frame.decode_as::<SayRef<'_>>(MessageType::Say),
        Err(DecodeError::WrongType {
            expected: MessageType::Say,
            found: MessageType::Ping
        })
    );
}

// ---- body errors ----------------------------------------------------------------------

#[test]
fn every_vector_prefix_is_truncated_and_every_frame_prefix_incomplete() {
    for m in vector_messages() {
        let ty = m.message_type();
        let frame = encode(&m);
        let body = &frame[FRAME_HEADER_LEN + 1..];
        for k in 0..body.len() {
            assert_eq!(
                Message::decode(ty as u8, &body[..k]),
                Err(DecodeError::Truncated { ty }),
                "{ty:?} body prefix {k}"
            );
        }
        for k in 0..frame.len() {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            d.extend(&frame[..k]);
            assert_eq!(d.next_frame(), Ok(None), "{ty:?} frame prefix {k}");
        }
    }
}

#[test]
fn trailing_byte_after_empty_body() {
    assert_eq!(
        Message::decode(MessageType::Exit as u8, &[0]),
        Err(DecodeError::TrailingBytes {
            ty: MessageType::Exit,
            extra: 1
        })
    );
}

#[test]
fn invalid_utf8_is_refused() {
    let ty = MessageType::Joined;
    for bad in [
        &[0xc3, 0x28][..],
        &[0xed, 0xa0, 0x80],
        &[0xff],
        &[0xc0, 0xaf],
    ] {
        let mut body = varint(bad.len() as u64);
        body.extend_from_slice(bad);
        assert_eq!(
            Message::decode(ty as u8, &body),
            Err(DecodeError::InvalidUtf8 { ty }),
            "{bad:02x?}"
        );
    }
    // The borrowed twin refuses it too.
    // Said { context_seq: 5, from: "ok", client_seq: 1, sent_at_us: 2, text: [ff] }
    let body = [vec![5], string("ok"), vec![1, 2], vec![1, 0xff]].concat();
    let frame = Frame {
        ty: MessageType::Said as u8,
        body: body.into(),
    };
    assert_eq!(
        frame.decode_as::<SaidRef<'_>>(MessageType::Said),
        Err(DecodeError::InvalidUtf8 {
            ty: MessageType::Said
        })
    );
}

#[test]
fn invalid_option_tag_is_refused() {
    let ty = MessageType::ActivateFailed;
    for tag in [2u8, 3, 255] {
        let mut body = string("room");
        body.push(24); // code CONTEXT_UNAVAILABLE
        body.push(tag);
        body.extend(string("x"));
        assert!(
            matches!(
                Message::decode(ty as u8, &body),
                Err(DecodeError::Invalid { ty: t, .. }) if t == ty
            ),
            "tag {tag}"
        );
    }
}

#[test]
fn invalid_varint_prefixes_are_refused() {
    let ty = MessageType::AppMessage;
    // op is a u16: the u32/u64/u128 prefixes and 255 are refused...
    for prefix in [252u8, 253, 254, 255] {
        let body = [prefix, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(
            matches!(
                Message::decode(ty as u8, &body),
                Err(DecodeError::Invalid { ty: t, .. }) if t == ty
            ),
            "prefix {prefix}"
        );
    }
    // ...and so are 254 and 255 for a u64.
    for prefix in [254u8, 255] {
        let mut body = vec![prefix];
        body.extend([0; 16]);
        assert!(matches!(
            Message::decode(MessageType::Ping as u8, &body),
            Err(DecodeError::Invalid { .. })
        ));
    }
}

/// The decoder accepts varints longer than needed (bincode does); encoders
/// must still write the shortest form, so re-encoding such a frame changes
/// its bytes. `docs/protocol.md` says so.
#[test]
fn non_minimal_varints_are_accepted() {
    for body in [
        &[251, 5, 0][..],
        &[252, 5, 0, 0, 0],
        &[253, 5, 0, 0, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(
            Message::decode(MessageType::Ping as u8, body),
            Ok(Ping { nonce: 5 }.into())
        );
    }
    assert_eq!(body_of(&Ping { nonce: 5 }.into()), [5]);
}

#[test]
fn varint_boundaries_on_the_wire() {
    let cases: &[(u64, &[u8])] = &[
        (0, &[0]),
        (250, &[250]),
        (251, &[251, 251, 0]),
        (65_535, &[251, 255, 255]),
        (65_536, &[252, 0, 0, 1, 0]),
        (u64::from(u32::MAX), &[252, 255, 255, 255, 255]),
        (1 << 32, &[253, 0, 0, 0, 0, 1, 0, 0, 0]),
    ];
    for &(v, wire) in cases {
        assert_eq!(body_of(&Ping { nonce: v }.into()), wire, "{v}");
    }
    // u8 arrays are raw bytes with no length; u16 is a varint too.
    let hello = body_of(
        &Hello {
            magic: MAGIC,
            min_version: 1,
            max_version: 251,
            client_name: String::new(),
        }
        .into(),
    );
    assert_eq!(hello, [0xfc, b'E', b'L', b'K', b'O', 1, 251, 251, 0, 0]);
}

/// bincode's decode limit counts in-memory sizes (8 per length or u64), not
/// wire bytes; the codec scales its limit so that a valid body at the top of a
/// size class still decodes. Regression: before the fix, any body claiming
/// more than its size class (for example a 2 KB Snapshot of 1000 members)
/// failed as `Truncated`.
#[test]
fn valid_bodies_at_the_top_of_a_size_class_decode() {
    // 1 + 1 + 3 (varint 4089) + 4089 + 1 + 1 = 4096 body bytes, each member
    // an empty string: 1 wire byte, 8 claimed.
    let m: Message = Snapshot {
        context: String::new(),
        app: String::new(),
        members: vec![String::new(); 4089],
        history: Vec::new(),
        state: Vec::new(),
    }
    .into();
    assert_eq!(body_of(&m).len(), 4096);
    assert_eq!(decode_chunks([&encode(&m)[..]]), [m]);

    let m: Message = LoadReport {
        seq: 0,
        loops: vec![
            LoopLoad {
                connections: 0,
                contexts: 0,
                users: 0,
                busy_permille: 0
            };
            16_000
        ],
    }
    .into();
    assert!(body_of(&m).len() <= 65_536);
    assert_eq!(decode_chunks([&encode(&m)[..]]), [m]);

    let m: Message = Said {
        context_seq: 1,
        from: "a".into(),
        client_seq: 1,
        sent_at_us: 1,
        text: "x".repeat(4088),
    }
    .into();
    assert_eq!(body_of(&m).len(), 4096);
    assert_eq!(decode_chunks([&encode(&m)[..]]), [m]);
}

// ---- allocation bounds ---------------------------------------------------------------

/// A 4 KiB frame claiming a 1 GiB string fails at once, allocating nothing
/// near the claim.
#[test]
fn huge_claimed_string_fails_fast_without_allocating() {
    let ty = MessageType::Joined;
    let mut body = varint(1 << 30);
    body.resize(4095, b'a');
    let frame = frame_with(ty as u8, &body);
    assert_eq!(frame.len(), FRAME_HEADER_LEN + 4096);
    let (res, largest) = largest_allocation_during(|| {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_PREAUTH);
        d.extend(&frame);
        d.next_frame()
            .expect("valid framing")
            .expect("complete")
            .decode()
    });
    assert_eq!(res, Err(DecodeError::Truncated { ty }));
    assert!(largest <= 16 * 1024, "largest allocation {largest} bytes");
}

/// A claimed length the size class allows, but the body does not hold, may
/// allocate, but never more than CLAIM_FACTOR times the size class.
#[test]
fn claimed_string_within_the_limit_allocates_at_most_the_limit() {
    let ty = MessageType::Joined;
    let claim = 4096 * elko_protocol::codec::CLAIM_FACTOR as u64 - 8;
    let mut body = varint(claim);
    body.extend_from_slice(b"abc");
    let (res, largest) = largest_allocation_during(|| Message::decode(ty as u8, &body));
    assert_eq!(res, Err(DecodeError::Truncated { ty }));
    assert!(
        largest <= 4096 * elko_protocol::codec::CLAIM_FACTOR,
        "largest allocation {largest} bytes"
    );
}

/// Byte vectors and element vectors claiming 2^40 entries fail without
/// preallocating for the claim (serde's default would allocate 1 MiB).
#[test]
fn huge_claimed_vectors_fail_without_allocating() {
    let huge = varint(1 << 40);
    let mut cases: Vec<(MessageType, Vec<u8>)> = Vec::new();
    // Enter { context, user, token: claims 2^40 bytes }
    cases.push((
        MessageType::Enter,
        [string("room"), string("alice"), huge.clone(), vec![1, 2, 3]].concat(),
    ));
    // Snapshot { context, app, members: claims 2^40 strings }
    cases.push((
        MessageType::Snapshot,
        [string("room"), string("chat"), huge.clone(), string("a")].concat(),
    ));
    // Snapshot { ..., members: [], history: claims 2^40 entries }
    cases.push((
        MessageType::Snapshot,
        [
            string("room"),
            string("chat"),
            vec![0],
            huge.clone(),
            vec![1],
        ]
        .concat(),
    ));
    // LoadReport { seq, loops: claims 2^40 entries }
    cases.push((
        MessageType::LoadReport,
        [vec![1], huge.clone(), vec![0, 0, 0, 0]].concat(),
    ));
    // AppMessage { op, body: claims 2^40 bytes }
    cases.push((
        MessageType::AppMessage,
        [vec![1], huge.clone(), vec![7; 100]].concat(),
    ));
    for (ty, body) in cases {
        let (res, largest) = largest_allocation_during(|| Message::decode(ty as u8, &body));
        assert_eq!(res, Err(DecodeError::Truncated { ty }), "{ty:?}");
        assert!(
            largest <= 8 * 1024,
            "{ty:?}: largest allocation {largest} bytes"
        );
    }
}

// ---- garbage never panics ---------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..300,
    ) {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_PREAUTH);
        'feed: for c in bytes.chunks(chunk) {
            d.extend(c);
            loop {
                match d.next_frame() {
                    Ok(Some(frame)) => {
                        let _ = frame.decode();
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    /// Arbitrary bodies under every known type: never a panic, and whatever
    /// decodes re-encodes to a body that decodes to the same message.
    #[test]
    fn arbitrary_bodies_never_panic(
        ty in prop::sample::select(MessageType::ALL.to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(m) = Message::decode(ty as u8, &body) {
            let again = body_of(&m);
            prop_assert_eq!(Message::decode(ty as u8, &again), Ok(m));
        }
    }

    /// Valid frames with a few bytes changed: the decoder either refuses them
    /// or yields a message that round-trips.
    #[test]
    fn mutated_frames_never_panic(
        m in arb_message(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = body_of(&m);
        if body.is_empty() {
            return Ok(());
        }
        for (i, b) in edits {
            let i = i.index(body.len());
            body[i] = b;
        }
        if let Ok(decoded) = Message::decode(m.message_type() as u8, &body) {
            let again = body_of(&decoded);
            prop_assert_eq!(Message::decode(m.message_type() as u8, &again), Ok(decoded));
        }
    }
}
