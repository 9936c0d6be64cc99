//! What a person types into `suanli chat`: messages (one line, a bracketed paste of several,
//! or `"""` … `"""` as in ollama) and slash commands, read with line editing and history on a
//! terminal, plainly from a pipe.

use rustyline::error::ReadlineError;
use std::io::BufRead;
use std::path::PathBuf;

/// One thing the user entered.
#[derive(Debug, PartialEq)]
pub enum Input {
    Message(String),
    Command(Command),
    /// Ctrl-C at the prompt: nothing to stop there.
    Interrupted,
    /// Ctrl-D, or the end of piped input.
    End,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Exit,
    /// Forget the conversation (the system message stays).
    Reset,
    /// Show (`None`) or set the system message; setting starts the conversation over.
    System(Option<String>),
    /// `/set KEY VALUE` (sampling and answer length); `/set` alone shows them.
    Set(Option<(String, String)>),
    Save(PathBuf),
    Load(PathBuf),
    Unknown(String),
}

pub const HELP: &str = "\
/help                 this list
/system [TEXT]        show or set the system message (setting it starts over)
/set [KEY VALUE]      show or set temperature, top_k, top_p, min_p, repeat_penalty, seed,
                      max_tokens (e.g. /set temperature 0.2)
/save FILE            write the conversation to FILE (JSON)
/load FILE            continue a conversation saved with /save
/reset                forget the conversation (the system message stays)
/exit                 quit (also Ctrl-D)
\"\"\"                   start and end a message of several lines (a paste works too)
//text                a message that starts with /
Ctrl-C stops an answer and keeps the conversation.";

/// A complete line as the user meant it: a command, or a message.
pub fn parse(line: &str) -> Option<Input> {
    let t = line.trim();
    if t.is_empty() {
        return None;
    }
    if let Some(rest) = t.strip_prefix("//") {
        return Some(Input::Message(format!("/{rest}")));
    }
    let Some(cmd) = t.strip_prefix('/') else {
        return Some(Input::Message(line.trim_end().to_string()));
    };
    let (name, arg) = match cmd.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (cmd, ""),
    };
    let arg_opt = (!arg.is_empty()).then(|| arg.to_string());
    let c = match name {
        "help" | "?" => Command::Help,
        "exit" | "quit" | "bye" => Command::Exit,
        "reset" | "clear" => Command::Reset,
        "system" => Command::System(arg_opt),
        "set" => match arg.split_once(char::is_whitespace) {
            Some((k, v)) => Command::Set(Some((k.to_string(), v.trim().to_string()))),
            None if arg.is_empty() => Command::Set(None),
            None => Command::Unknown(format!("/set {arg} needs a value, e.g. /set {arg} 0.5")),
        },
        "save" | "load" if arg.is_empty() => Command::Unknown(format!("/{name} needs a file name")),
        "save" => Command::Save(arg.into()),
        "load" => Command::Load(arg.into()),
        other => Command::Unknown(format!("unknown command /{other}; /help lists them")),
    };
    Some(Input::Command(c))
}

/// Where lines come from.
pub enum Reader {
    /// A terminal: line editing, history, bracketed paste.
    Editor(Box<rustyline::DefaultEditor>, Option<PathBuf>),
    /// A pipe or file: one line at a time.
    Plain(std::io::StdinLock<'static>),
}

impl Reader {
    /// Line editing on a terminal (history kept in `history`), plain lines otherwise.
    pub fn new(history: Option<PathBuf>) -> Reader {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() {
            let cfg = rustyline::Config::builder()
                .auto_add_history(false)
                .bracketed_paste(true)
                .max_history_size(1000)
                .map(|b| b.build());
            if let Ok(mut ed) = cfg.and_then(rustyline::DefaultEditor::with_config) {
                if let Some(h) = &history {
                    let _ = ed.load_history(h);
                }
                return Reader::Editor(Box::new(ed), history);
            }
        }
        Reader::Plain(std::io::stdin().lock())
    }

    /// One raw line (a bracketed paste arrives whole, newlines kept).
    fn line(&mut self, prompt: &str) -> std::io::Result<Option<String>> {
        match self {
            Reader::Editor(ed, _) => match ed.readline(prompt) {
                Ok(l) => Ok(Some(l)),
                Err(ReadlineError::Interrupted) => Err(std::io::ErrorKind::Interrupted.into()),
                Err(ReadlineError::Eof) => Ok(None),
                Err(ReadlineError::Io(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            },
            Reader::Plain(stdin) => {
                let mut l = String::new();
                if stdin.read_line(&mut l)? == 0 {
                    return Ok(None);
                }
                Ok(Some(l.trim_end_matches(['\n', '\r']).to_string()))
            }
        }
    }

    /// The next input: a message (`"""` blocks joined), a command, Ctrl-C or the end.
    pub fn next(&mut self) -> std::io::Result<Input> {
        loop {
            let line = match self.line("> ") {
                Ok(Some(l)) => l,
                Ok(None) => return Ok(Input::End),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    return Ok(Input::Interrupted)
                }
                Err(e) => return Err(e),
            };
            let input = match line.trim_start().strip_prefix("\"\"\"") {
                Some(first) => self.block(first)?,
                None => parse(&line),
            };
            if let Some(i) = input {
                if let Reader::Editor(ed, _) = self {
                    // A block is recalled whole; a line as typed.
                    let _ = ed.add_history_entry(match &i {
                        Input::Message(m) => m.as_str(),
                        _ => line.as_str(),
                    });
                }
                return Ok(i);
            }
        }
    }

    /// The rest of a `"""` message, up to the closing `"""`.
    fn block(&mut self, first: &str) -> std::io::Result<Option<Input>> {
        let mut text = String::new();
        let mut cur = first.to_string();
        loop {
            if let Some((body, _)) = cur.split_once("\"\"\"") {
                text.push_str(body);
                break;
            }
            text.push_str(&cur);
            text.push('\n');
            match self.line("... ") {
                Ok(Some(l)) => cur = l,
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let text = text.trim_matches('\n').to_string();
        Ok((!text.trim().is_empty()).then_some(Input::Message(text)))
    }

    /// Write the history back (terminal only).
    pub fn save_history(&mut self) {
        if let Reader::Editor(ed, Some(h)) = self {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = ed.save_history(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_or_commands() {
        assert_eq!(parse("  "), None);
        assert_eq!(parse("hello"), Some(Input::Message("hello".into())));
        assert_eq!(
            parse("//etc/passwd?"),
            Some(Input::Message("/etc/passwd?".into()))
        );
        assert_eq!(parse("/help"), Some(Input::Command(Command::Help)));
        assert_eq!(parse("/bye"), Some(Input::Command(Command::Exit)));
        assert_eq!(
            parse("/set temperature 0.2"),
            Some(Input::Command(Command::Set(Some((
                "temperature".into(),
                "0.2".into()
            )))))
        );
        assert_eq!(parse("/set"), Some(Input::Command(Command::Set(None))));
        assert_eq!(
            parse("/system You are terse."),
            Some(Input::Command(Command::System(Some(
                "You are terse.".into()
            ))))
        );
        assert_eq!(
            parse("/save a b.json"),
            Some(Input::Command(Command::Save("a b.json".into())))
        );
        assert!(
            matches!(parse("/save"), Some(Input::Command(Command::Unknown(m))) if m.contains("file name"))
        );
        assert!(
            matches!(parse("/frobnicate"), Some(Input::Command(Command::Unknown(m))) if m.contains("/help"))
        );
    }
}
