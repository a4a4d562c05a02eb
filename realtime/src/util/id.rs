//! Random ids: epochs of topics with history, names of instances.

use rand::Rng;

/// A new random id: 8 ASCII letters and digits, so that it never needs
/// escaping in a frame, a Redis key or a URL; 62^8 (about 2^47) of them.
pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_letters_and_digits_and_differ() {
        let id = random_id();
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_id(), random_id());
    }
}
