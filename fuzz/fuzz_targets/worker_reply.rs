//! Fuzzes the worker side: every line a worker could write goes through `decode_worker_reply`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precog::protocol::{Framer, decode_worker_reply};

fuzz_target!(|data: &[u8]| {
    let _ = decode_worker_reply(data);

    // And as a stream of lines under the daemon's framing.
    let mut framer = Framer::new(1024);
    framer.push(data);
    while let Some(Ok(line)) = framer.next_line() {
        let _ = decode_worker_reply(&line);
    }
});
