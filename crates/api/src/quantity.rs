//! Resource quantities (`100m`, `1.5Gi`, `1e3`) as upstream parses and prints them
//! (`k8s.io/apimachinery/pkg/api/resource`): exact to the nano, finer values rounded up,
//! printed in the canonical form the API server stores (`0.5` → `500m`, `1.5Gi` →
//! `1536Mi`, `1000` → `1k`).

use std::fmt;

const NANO: i128 = 1_000_000_000;

/// How a quantity is printed: the family of its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, ... (powers of 1024).
    BinarySi,
    /// `n`, `u`, `m`, none, `k`, `M`, ... (powers of 1000).
    DecimalSi,
    /// `e<n>` / `E<n>`.
    DecimalExponent,
}

/// A parsed quantity: its value in nano-units, and how it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// A quantity that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
    #[error("unable to parse quantity's suffix")]
    Suffix,
    #[error("quantity is too large")]
    Overflow,
}

/// (suffix, base, exponent) for the SI suffixes.
const SUFFIXES: &[(&str, u32, i32)] = &[
    ("Ki", 2, 10),
    ("Mi", 2, 20),
    ("Gi", 2, 30),
    ("Ti", 2, 40),
    ("Pi", 2, 50),
    ("Ei", 2, 60),
    ("n", 10, -9),
    ("u", 10, -6),
    ("m", 10, -3),
    ("", 10, 0),
    ("k", 10, 3),
    ("M", 10, 6),
    ("G", 10, 9),
    ("T", 10, 12),
    ("P", 10, 15),
    ("E", 10, 18),
];

fn pow10(e: u32) -> Result<i128, QuantityError> {
    10i128.checked_pow(e).ok_or(QuantityError::Overflow)
}

/// `num * 10^exp` in nanos, rounded up (away from zero) below a nano.
fn scale(num: i128, exp: i32) -> Result<i128, QuantityError> {
    let e = exp + 9;
    if e >= 0 {
        num.checked_mul(pow10(e as u32)?)
            .ok_or(QuantityError::Overflow)
    } else {
        let d = pow10((-e) as u32)?;
        let q = num / d;
        Ok(if num % d != 0 { q + num.signum() } else { q })
    }
}

impl Quantity {
    /// Parses a quantity string.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let s = s.trim();
        let (neg, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(num_end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(QuantityError::Format);
        }
        // The digits as one integer, and the power of ten it must be scaled by.
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| QuantityError::Overflow)?
        };
        let frac_exp = -(frac.len() as i32);
        let (nanos, format) =
            if let Some(&(_, base, exp)) = SUFFIXES.iter().find(|(sfx, _, _)| *sfx == suffix) {
                if base == 2 {
                    let n = scale(mantissa, frac_exp)?;
                    (
                        n.checked_mul(1i128 << exp).ok_or(QuantityError::Overflow)?,
                        Format::BinarySi,
                    )
                } else {
                    (scale(mantissa, frac_exp + exp)?, Format::DecimalSi)
                }
            } else if let Some(e) = suffix.strip_prefix(['e', 'E']) {
                let exp: i32 = e.parse().map_err(|_| QuantityError::Suffix)?;
                if exp.abs() > 60 {
                    return Err(QuantityError::Overflow);
                }
                (scale(mantissa, frac_exp + exp)?, Format::DecimalExponent)
            } else if suffix
                .chars()
                .all(|c| "eEinumkKMGTP+-0123456789".contains(c))
            {
                return Err(QuantityError::Suffix);
            } else {
                return Err(QuantityError::Format);
            };
        Ok(Quantity {
            nanos: if neg { -nanos } else { nanos },
            format,
        })
    }

    /// The value rounded up to a whole unit (`Value()`).
    pub fn value(&self) -> i128 {
        ceil_div(self.nanos, NANO)
    }

    /// The value in thousandths, rounded up (`MilliValue()`, e.g. millicores).
    pub fn milli_value(&self) -> i128 {
        ceil_div(self.nanos, 1_000_000)
    }

    /// The exact value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// How it prints.
    pub fn format(&self) -> Format {
        self.format
    }
}

fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 {
        q + 1
    } else {
        q
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let whole = self.nanos % NANO == 0;
        let binary = self.format == Format::BinarySi
            && whole
            && (self.nanos <= -1024 * NANO || self.nanos >= 1024 * NANO);
        if binary {
            let mut v = self.nanos / NANO;
            let mut e = 0;
            while v % 1024 == 0 && e < 6 {
                v /= 1024;
                e += 1;
            }
            let sfx = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][e];
            return write!(f, "{v}{sfx}");
        }
        // Decimal: an integer mantissa and an exponent that is a multiple of three.
        let (mut v, mut exp) = (self.nanos, -9i32);
        while v % 10 == 0 {
            v /= 10;
            exp += 1;
        }
        while exp.rem_euclid(3) != 0 {
            v *= 10;
            exp -= 1;
        }
        if self.format == Format::DecimalExponent {
            return if exp == 0 {
                write!(f, "{v}")
            } else {
                write!(f, "{v}e{exp}")
            };
        }
        match SUFFIXES
            .iter()
            .find(|(_, base, e)| *base == 10 && *e == exp)
        {
            Some((sfx, _, _)) => write!(f, "{v}{sfx}"),
            None => write!(f, "{v}e{exp}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Quantity::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            ("100m", "100m"),
            ("0.1", "100m"),
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1.5", "1500m"),
            ("1", "1"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1k", "1k"),
            ("2M", "2M"),
            ("0.000000001", "1n"),
            ("0.0000000001", "1n"),
            ("1Gi", "1Gi"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("0.5Ki", "512"),
            ("100Ki", "100Ki"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("1e3", "1e3"),
            ("1E3", "1e3"),
            ("1.5e3", "1500"),
            ("-1", "-1"),
            ("-100m", "-100m"),
            ("0", "0"),
            ("0Mi", "0"),
            ("+5", "5"),
            ("05", "5"),
            (".5", "500m"),
        ] {
            assert_eq!(canon(input), want, "{input}");
        }
    }

    #[test]
    fn values_round_up() {
        let q = Quantity::parse("100m").unwrap();
        assert_eq!((q.milli_value(), q.value()), (100, 1));
        assert_eq!(Quantity::parse("1.5").unwrap().value(), 2);
        assert_eq!(Quantity::parse("1Ki").unwrap().value(), 1024);
        assert_eq!(Quantity::parse("2").unwrap().milli_value(), 2000);
        assert_eq!(Quantity::parse("0.1m").unwrap().milli_value(), 1);
        assert_eq!(Quantity::parse("64Mi").unwrap().value(), 64 << 20);
    }

    #[test]
    fn bad_quantities() {
        for bad in ["", "abc", "1.2.3", ".", "Ki", "1 Gi x", "1Qi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(Quantity::parse("1Ki2"), Err(QuantityError::Suffix));
        assert_eq!(Quantity::parse("1x"), Err(QuantityError::Format));
    }
}
