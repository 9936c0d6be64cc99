//! Any bytes as a chat or completions request body: parsing and validation (sampling fields,
//! messages with tool calls, structured-output fields, tools) give values or a 400 naming what
//! is wrong — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_server::api::chat::messages;
use suanli_constrain::tools::{parse_tool_choice, parse_tools};
use suanli_server::api::params::{gen_params, Body};
use suanli_server::api::structured;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = Body::parse(data) else { return };
    if let Err(e) = gen_params(&b, 1000, 4096) {
        assert_eq!(e.status, 400);
        assert!(e.param.is_some(), "{}", e.message);
    }
    if let Err(e) = messages(&b) {
        assert_eq!(e.status, 400);
    }
    if let Err(e) = structured::asked(&b) {
        assert_eq!(e.status, 400);
        assert!(e.param.is_some(), "{}", e.message);
    }
    if let Some(v) = b.get("tools") {
        if let Ok(tools) = parse_tools(v) {
            let _ = parse_tool_choice(b.get("tool_choice"), &tools);
        }
    }
});
