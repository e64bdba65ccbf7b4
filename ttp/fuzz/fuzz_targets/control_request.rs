//! Any request line from any caller: read without a panic, and never granted beyond the
//! caller's rights (a stranger gets nothing; the ttp group only reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttp::control::{proto::Request, read_request, Caller};

fuzz_target!(|b: &[u8]| {
    let Some((&who, line)) = b.split_first() else { return };
    let caller = match who % 3 {
        0 => Caller::Root,
        1 => Caller::Reader,
        _ => Caller::Stranger,
    };
    let Ok(req) = read_request(line, caller) else { return };
    match (caller, &req) {
        (Caller::Stranger, _) => panic!("a stranger's request was taken: {req:?}"),
        (Caller::Reader, Request::Status | Request::Streams { .. }) => {}
        (Caller::Reader, Request::Check { urls }) => assert!(urls.is_empty(), "the ttp group chose a URL"),
        (Caller::Reader, _) => panic!("the ttp group was granted {req:?}"),
        (Caller::Root, _) => {}
    }
    // What was taken reads back the same once written out again.
    let text = serde_json::to_vec(&req).expect("a request serializes");
    assert_eq!(read_request(&text, Caller::Root).ok().as_ref(), Some(&req));
});
