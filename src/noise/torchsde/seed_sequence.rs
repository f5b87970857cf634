//! numpy's `SeedSequence` (numpy/random/bit_generator.pyx), as torchsde uses it to seed the
//! nodes of a Brownian tree.

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// The largest pool this port supports (torchsde uses 24).
pub(crate) const MAX_POOL: usize = 32;

/// A non-negative integer as numpy coerces it: little-endian 32-bit words, `[0]` for zero.
fn push_words(n: u64, out: &mut [u32; 8], len: &mut usize) {
    out[*len] = n as u32;
    *len += 1;
    if n >> 32 != 0 {
        out[*len] = (n >> 32) as u32;
        *len += 1;
    }
}

/// `SeedSequence(entropy, spawn_key, pool_size)`: its entropy pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeedSequence {
    pool: [u32; MAX_POOL],
    pool_size: usize,
}

impl SeedSequence {
    /// `np.random.SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size)` for an
    /// integer entropy and integer spawn keys (`4 <= pool_size <= MAX_POOL`, at most two keys).
    pub(crate) fn new(entropy: u64, spawn_key: &[u64], pool_size: usize) -> Self {
        debug_assert!((4..=MAX_POOL).contains(&pool_size) && spawn_key.len() <= 2);
        // The run entropy, zero-padded to the pool size when a spawn key follows, then the key.
        let mut run = [0u32; 8];
        let mut run_len = 0;
        push_words(entropy, &mut run, &mut run_len);
        let mut key = [0u32; 8];
        let mut key_len = 0;
        for &k in spawn_key {
            push_words(k, &mut key, &mut key_len);
        }
        let run_total = if key_len > 0 {
            run_len.max(pool_size)
        } else {
            run_len
        };
        let ent_len = run_total + key_len;
        let ent = |i: usize| -> u32 {
            if i < run_len {
                run[i]
            } else if i < run_total {
                0
            } else if i < ent_len {
                key[i - run_total]
            } else {
                0
            }
        };
        let mut hash_const = INIT_A;
        let mut hashmix = |value: u32| -> u32 {
            let mut v = value ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_A);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        };
        let mix = |x: u32, y: u32| -> u32 {
            let r = MIX_MULT_L
                .wrapping_mul(x)
                .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
            r ^ (r >> XSHIFT)
        };
        let mut pool = [0u32; MAX_POOL];
        for (i, p) in pool.iter_mut().enumerate().take(pool_size) {
            *p = hashmix(ent(i));
        }
        for i_src in 0..pool_size {
            for i_dst in 0..pool_size {
                if i_src != i_dst {
                    let h = hashmix(pool[i_src]);
                    pool[i_dst] = mix(pool[i_dst], h);
                }
            }
        }
        for i_src in pool_size..ent_len {
            for p in pool.iter_mut().take(pool_size) {
                let h = hashmix(ent(i_src));
                *p = mix(*p, h);
            }
        }
        SeedSequence { pool, pool_size }
    }

    /// `generate_state(n)` (uint32 words), first `out.len()` of them.
    pub(crate) fn generate_state(&self, out: &mut [u32]) {
        let mut hash_const = INIT_B;
        for (i, o) in out.iter_mut().enumerate() {
            let mut v = self.pool[i % self.pool_size] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            *o = v ^ (v >> XSHIFT);
        }
    }

    /// The first word of `generate_state`.
    pub(crate) fn first_word(&self) -> u32 {
        let mut w = [0u32; 1];
        self.generate_state(&mut w);
        w[0]
    }
}
