//! Arbitrary bytes as a control-socket request line, through the function
//! the daemon uses (`vswitch::daemon::parse_request`, no socket): it must
//! never panic; a line it refuses gets an error reply that encodes; a line
//! it accepts gives a request that encodes and reads back equal (what the
//! daemon acts on is what a client can say).
//!
//! Run: `cd vswitch/fuzz && python3 make_seeds.py && cargo fuzz run -s none control` (see README).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch::daemon::parse_request;
use vswitch_cni::proto::Reply;

fuzz_target!(|line: &[u8]| {
    match parse_request(line) {
        Ok(request) => {
            let text = serde_json::to_string(&request).expect("an accepted request encodes");
            let again = parse_request(text.as_bytes())
                .unwrap_or_else(|e| panic!("{text} does not read back: {e:?}"));
            assert_eq!(again, request, "{text}");
        }
        Err(e) => {
            assert!(!e.details.is_empty(), "a refusal says why");
            serde_json::to_string(&Reply::Error(e)).expect("the error reply encodes");
        }
    }
});
