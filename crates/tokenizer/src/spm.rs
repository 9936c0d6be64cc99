//! SentencePiece-style vocabularies stored in GGUF (`tokenizer.ggml.model = llama`): merge the
//! adjacent pair whose joined text has the highest score until none is in the vocabulary;
//! pieces outside the vocabulary fall back to `<0xXX>` byte tokens.

use crate::bytes::parse_byte_token;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

const TT_CONTROL: i64 = 3;
const TT_USER_DEFINED: i64 = 4;
const TT_UNKNOWN: i64 = 2;

pub struct Spm {
    tokens: Vec<String>,
    scores: Vec<f32>,
    map: HashMap<String, u32>,
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
    /// (text, id, is_control), longest first.
    specials: Vec<(String, u32, bool)>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; ties go to the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

#[derive(Clone)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i64>,
        add_space_prefix: bool,
    ) -> Result<Spm, String> {
        let mut map = HashMap::with_capacity(tokens.len());
        let mut byte_tokens = [None; 256];
        let mut specials = Vec::new();
        let mut unk = None;
        for (i, t) in tokens.iter().enumerate() {
            map.entry(t.clone()).or_insert(i as u32);
            if let Some(b) = parse_byte_token(t) {
                byte_tokens[b as usize] = Some(i as u32);
            }
            match types[i] {
                TT_CONTROL | TT_USER_DEFINED if !t.is_empty() => {
                    specials.push((t.clone(), i as u32, types[i] == TT_CONTROL))
                }
                TT_UNKNOWN => unk = unk.or(Some(i as u32)),
                _ => {}
            }
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(Spm {
            tokens,
            scores,
            map,
            byte_tokens,
            unk,
            add_space_prefix,
            specials,
        })
    }

    pub fn token_text(&self, id: u32) -> &str {
        self.tokens
            .get(id as usize)
            .map(|s| s.as_str())
            .unwrap_or("")
    }

    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        // SentencePiece adds its space prefix to text that starts the input or follows a special token.
        let mut prev_special = true;
        let mut rest = text;
        while !rest.is_empty() {
            let next = self.next_special(rest, parse_special);
            let (plain, tok) = match next {
                Some((pos, len, id)) => (&rest[..pos], Some((len, id, pos))),
                None => (rest, None),
            };
            if !plain.is_empty() {
                let mut s = String::with_capacity(plain.len() + 3);
                if self.add_space_prefix && prev_special {
                    s.push(' ');
                }
                s.push_str(plain);
                self.encode_piece(&s.replace(' ', "\u{2581}"), &mut out);
            }
            match tok {
                Some((len, id, pos)) => {
                    out.push(id);
                    prev_special = true;
                    rest = &rest[pos + len..];
                }
                None => break,
            }
        }
        out
    }

    /// The earliest special token in `s` (longest at a tie): (byte offset, byte length, id).
    fn next_special(&self, s: &str, parse_special: bool) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (t, id, is_control) in &self.specials {
            if *is_control && !parse_special {
                continue;
            }
            if let Some(p) = s.find(t.as_str()) {
                if best.is_none_or(|(bp, bl, _)| p < bp || (p == bp && t.len() > bl)) {
                    best = Some((p, t.len(), *id));
                }
            }
        }
        best
    }

    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
        }
        let n = syms.len();
        for (i, s) in syms.iter_mut().enumerate() {
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut heap = BinaryHeap::new();
        let mut rev_merge: HashMap<(usize, usize), (usize, usize, usize)> = HashMap::new();
        let try_add =
            |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let piece = &text[syms[l].start..syms[r].start + syms[r].len];
                if let Some(&id) = self.map.get(piece) {
                    heap.push(Bigram {
                        score: self.scores[id as usize],
                        left: l,
                        right: r,
                        len: piece.len(),
                    });
                }
            };
        for i in 1..n {
            try_add(&mut heap, &syms, Some(i - 1), Some(i));
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if syms[l].len == 0
                || syms[r].len == 0
                || syms[l].len + syms[r].len != b.len
                || syms[l].next != Some(r)
            {
                continue;
            }
            rev_merge.insert(
                (syms[l].start, b.len),
                (syms[l].start, syms[l].len, syms[r].len),
            );
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            try_add(&mut heap, &syms, syms[l].prev, Some(l));
            try_add(&mut heap, &syms, Some(l), syms[l].next);
        }
        let mut i = if n > 0 { Some(0) } else { None };
        while let Some(k) = i {
            self.resegment(text, syms[k].start, syms[k].len, &rev_merge, out);
            i = syms[k].next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        start: usize,
        len: usize,
        rev: &HashMap<(usize, usize), (usize, usize, usize)>,
        out: &mut Vec<u32>,
    ) {
        if let Some(&id) = self.map.get(&text[start..start + len]) {
            out.push(id);
            return;
        }
        if let Some(&(s, l1, l2)) = rev.get(&(start, len)) {
            self.resegment(text, s, l1, rev, out);
            self.resegment(text, s + l1, l2, rev, out);
            return;
        }
        for &b in &text.as_bytes()[start..start + len] {
            if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                out.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Spm {
        let toks = [
            "<unk>",
            "<s>",
            "</s>",
            "\u{2581}",
            "h",
            "e",
            "l",
            "o",
            "he",
            "ll",
            "hell",
            "hello",
            "\u{2581}hello",
            "<0x21>",
        ];
        let scores = [
            0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -2.0, -1.5, -1.4, -1.0, -0.5, -0.1, 0.0,
        ];
        let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6];
        Spm::new(
            toks.iter().map(|s| s.to_string()).collect(),
            scores.to_vec(),
            types.to_vec(),
            true,
        )
        .unwrap()
    }

    #[test]
    fn merges_by_score_with_space_prefix_and_byte_fallback() {
        let s = vocab();
        assert_eq!(s.encode("hello", false), vec![12]);
        assert_eq!(s.encode("hello!", false), vec![12, 13]);
        // Control tokens are text unless parse_special.
        assert_eq!(s.encode("<s>hello", true), vec![1, 12]);
        assert_ne!(s.encode("<s>hello", false)[0], 1);
    }
}
