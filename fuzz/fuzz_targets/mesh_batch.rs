//! Fuzzes what a peer can send over the mesh: any bytes as a `ForwardBatch`. Decoding and turning
//! each item into a message must never panic, and an accepted envelope must make a valid frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wsroute_proto::v1 as pb;
use wsroute_server::envelope::Envelope;
use wsroute_server::route::Route;
use wsroute_server::route::events::RouteEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = pb::ForwardBatch::decode(data) {
        for item in batch.items {
            if let Some(p) = item.envelope
                && let Ok(env) = Envelope::try_from(p)
            {
                let frame = env.frame();
                assert!(wsroute_server::envelope::is_valid_json(&frame));
            }
        }
    }
    // Route-table entries and events come from Redis, which a peer can write to as well.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RouteEvent::decode(text);
        if let Some((conn, value)) = text.split_once('|') {
            let _ = Route::decode(conn, value);
        }
    }
});
