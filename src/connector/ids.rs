//! Instance and message ids, shaped as Microbus makes them.

use rand::Rng;

/// 10 characters of `[0-9a-v]`, like Microbus's instance ids.
pub fn new_instance_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    random_text::<10>(ALPHABET)
}

/// 8 characters of `[0-9A-Za-z]`, like Microbus's message ids.
pub fn new_msg_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    random_text::<8>(ALPHABET)
}

/// `N` characters drawn uniformly from `alphabet` (ASCII), written into a buffer first: a
/// `String` collected from `char`s grew and re-encoded each one (one message id per call).
fn random_text<const N: usize>(alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    let mut text = [0u8; N];
    for b in &mut text {
        *b = alphabet[rng.random_range(0..alphabet.len())];
    }
    std::str::from_utf8(&text)
        .expect("an ASCII alphabet")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_microbus_shape() {
        let id = new_instance_id();
        assert_eq!(id.len(), 10);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)));
        let m = new_msg_id();
        assert_eq!(m.len(), 8);
        assert!(m.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn every_character_of_the_alphabets_is_drawn() {
        let mut instance = std::collections::HashSet::new();
        let mut msg = std::collections::HashSet::new();
        for _ in 0..2000 {
            instance.extend(new_instance_id().bytes());
            msg.extend(new_msg_id().bytes());
        }
        assert_eq!(instance.len(), 32);
        assert_eq!(msg.len(), 62);
    }
}
