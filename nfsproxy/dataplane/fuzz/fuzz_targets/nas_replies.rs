//! The NAS's reply stream through record marking, the RPC reply header,
//! XID matching, capture's result decoding (bindings, records), the record
//! encoding the LOG gets, the verifier rewrite and the FSINFO clamp. The
//! calls the replies answer come first, so the result parsers are reached.
//! Input: one byte of read size, a 2-byte length, the client's calls (framed),
//! then the NAS's stream; the relay's NAS XIDs count from 1.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../common/relay.rs"]
mod relay;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let (calls, replies) = relay::split(rest);
    let mut relay = relay::Relay::new();
    if relay.from_client(calls, calls.len()).is_err() {
        return;
    }
    let _ = relay.from_nas(replies, chunk as usize + 1);
});
