//! Fuzzes what a peer can send over the mesh: any bytes as a `ForwardBatch`. Decoding and turning
//! each item into a message must never panic, and an accepted envelope must make a valid frame
//! (a passed-through frame is checked to be exactly a `message` frame for the item's id, so an
//! accepted one is valid JSON of type `message` with no key twice).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wsroute_proto::v1 as pb;
use wsroute_server::envelope::Envelope;
use wsroute_server::mesh::wire;
use wsroute_server::route::Route;
use wsroute_server::route::events::RouteEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = pb::ForwardBatch::decode(data) {
        for mut item in batch.items {
            // An envelope from an older sender must make a valid JSON frame.
            if item.frame.is_empty()
                && let Some(p) = item.envelope.clone()
                && let Ok(env) = Envelope::try_from(p)
            {
                assert!(wsroute_server::envelope::is_valid_json(&env.frame()));
            }
            // Whatever the item, rebuilding an envelope for an older peer and turning it into a
            // message must not panic.
            let _ = wire::legacy_item(item.clone());
            let notice = item.notice;
            if let Ok(msg) = wire::from_item(&mut item)
                && !notice
            {
                assert!(wsroute_server::envelope::is_valid_json(&msg.frame));
                let head = format!(r#"{{"type":"message","id":"{}","#, msg.id.as_str());
                assert!(msg.frame.starts_with(&head), "{}", &*msg.frame);
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
