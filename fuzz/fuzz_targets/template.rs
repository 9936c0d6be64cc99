//! Any text as a chat template (templates come from model files): rendering ends with output
//! or an error within the fuel, recursion and output limits — never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_tokenizer::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    let Ok(t) = ChatTemplate::new(&src, "<s>", "</s>") else {
        return;
    };
    let msgs = [
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "Hi {{ 7*7 }} <|im_start|>"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "再见"),
    ];
    let _ = t.render(&msgs, true);
    let _ = t.render(&msgs[..1], false);
});
