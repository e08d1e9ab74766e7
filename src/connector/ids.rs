//! Instance and message ids, shaped as Microbus makes them.

use rand::Rng;

/// 10 characters of `[0-9a-v]`, like Microbus's instance ids.
pub fn new_instance_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// 8 characters of `[0-9A-Za-z]`, like Microbus's message ids.
pub fn new_msg_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
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
}
