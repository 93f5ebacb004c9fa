//! `%f %e %g` (and `%F %E %G`) as glibc prints them.
//!
//! Rust's `{:.N}` and `{:.Ne}` are exact and round half to even on the
//! exact binary value, as glibc does in its default rounding mode; only
//! the C forms are built here: the exponent's sign and two digits
//! (`e+05`), `%g`'s choice of style and its trailing-zero removal, `#`,
//! and `inf`/`nan`.

use std::io::Write;

use super::printf::{pad, Spec};

/// Default precision of the floating conversions.
const DEFAULT_PRECISION: usize = 6;

pub(crate) fn format(out: &mut Vec<u8>, spec: &Spec, x: f64) {
    let upper = spec.conv.is_ascii_uppercase();
    let sign: &[u8] = if x.is_sign_negative() {
        b"-"
    } else if spec.plus {
        b"+"
    } else if spec.space {
        b" "
    } else {
        b""
    };
    if !x.is_finite() {
        let body: &[u8] = match (x.is_nan(), upper) {
            (true, false) => b"nan",
            (true, true) => b"NAN",
            (false, false) => b"inf",
            (false, true) => b"INF",
        };
        pad(out, sign, body, spec, false);
        return;
    }
    let x = x.abs();
    let precision = spec.precision().unwrap_or(DEFAULT_PRECISION);
    // Written in place, then padded: no buffer of its own.
    let start = out.len();
    out.extend_from_slice(sign);
    match spec.conv.to_ascii_lowercase() {
        b'f' => fixed(out, x, precision, spec.alt),
        b'e' => {
            exponent(out, x, precision, spec.alt, upper);
        }
        _ => general(out, x, precision, spec.alt, upper),
    }
    let len = out.len() - start;
    let fill = spec.width().saturating_sub(len);
    if fill == 0 {
        return;
    }
    if spec.left {
        out.resize(out.len() + fill, b' ');
    } else {
        let (at, byte) = if spec.zero {
            (start + sign.len(), b'0')
        } else {
            (start, b' ')
        };
        out.splice(at..at, std::iter::repeat_n(byte, fill));
    }
}

fn fixed(body: &mut Vec<u8>, x: f64, precision: usize, alt: bool) {
    if !exact_fixed(body, x, precision) {
        let _ = write!(body, "{x:.precision$}");
    }
    if alt && precision == 0 {
        body.push(b'.');
    }
}

/// Powers of ten that fit a `u64`.
const POW10: [u64; 20] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
    1_000_000_000_000,
    10_000_000_000_000,
    100_000_000_000_000,
    1_000_000_000_000_000,
    10_000_000_000_000_000,
    100_000_000_000_000_000,
    1_000_000_000_000_000_000,
    10_000_000_000_000_000_000,
];

/// `x` (finite, not negative) with `precision` decimals as `{:.N}` writes
/// it, rounded half to even on its exact binary value, by integer
/// arithmetic: the common `%.3f` of a sensor reading without `core::fmt`'s
/// exact (bignum) conversion. `false`, with nothing written, when the
/// scaled value does not fit 64 bits (then `core::fmt` does it).
fn exact_fixed(body: &mut Vec<u8>, x: f64, precision: usize) -> bool {
    let Some(&scale) = POW10.get(precision) else {
        return false;
    };
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    // x = m * 2^e exactly.
    let (m, e) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | 1 << 52, biased - 1075)
    };
    let scaled: u128 = if m == 0 {
        0
    } else if e >= 0 {
        if e > 10 {
            return false;
        }
        (u128::from(m) << e) * u128::from(scale)
    } else {
        let k = e.unsigned_abs();
        // m * 10^N < 2^117: a larger shift leaves at most a rounding.
        if k > 116 {
            return false;
        }
        let exact = u128::from(m) * u128::from(scale);
        let q = exact >> k;
        let rest = exact & ((1u128 << k) - 1);
        let half = 1u128 << (k - 1);
        if rest > half || (rest == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    let Ok(mut n) = u64::try_from(scaled) else {
        return false;
    };
    let mut digits = [b'0'; 24];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // At least one digit before the point (the array starts as zeros).
    at = at.min(digits.len() - precision - 1);
    let all = digits.get(at..).unwrap_or_default();
    let (whole, decimals) = all.split_at(all.len() - precision);
    body.extend_from_slice(whole);
    if precision > 0 {
        body.push(b'.');
        body.extend_from_slice(decimals);
    }
    true
}

/// `d.ddde±XX`; returns the decimal exponent.
fn exponent(body: &mut Vec<u8>, x: f64, precision: usize, alt: bool, upper: bool) -> i32 {
    let start = body.len();
    let _ = write!(body, "{x:.precision$e}");
    let e_at = body
        .get(start..)
        .unwrap_or_default()
        .iter()
        .position(|&b| b == b'e')
        .map_or(body.len(), |p| start + p);
    let exp: i32 = std::str::from_utf8(body.get(e_at + 1..).unwrap_or_default())
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    body.truncate(e_at);
    if alt && precision == 0 {
        body.push(b'.');
    }
    body.push(if upper { b'E' } else { b'e' });
    body.push(if exp < 0 { b'-' } else { b'+' });
    let magnitude = exp.unsigned_abs();
    if magnitude < 10 {
        body.push(b'0');
    }
    let _ = write!(body, "{magnitude}");
    exp
}

/// `%g`: precision P (0 means 1) significant digits; the `e` style when
/// the exponent X after rounding is below -4 or at least P, else `f` with
/// P-1-X decimals; then, without `#`, no trailing zeros and no lone point.
fn general(body: &mut Vec<u8>, x: f64, precision: usize, alt: bool, upper: bool) {
    let p = precision.max(1);
    let start = body.len();
    let exp = i64::from(exponent(body, x, p - 1, alt, upper));
    let p_i = i64::try_from(p).unwrap_or(i64::MAX);
    if exp < p_i && exp >= -4 {
        body.truncate(start);
        let decimals = usize::try_from(p_i - 1 - exp).unwrap_or(0);
        fixed(body, x, decimals, alt);
        if !alt {
            strip_zeros(body, start);
        }
    } else if !alt {
        let e_at = body
            .get(start..)
            .unwrap_or_default()
            .iter()
            .position(|&b| b == b'e' || b == b'E')
            .map_or(body.len(), |p| start + p);
        let tail = body.split_off(e_at);
        strip_zeros(body, start);
        body.extend_from_slice(&tail);
    }
}

/// Removes trailing zeros after a decimal point, then the point itself.
fn strip_zeros(digits: &mut Vec<u8>, start: usize) {
    if !digits.get(start..).unwrap_or_default().contains(&b'.') {
        return;
    }
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.last() == Some(&b'.') {
        digits.pop();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::exact_fixed;

    fn check(x: f64, precision: usize) -> Result<(), TestCaseError> {
        let mut fast = Vec::new();
        if exact_fixed(&mut fast, x, precision) {
            let exact = format!("{x:.precision$}");
            prop_assert_eq!(
                String::from_utf8_lossy(&fast),
                exact,
                "{:e} .{}",
                x,
                precision
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// The integer path writes what `core::fmt`'s exact conversion
        /// writes: any double, and halves, which must round to even.
        #[test]
        fn exact_fixed_is_core_fmt(bits in any::<u64>(), k in 0u64..1_000_000,
                                   shift in 0u32..30, precision in 0usize..20) {
            let x = f64::from_bits(bits).abs();
            if x.is_finite() {
                check(x, precision)?;
            }
            // k / 2^shift: exact binary fractions, ties at every precision.
            check(k as f64 / f64::from(1u32 << shift), precision)?;
            check(k as f64 * 0.125 + 0.0005, precision)?;
        }
    }

    #[test]
    fn exact_fixed_takes_the_common_cases() {
        for (x, p, text) in [
            (0.0, 3, "0.000"),
            (0.125, 2, "0.12"),
            (0.375, 2, "0.38"),
            (2.5, 0, "2"),
            (3.5, 0, "4"),
            (1234.5678, 3, "1234.568"),
            (5e-324, 3, "0.000"),
        ] {
            let mut out = Vec::new();
            if exact_fixed(&mut out, x, p) {
                assert_eq!(out, text.as_bytes(), "{x} .{p}");
            } else {
                assert_eq!(x, 5e-324, "{x} .{p} should take the integer path");
            }
        }
    }
}
