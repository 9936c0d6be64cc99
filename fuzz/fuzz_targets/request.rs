//! Any bytes as a chat or completions request body: parsing and validation give values or a
//! 400 naming what is wrong — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_server::api::chat::messages;
use suanli_server::api::params::{gen_params, Body};

fuzz_target!(|data: &[u8]| {
    let Ok(b) = Body::parse(data) else { return };
    if let Err(e) = gen_params(&b, 1000, 4096) {
        assert_eq!(e.status, 400);
        assert!(e.param.is_some(), "{}", e.message);
    }
    if let Err(e) = messages(&b) {
        assert_eq!(e.status, 400);
    }
});
