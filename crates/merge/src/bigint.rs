//! A minimal unsigned big integer (base 10^9 limbs, least significant first) for numeric sums.
//!
//! Only what exact numeric merging needs: add, subtract, scale by powers of ten, divide by a
//! row count, compare and print. Base 10^9 keeps decimal printing and parsing trivial.

use std::cmp::Ordering;

const BASE: u64 = 1_000_000_000;

/// Unsigned integer (public only so `Numeric::Finite` can hold it; not nameable outside); `limbs` has no most-significant zero limbs (zero is the empty vector).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BigUint {
    limbs: Vec<u32>,
}

impl BigUint {
    pub(crate) fn from_u128(mut v: u128) -> BigUint {
        let mut limbs = Vec::new();
        while v > 0 {
            limbs.push((v % u128::from(BASE)) as u32);
            v /= u128::from(BASE);
        }
        BigUint { limbs }
    }

    /// Parses ASCII decimal digits (the caller has checked they are all digits).
    pub(crate) fn from_ascii_digits(digits: &[u8]) -> BigUint {
        let mut limbs = Vec::with_capacity(digits.len() / 9 + 1);
        let mut end = digits.len();
        while end > 0 {
            let start = end.saturating_sub(9);
            let limb = digits[start..end]
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
            limbs.push(limb);
            end = start;
        }
        let mut n = BigUint { limbs };
        n.trim();
        n
    }

    fn trim(&mut self) {
        while self.limbs.last() == Some(&0) {
            self.limbs.pop();
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.limbs.is_empty()
    }

    /// `self = self * m + add`.
    pub(crate) fn mul_add_small(&mut self, m: u32, add: u32) {
        let mut carry = u64::from(add);
        for limb in &mut self.limbs {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = (v % BASE) as u32;
            carry = v / BASE;
        }
        while carry > 0 {
            self.limbs.push((carry % BASE) as u32);
            carry /= BASE;
        }
        self.trim();
    }

    /// `self *= 10^k`.
    pub(crate) fn mul_pow10(&mut self, k: u32) {
        if self.is_zero() {
            return;
        }
        let whole = (k / 9) as usize;
        let rest = k % 9;
        if rest > 0 {
            self.mul_add_small(10u32.pow(rest), 0);
        }
        if whole > 0 {
            self.limbs.splice(0..0, std::iter::repeat_n(0, whole));
        }
    }

    /// Divides by `d` (non-zero), returning the remainder.
    pub(crate) fn div_rem_small(&mut self, d: u64) -> u64 {
        let mut rem: u128 = 0;
        for limb in self.limbs.iter_mut().rev() {
            let cur = rem * u128::from(BASE) + u128::from(*limb);
            *limb = (cur / u128::from(d)) as u32;
            rem = cur % u128::from(d);
        }
        self.trim();
        rem as u64
    }

    pub(crate) fn add(&self, other: &BigUint) -> BigUint {
        let n = self.limbs.len().max(other.limbs.len());
        let mut limbs = Vec::with_capacity(n + 1);
        let mut carry = 0u64;
        for i in 0..n {
            let a = u64::from(self.limbs.get(i).copied().unwrap_or(0));
            let b = u64::from(other.limbs.get(i).copied().unwrap_or(0));
            let v = a + b + carry;
            limbs.push((v % BASE) as u32);
            carry = v / BASE;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
        BigUint { limbs }
    }

    /// `self - other`; the caller guarantees `self >= other`.
    pub(crate) fn sub(&self, other: &BigUint) -> BigUint {
        let mut limbs = Vec::with_capacity(self.limbs.len());
        let mut borrow = 0i64;
        for i in 0..self.limbs.len() {
            let a = i64::from(self.limbs[i]);
            let b = i64::from(other.limbs.get(i).copied().unwrap_or(0));
            let mut v = a - b - borrow;
            borrow = 0;
            if v < 0 {
                v += BASE as i64;
                borrow = 1;
            }
            limbs.push(v as u32);
        }
        let mut n = BigUint { limbs };
        n.trim();
        n
    }

    /// Decimal digits without leading zeros ("" for zero).
    pub(crate) fn to_decimal(&self) -> String {
        let mut out = String::with_capacity(self.limbs.len() * 9);
        for (i, limb) in self.limbs.iter().rev().enumerate() {
            if i == 0 {
                out.push_str(&limb.to_string());
            } else {
                out.push_str(&format!("{limb:09}"));
            }
        }
        out
    }
}

impl Ord for BigUint {
    fn cmp(&self, other: &Self) -> Ordering {
        self.limbs
            .len()
            .cmp(&other.limbs.len())
            .then_with(|| self.limbs.iter().rev().cmp(other.limbs.iter().rev()))
    }
}

impl PartialOrd for BigUint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_round_trips_through_decimal() {
        let a = BigUint::from_ascii_digits(b"123456789012345678901234567890");
        let b = BigUint::from_u128(987_654_321_987_654_321);
        assert_eq!(a.add(&b).to_decimal(), "123456789013333333223222222211");
        assert_eq!(a.add(&b).sub(&b), a);
        let mut c = a.clone();
        c.mul_pow10(20);
        assert_eq!(c.to_decimal().len(), 50);
        let mut d = BigUint::from_u128(100);
        assert_eq!(d.div_rem_small(7), 2);
        assert_eq!(d.to_decimal(), "14");
        assert!(BigUint::from_ascii_digits(b"000").is_zero());
        assert!(a > b);
    }
}
