//! Fuzzes the socket side: arbitrary bytes, split into reads at fuzzer-chosen points, go
//! through the `Framer` and every line through `decode_request`, as a connection would.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precog::protocol::{Framer, decode_request, encode_error, encode_ok};

/// Small, so that the fuzzer reaches the too-large path often.
const MAX_LINE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so lines arrive split across reads.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut framer = Framer::new(MAX_LINE);
    for read in stream.chunks(step) {
        framer.push(read);
        while let Some(line) = framer.next_line() {
            let Ok(line) = line else {
                // The connection closes here; nothing more is read.
                assert!(framer.pending() <= MAX_LINE + step);
                return;
            };
            assert!(line.len() <= MAX_LINE);
            match decode_request(&line) {
                Ok(req) => {
                    let reply = encode_ok(&req.id, serde_json::Map::new());
                    assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
                }
                Err((id, e)) => {
                    assert!(!id.is_array() && !id.is_object());
                    let reply = encode_error(&id, &e);
                    assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
                }
            }
        }
        // Between reads the framer holds at most one unfinished line within the limit.
        assert!(framer.pending() <= MAX_LINE);
    }
});
