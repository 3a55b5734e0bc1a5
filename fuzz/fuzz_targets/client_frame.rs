//! Fuzzes what a client can send: any bytes as a text frame. Parsing must never panic, and a
//! refused frame must always encode into a valid `error` frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsroute_server::ws::frame::{self, ClientFrame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match frame::parse(text) {
        Ok(ClientFrame::Send(send)) => {
            // The body is passed through verbatim: it must be valid JSON.
            assert!(serde_json_valid(send.body.get()));
        }
        Ok(_) => {}
        Err(e) => {
            let encoded = frame::error(&e);
            assert!(serde_json_valid(&encoded));
        }
    }
});

fn serde_json_valid(s: &str) -> bool {
    wsroute_server::envelope::is_valid_json(s)
}
