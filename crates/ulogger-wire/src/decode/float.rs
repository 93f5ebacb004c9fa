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
    let _ = write!(body, "{x:.precision$}");
    if alt && precision == 0 {
        body.push(b'.');
    }
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
