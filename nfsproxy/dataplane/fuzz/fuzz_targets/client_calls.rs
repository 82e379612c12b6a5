//! A client's byte stream through record marking, the RPC call header,
//! routing (portmapper answers, refusals), capture's argument decoding, XID
//! admission and conflict holds: what a session does with a client's bytes.
//! Input: one byte of read size, then the stream.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../common/relay.rs"]
mod relay;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let mut relay = relay::Relay::new();
    let _ = relay.from_client(stream, chunk as usize + 1);
});
