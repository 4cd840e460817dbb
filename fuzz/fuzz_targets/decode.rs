//! Fuzz the frame splitter and the body decoder together.
//!
//! The first input byte chooses the chunk size (1..=256) in which the rest is
//! fed to a [`FrameDecoder`] limited to 64 KiB, so the decoder's resumption
//! at arbitrary boundaries is fuzzed along with the bodies. Every complete
//! frame is decoded; a message that decodes must re-encode to a frame that
//! decodes to the same message (the decoder accepts non-minimal varints, so
//! the bytes may differ, the message may not).

#![no_main]

use elko_protocol::{FrameDecoder, Message, DEFAULT_MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for piece in rest.chunks(chunk) {
        d.extend(piece);
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(m) = frame.decode() {
                        check_reencoding(&m);
                    }
                }
                Ok(None) => break,
                // Framing errors are fatal for a stream: stop, as a server would.
                Err(_) => return,
            }
        }
    }
});

fn check_reencoding(m: &Message) {
    let bytes = m.to_bytes().expect("a decoded message re-encodes");
    let mut d = FrameDecoder::new(u32::MAX);
    d.extend(&bytes);
    let frame = d
        .next_frame()
        .expect("re-encoded frame splits")
        .expect("re-encoded frame is complete");
    assert_eq!(d.buffered(), 0, "re-encoding produced extra bytes");
    let again = frame.decode().expect("re-encoded frame decodes");
    assert_eq!(&again, m, "re-encoding changed the message");
}
