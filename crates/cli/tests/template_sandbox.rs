//! The server's chat-template sandbox with the real binary as its helper: a template that
//! amplifies a string past the memory cap loses only the helper (the render is an error within
//! seconds), and renders before and after equal in-process rendering.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use suanli_server::sandbox::TemplateSandbox;
use suanli_tokenizer::{ChatMessage, ChatTemplate, RenderTemplate, TemplateError};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_suanli"))
}

#[cfg(unix)]
#[test]
fn amplifying_templates_are_stopped_and_normal_ones_render_as_in_process() {
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "你好 <|im_start|>"),
    ];
    for bomb in [
        "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(l=[1, 2, 3, 4]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
    ] {
        let sb = TemplateSandbox::new(exe(), bomb, "", "");
        let t0 = Instant::now();
        match sb.render(&msgs, true) {
            Err(TemplateError::Render(m)) => assert!(m.contains("sandbox"), "{m}"),
            other => panic!("{bomb}: {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny/qwen2/chat_template.jinja"),
    )
    .unwrap();
    let local = ChatTemplate::new(&src, "", "<|endoftext|>").unwrap();
    let sb = TemplateSandbox::new(exe(), &src, "", "<|endoftext|>");
    for agp in [true, false, true] {
        assert_eq!(
            sb.render(&msgs, agp).unwrap(),
            local.render(&msgs, agp).unwrap()
        );
    }
    // raise_exception keeps its message; a template that does not compile says so.
    let sb = TemplateSandbox::new(
        exe(),
        "{{ raise_exception('roles must alternate') }}",
        "",
        "",
    );
    assert!(
        matches!(sb.render(&msgs, true), Err(TemplateError::Raised(m)) if m.contains("roles must alternate"))
    );
    let sb = TemplateSandbox::new(exe(), "{% for %}", "", "");
    assert!(
        matches!(sb.render(&msgs, true), Err(TemplateError::Render(m)) if m.contains("compile"))
    );
}
