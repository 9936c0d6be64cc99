//! GPT-2 byte-level alphabet: every byte maps to a printable character in vocab strings.

/// `byte → char` as in GPT-2's `bytes_to_unicode`.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1 range")
        } else {
            let c = char::from_u32(256 + n).expect("small code point");
            n += 1;
            c
        };
    }
    table
}

/// The bytes a byte-level vocab string stands for; `None` if it has a char outside the alphabet.
pub fn decode_byte_level(
    s: &str,
    inverse: &std::collections::HashMap<char, u8>,
) -> Option<Vec<u8>> {
    s.chars().map(|c| inverse.get(&c).copied()).collect()
}

pub fn inverse_table() -> std::collections::HashMap<char, u8> {
    byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// `<0xAB>` → 0xAB (SentencePiece byte-fallback tokens).
pub fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let t = byte_to_char();
        let inv = inverse_table();
        assert_eq!(inv.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(decode_byte_level("Ġhi", &inv).unwrap(), b" hi");
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0x1FF>"), None);
        assert_eq!(parse_byte_token("<0x-1>"), None);
    }
}
