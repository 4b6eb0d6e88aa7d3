//! Firecracker's token-bucket rate limiter: a bandwidth bucket (bytes) and an ops bucket (frames).
//!
//! The arithmetic follows upstream's `rate_limiter` module so that a guest sees the same
//! throughput under squib as under Firecracker: buckets start full, refill continuously at
//! `size / refill_time`, the one-time burst is spent first and never refills, and a frame larger
//! than the whole bucket is let through once and then blocks the limiter for as long as the
//! excess takes to refill. Where upstream polls with a 100 ms timer after a refusal, this limiter
//! tells the caller exactly when enough tokens will be there; the resulting rate is the same.
//! As upstream's, a bucket refills only when a request finds its budget short, counting from the
//! last refill: the time a full bucket spends idle (less than one refill period) is credited when
//! it first runs dry, so a burst after a pause may pass up to twice the bucket's size.
//!
//! Every method that looks at time has an `_at` form taking the current [`Instant`], so tests
//! drive a fake clock without sleeping.

use std::time::{Duration, Instant};

const NANOS_PER_MS: u64 = 1_000_000;

/// One bucket as configured through the API (`TokenBucket` of the contract, §5.13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Capacity in tokens (bytes or frames).
    pub size: u64,
    /// Extra tokens available once, spent before the regular budget.
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to refill completely.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// A bucket with a zero size or refill time limits nothing.
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time_ms != 0
    }
}

/// A limiter as configured through the API (`RateLimiter` of the contract).
///
/// On [`RateLimiter::update`] a `None` bucket keeps the current one, as upstream's PATCH does;
/// `Some` of a disabled bucket turns that bucket off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Bytes per refill period.
    pub bandwidth: Option<BucketConfig>,
    /// Frames per refill period.
    pub ops: Option<BucketConfig>,
}

/// What a bucket says to a request for tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduction {
    Granted,
    /// Not enough tokens; this long until there will be.
    Refused(Duration),
    /// Granted although larger than the bucket; the limiter must stay shut this long.
    Overdrawn(Duration),
}

/// A single token bucket; see the module docs for its semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    initial_burst: u64,
    refill_time_ms: u64,
    burst: u64,
    budget: u64,
    last_update: Instant,
    // `size / refill_ns` reduced by their gcd, so `elapsed * capacity` cannot overflow u128.
    reduced_capacity: u64,
    reduced_refill_ns: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl TokenBucket {
    /// A full bucket, or `None` when the configuration disables it (or its refill time in
    /// nanoseconds would not fit in 64 bits, which upstream also treats as disabled).
    pub fn new_at(config: BucketConfig, now: Instant) -> Option<Self> {
        if !config.is_enabled() {
            return None;
        }
        let refill_ns = config.refill_time_ms.checked_mul(NANOS_PER_MS)?;
        let common = gcd(config.size, refill_ns);
        Some(Self {
            size: config.size,
            initial_burst: config.one_time_burst,
            refill_time_ms: config.refill_time_ms,
            burst: config.one_time_burst,
            budget: config.size,
            last_update: now,
            reduced_capacity: config.size / common,
            reduced_refill_ns: refill_ns / common,
        })
    }

    /// The configuration this bucket was built from.
    pub fn config(&self) -> BucketConfig {
        BucketConfig {
            size: self.size,
            one_time_burst: self.initial_burst,
            refill_time_ms: self.refill_time_ms,
        }
    }

    /// Tokens in the regular budget (the one-time burst not included).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst(&self) -> u64 {
        self.burst
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.refill_time_ms) * u128::from(NANOS_PER_MS)
    }

    // Nanoseconds needed to generate `tokens`, rounded up.
    fn time_for(&self, tokens: u64) -> u128 {
        let num = u128::from(tokens) * u128::from(self.reduced_refill_ns);
        let den = u128::from(self.reduced_capacity);
        num.div_ceil(den)
    }

    fn replenish(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        if elapsed >= self.refill_ns() {
            self.budget = self.size;
            self.last_update = now;
            return;
        }
        let tokens =
            elapsed * u128::from(self.reduced_capacity) / u128::from(self.reduced_refill_ns);
        // Only the time that produced whole tokens is used up, so fractions carry over to the
        // next call instead of being lost at high call rates. Rounded up so that no fraction of
        // a nanosecond is spent twice.
        let used = self.time_for(u64::try_from(tokens).unwrap_or(u64::MAX));
        self.last_update += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        let tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    fn reduce(&mut self, mut tokens: u64, now: Instant) -> Reduction {
        if self.burst > 0 {
            if self.burst >= tokens {
                self.burst -= tokens;
                self.last_update = now;
                return Reduction::Granted;
            }
            tokens -= self.burst;
            self.burst = 0;
        }
        if tokens > self.budget {
            self.replenish(now);
            if tokens > self.size {
                let excess = tokens - self.budget;
                self.budget = 0;
                tracing::debug!(tokens, size = self.size, "frame larger than its bucket");
                return Reduction::Overdrawn(nanos(self.time_for(excess)));
            }
            if tokens > self.budget {
                let missing = tokens - self.budget;
                // Part of the next token is already accrued since `last_update`.
                let accrued = now.saturating_duration_since(self.last_update).as_nanos();
                let wait = self.time_for(missing).saturating_sub(accrued).max(1);
                return Reduction::Refused(nanos(wait));
            }
        }
        self.budget -= tokens;
        Reduction::Granted
    }

    /// Takes as many of `wanted` tokens as there are (the one-time burst first) and returns
    /// how many it took: for a stream whose excess is dropped rather than delayed, such as the
    /// serial console's (upstream drops each byte it has no token for).
    pub fn consume_up_to_at(&mut self, wanted: u64, now: Instant) -> u64 {
        let from_burst = wanted.min(self.burst);
        self.burst -= from_burst;
        let rest = wanted - from_burst;
        if rest > self.budget {
            self.replenish(now);
        }
        let from_budget = rest.min(self.budget);
        self.budget -= from_budget;
        from_burst + from_budget
    }

    // Gives back tokens taken by a request that was refused further on.
    fn give_back(&mut self, tokens: u64) {
        if self.burst > 0 {
            self.burst = self.burst.saturating_add(tokens).min(self.initial_burst);
            return;
        }
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A bandwidth bucket and an ops bucket, consumed together: one frame of `n` bytes costs one
/// op and `n` bandwidth tokens, or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    // After a refusal or an overdraft nothing passes before this instant, like upstream's timer.
    blocked_until: Option<Instant>,
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(config: LimiterConfig) -> Self {
        Self::new_at(config, Instant::now())
    }

    /// [`RateLimiter::new`] at a given instant.
    pub fn new_at(config: LimiterConfig, now: Instant) -> Self {
        Self {
            bandwidth: config.bandwidth.and_then(|c| TokenBucket::new_at(c, now)),
            ops: config.ops.and_then(|c| TokenBucket::new_at(c, now)),
            blocked_until: None,
        }
    }

    /// True when neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// The bandwidth bucket, if enabled.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket, if enabled.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// Takes one op and `bytes` bandwidth tokens, or tells how long to wait before asking again.
    pub fn consume(&mut self, bytes: u64) -> Result<(), Duration> {
        self.consume_at(bytes, Instant::now())
    }

    /// [`RateLimiter::consume`] at a given instant.
    pub fn consume_at(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Err(until - now);
            }
            self.blocked_until = None;
        }
        let mut block = Duration::ZERO;
        if let Some(ops) = self.ops.as_mut() {
            match ops.reduce(1, now) {
                Reduction::Granted => {}
                Reduction::Overdrawn(d) => block = block.max(d),
                Reduction::Refused(wait) => return Err(self.block(now, wait)),
            }
        }
        if let Some(bw) = self.bandwidth.as_mut() {
            match bw.reduce(bytes, now) {
                Reduction::Granted => {}
                Reduction::Overdrawn(d) => block = block.max(d),
                Reduction::Refused(wait) => {
                    if let Some(ops) = self.ops.as_mut() {
                        ops.give_back(1);
                    }
                    return Err(self.block(now, wait));
                }
            }
        }
        if !block.is_zero() {
            self.blocked_until = Some(now + block);
        }
        Ok(())
    }

    fn block(&mut self, now: Instant, wait: Duration) -> Duration {
        self.blocked_until = Some(now + wait);
        wait
    }

    /// Applies a post-boot PATCH: each `Some` bucket is replaced by a full new one (or removed
    /// when disabled), each `None` is kept. A pending block is lifted so a raised limit applies
    /// at once.
    pub fn update(&mut self, config: LimiterConfig) {
        self.update_at(config, Instant::now());
    }

    /// [`RateLimiter::update`] at a given instant.
    pub fn update_at(&mut self, config: LimiterConfig, now: Instant) {
        if let Some(c) = config.bandwidth {
            self.bandwidth = TokenBucket::new_at(c, now);
        }
        if let Some(c) = config.ops {
            self.ops = TokenBucket::new_at(c, now);
        }
        self.blocked_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bucket(size: u64, burst: u64, refill: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: burst,
            refill_time_ms: refill,
        })
    }

    #[test]
    fn zero_size_or_refill_disables_a_bucket() {
        let t0 = Instant::now();
        assert!(TokenBucket::new_at(bucket(0, 5, 100).unwrap(), t0).is_none());
        assert!(TokenBucket::new_at(bucket(5, 5, 0).unwrap(), t0).is_none());
        assert!(TokenBucket::new_at(bucket(1, 0, u64::MAX).unwrap(), t0).is_none());
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(0, 0, 100),
                ops: bucket(10, 0, 0),
            },
            t0,
        );
        assert!(rl.is_unlimited());
        for _ in 0..1000 {
            assert_eq!(rl.consume_at(u64::MAX, t0), Ok(()));
        }
    }

    #[test]
    fn bandwidth_refills_linearly_and_tells_when_to_retry() {
        let t0 = Instant::now();
        // 1000 bytes per 100 ms.
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(1000, 0, 100),
                ops: None,
            },
            t0,
        );
        assert_eq!(rl.consume_at(600, t0), Ok(()));
        assert_eq!(rl.consume_at(400, t0), Ok(()));
        // Empty: 500 bytes take 50 ms.
        assert_eq!(rl.consume_at(500, t0), Err(ms(50)));
        // Blocked until then, whatever is asked.
        assert_eq!(rl.consume_at(1, t0 + ms(20)), Err(ms(30)));
        assert_eq!(rl.consume_at(500, t0 + ms(50)), Ok(()));
        assert_eq!(rl.bandwidth().unwrap().budget(), 0);
        // A full refill period fills the bucket, never above its size.
        assert_eq!(rl.consume_at(1000, t0 + ms(500)), Ok(()));
        assert_eq!(
            rl.consume_at(1, t0 + ms(500)),
            Err(Duration::from_micros(100))
        );
    }

    #[test]
    fn fractions_of_tokens_carry_over() {
        let t0 = Instant::now();
        // 3 tokens per 10 ms: one token per 3.33 ms.
        let mut b = TokenBucket::new_at(bucket(3, 0, 10).unwrap(), t0).unwrap();
        assert_eq!(b.reduce(3, t0), Reduction::Granted);
        // 5 ms give 1.5 tokens: one now, the half kept for later.
        assert!(matches!(b.reduce(2, t0 + ms(5)), Reduction::Refused(_)));
        assert_eq!(b.budget(), 1);
        // 1.67 ms more complete the second token (6.67 ms in all).
        assert_eq!(
            b.reduce(2, t0 + ms(5) + Duration::from_micros(1670)),
            Reduction::Granted
        );
    }

    #[test]
    fn refusal_wait_accounts_for_accrued_fraction() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(bucket(10, 0, 10).unwrap(), t0).unwrap();
        assert_eq!(b.reduce(10, t0), Reduction::Granted);
        // 1.5 ms → one token plus half of the next; two more need 1.5 ms.
        let r = b.reduce(3, t0 + Duration::from_micros(1500));
        assert_eq!(r, Reduction::Refused(Duration::from_micros(1500)));
    }

    #[test]
    fn consume_up_to_takes_what_there_is_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let config = BucketConfig {
            size: 1000,
            one_time_burst: 100,
            refill_time_ms: 1000,
        };
        let mut b = TokenBucket::new_at(config, t0).unwrap();
        assert_eq!(b.consume_up_to_at(60, t0), 60);
        assert_eq!(b.one_time_burst(), 40);
        // The rest of the burst, then the whole budget, then nothing.
        assert_eq!(b.consume_up_to_at(5000, t0), 1040);
        assert_eq!(b.consume_up_to_at(10, t0), 0);
        // 1000 tokens a second: 250 ms give 250, never more than the size.
        assert_eq!(b.consume_up_to_at(5000, t0 + ms(250)), 250);
        assert_eq!(b.consume_up_to_at(5000, t0 + ms(10_000)), 1000);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(100, 250, 1000),
                ops: None,
            },
            t0,
        );
        assert_eq!(rl.consume_at(200, t0), Ok(()));
        assert_eq!(rl.bandwidth().unwrap().one_time_burst(), 50);
        assert_eq!(rl.bandwidth().unwrap().budget(), 100);
        // 50 from the burst, 50 from the budget.
        assert_eq!(rl.consume_at(100, t0), Ok(()));
        assert_eq!(rl.bandwidth().unwrap().one_time_burst(), 0);
        assert_eq!(rl.bandwidth().unwrap().budget(), 50);
        // Much later the budget is full again, the burst is not.
        assert_eq!(rl.consume_at(100, t0 + ms(10_000)), Ok(()));
        assert_eq!(rl.bandwidth().unwrap().one_time_burst(), 0);
        assert!(rl.consume_at(1, t0 + ms(10_000)).is_err());
    }

    #[test]
    fn a_full_bucket_keeps_its_idle_refill_time_until_it_runs_dry_as_upstream() {
        let t0 = Instant::now();
        // 1000 bytes per 100 ms, idle and full for 60 ms.
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(1000, 0, 100),
                ops: None,
            },
            t0,
        );
        let t = t0 + ms(60);
        assert_eq!(rl.consume_at(1000, t), Ok(()));
        // Upstream only refills when a request finds the budget short, counting from the last
        // refill: the 600 tokens of the idle 60 ms are granted on top of the full bucket.
        assert_eq!(rl.consume_at(600, t), Ok(()));
        assert!(rl.consume_at(1, t).is_err());
        // Idle for a whole refill period or more, the bucket is simply full.
        let t = t + ms(100);
        assert_eq!(rl.consume_at(1000, t), Ok(()));
        assert!(rl.consume_at(1, t).is_err());
    }

    #[test]
    fn frame_larger_than_bucket_passes_then_blocks() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(1000, 0, 100),
                ops: None,
            },
            t0,
        );
        // 3000 bytes: 1000 from the budget, 2000 borrowed = 200 ms blocked.
        assert_eq!(rl.consume_at(3000, t0), Ok(()));
        assert_eq!(rl.consume_at(1, t0 + ms(150)), Err(ms(50)));
        assert_eq!(rl.consume_at(1, t0 + ms(200)), Ok(()));
    }

    #[test]
    fn ops_count_frames_and_a_bandwidth_refusal_returns_the_op() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(100, 0, 100),
                ops: bucket(2, 0, 100),
            },
            t0,
        );
        assert_eq!(rl.consume_at(60, t0), Ok(()));
        // Bandwidth refuses: the op taken for this frame is given back.
        assert_eq!(rl.consume_at(60, t0), Err(ms(20)));
        assert_eq!(rl.ops().unwrap().budget(), 1);
        assert_eq!(rl.consume_at(60, t0 + ms(20)), Ok(()));
        // Ops exhausted: one op per 50 ms.
        assert_eq!(rl.consume_at(1, t0 + ms(20)), Err(ms(30)));
    }

    #[test]
    fn update_replaces_given_buckets_keeps_others_and_unblocks() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new_at(
            LimiterConfig {
                bandwidth: bucket(100, 0, 1000),
                ops: bucket(5, 0, 1000),
            },
            t0,
        );
        assert_eq!(rl.consume_at(100, t0), Ok(()));
        assert!(rl.consume_at(100, t0).is_err());
        rl.update_at(
            LimiterConfig {
                bandwidth: bucket(10_000, 0, 1000),
                ops: None,
            },
            t0,
        );
        assert_eq!(rl.consume_at(5000, t0), Ok(()));
        assert_eq!(rl.ops().unwrap().config(), bucket(5, 0, 1000).unwrap());
        // A disabled bucket in the update turns limiting off for that bucket.
        rl.update_at(
            LimiterConfig {
                bandwidth: bucket(0, 0, 0),
                ops: bucket(0, 0, 1),
            },
            t0,
        );
        assert!(rl.is_unlimited());
    }
}
