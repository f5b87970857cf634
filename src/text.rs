//! Readable numbers and bounded echoes of user input, for error messages and `Display` impls
//! (a leaf module).

use std::fmt;

/// An `f64` printed readably: plainly between `1e-4` and `1e7` (and 0), in exponent form
/// otherwise (`1e-320`, not 320 zeros); the shortest digits that round-trip in both cases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let a = v.abs();
        if !v.is_finite() || a == 0.0 || (1e-4..1e7).contains(&a) {
            write!(f, "{v}")
        } else {
            write!(f, "{v:e}")
        }
    }
}

/// The most characters of user input an error message echoes.
pub(crate) const ECHO: usize = 80;

/// `s` cut to at most `max` characters (on a character boundary), with `…` and the number of
/// characters left out when it was longer.
pub(crate) fn short(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}… ({} more characters)", &s[..i], s[i..].chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(Num(1e-320).to_string(), "1e-320");
        assert_eq!(Num(0.5).to_string(), "0.5");
        assert_eq!(Num(-2.25e9).to_string(), "-2.25e9");
        assert_eq!(Num(999.0).to_string(), "999");
        assert_eq!(Num(f64::NAN).to_string(), "NaN");
        assert_eq!(Num(0.0).to_string(), "0");
        assert_eq!(Num(1.8446744073709552e19).to_string(), "1.8446744073709552e19");
    }

    #[test]
    fn echoes_are_bounded() {
        assert_eq!(short("abc", 80), "abc");
        let long = "é".repeat(1000);
        let s = short(&long, 80);
        assert!(s.starts_with(&"é".repeat(80)) && s.ends_with("(920 more characters)"));
    }
}
