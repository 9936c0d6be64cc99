//! Streaming detokenization: emits text only once it is complete UTF-8, so a character split
//! across tokens is never printed broken.

use crate::Tokenizer;

#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// A decoder that continues after `before` (say, a prompt given as token ids): if `before`
    /// ends inside a multi-byte character, those bytes are held (not emitted) so that the
    /// first new token completing the character yields it whole instead of U+FFFD.
    pub fn continuing(before: &[u8]) -> StreamDecoder {
        let n = before.len();
        let mut pending = Vec::new();
        // The last lead byte among the final three, if its character is still incomplete.
        for i in (n.saturating_sub(3)..n).rev() {
            let b = before[i];
            if b < 0x80 {
                break;
            }
            if b >= 0xC0 {
                let len = if b >= 0xF0 {
                    4
                } else if b >= 0xE0 {
                    3
                } else {
                    2
                };
                if n - i < len {
                    pending = before[i..].to_vec();
                }
                break;
            }
        }
        StreamDecoder { pending }
    }

    /// Add a token; returns the text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id));
        self.take_valid()
    }

    fn take_valid(&mut self) -> String {
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_owned();
                self.pending.clear();
                s
            }
            Err(e) => {
                let good = e.valid_up_to();
                // An invalid sequence (not just an unfinished one) is flushed with replacement.
                let cut = match e.error_len() {
                    None => good,
                    Some(bad) => good + bad,
                };
                let out = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
                self.pending.drain(..cut);
                if e.error_len().is_some() {
                    return out + &self.take_valid();
                }
                out
            }
        }
    }

    /// Whatever is left at the end (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuing_holds_only_an_unfinished_character() {
        let zh = "好".as_bytes(); // e5 a5 bd
        assert_eq!(
            StreamDecoder::continuing(&zh[..2]).pending,
            zh[..2].to_vec()
        );
        assert_eq!(
            StreamDecoder::continuing(&[b'a', zh[0]]).pending,
            vec![zh[0]]
        );
        assert!(StreamDecoder::continuing(zh).pending.is_empty());
        assert!(StreamDecoder::continuing(b"abc").pending.is_empty());
        assert!(StreamDecoder::continuing(b"").pending.is_empty());
        let emoji = "😀".as_bytes();
        assert_eq!(
            StreamDecoder::continuing(&emoji[..3]).pending,
            emoji[..3].to_vec()
        );
        assert!(StreamDecoder::continuing(&emoji[1..]).pending.is_empty());
    }
}
