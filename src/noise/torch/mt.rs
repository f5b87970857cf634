//! The 32-bit Mersenne Twister (MT19937) as torch's `at::mt19937` runs it.

const N: usize = 624;
const M: usize = 397;

/// MT19937, seeded as torch seeds it (`init_genrand` with the seed's low 32 bits).
#[derive(Clone)]
pub(super) struct Mt19937 {
    state: Box<[u32; N]>,
    index: usize,
}

/// The twist of two neighbouring state words.
#[inline(always)]
fn mix(a: u32, b: u32) -> u32 {
    let y = (a & 0x8000_0000) | (b & 0x7fff_ffff);
    (y >> 1) ^ (0u32.wrapping_sub(y & 1) & 0x9908_b0df)
}

/// The output tempering of a state word.
#[inline(always)]
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
}

impl Mt19937 {
    pub(super) fn new(seed: u64) -> Self {
        let mut mt = Mt19937 {
            state: Box::new([0u32; N]),
            index: N,
        };
        mt.reseed(seed);
        mt
    }

    /// Seeds the engine again in place (no allocation).
    pub(super) fn reseed(&mut self, seed: u64) {
        let state = &mut *self.state;
        state[0] = seed as u32;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    /// The next 624 state words (three loops without wrap-around indexing, so that they
    /// vectorise).
    #[inline(always)]
    fn twist(&mut self) {
        let s = &mut *self.state;
        for i in 0..N - M {
            s[i] = s[i + M] ^ mix(s[i], s[i + 1]);
        }
        for i in N - M..N - 1 {
            s[i] = s[i + M - N] ^ mix(s[i], s[i + 1]);
        }
        s[N - 1] = s[M - 1] ^ mix(s[N - 1], s[0]);
        self.index = 0;
    }

    #[inline(always)]
    pub(super) fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let y = self.state[self.index];
        self.index += 1;
        temper(y)
    }

    /// `out[i] = f(next_u32())` for every element in order, a state block at a time.
    #[inline(always)]
    pub(super) fn fill_with<T>(&mut self, mut out: &mut [T], f: impl Fn(u32) -> T) {
        while !out.is_empty() {
            if self.index >= N {
                self.twist();
            }
            let k = (N - self.index).min(out.len());
            let (head, rest) = out.split_at_mut(k);
            for (o, &s) in head.iter_mut().zip(&self.state[self.index..self.index + k]) {
                *o = f(temper(s));
            }
            self.index += k;
            out = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference output of MT19937 seeded 5489 (the C++ standard's `mt19937` default: its
    /// 10 000th output is 4123659995).
    #[test]
    fn matches_the_standard_engine() {
        let mut mt = Mt19937::new(5489);
        let mut v = vec![0u32; 10_000];
        mt.fill_with(&mut v[..3], |u| u);
        for x in v[3..].iter_mut() {
            *x = mt.next_u32();
        }
        assert_eq!(v[0], 3_499_211_612);
        assert_eq!(v[9_999], 4_123_659_995);
    }
}
