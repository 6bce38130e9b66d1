//! Per-token rate limits on intake (`[server.rate_limit]`): one token bucket of requests (an
//! invocation or a whole batch costs 1) and one of invocations (a batch costs its items), keyed
//! by the token's name, with governor's GCRA. A caller over either gets 429 `rate_limited` and a
//! `Retry-After` saying when the bucket holds enough again; other tokens are not affected.

use super::error::ApiError;
use crate::config::RateLimitConfig;
use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::time::Duration;

type Bucket = DefaultKeyedRateLimiter<String>;

pub struct IntakeLimits {
    requests: Option<Bucket>,
    items: Option<Bucket>,
    clock: DefaultClock,
}

fn bucket(per_second: u32, burst: u32) -> Option<Bucket> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(Bucket::keyed(Quota::per_second(rate).allow_burst(burst)))
}

impl IntakeLimits {
    pub fn new(config: &RateLimitConfig) -> IntakeLimits {
        IntakeLimits {
            requests: bucket(config.requests_per_second, config.request_burst),
            items: bucket(config.items_per_second, config.item_burst),
            clock: DefaultClock::default(),
        }
    }

    /// One intake request by `token` (checked before its body is read).
    pub fn admit_request(&self, token: &str) -> Result<(), ApiError> {
        self.take(self.requests.as_ref(), token, 1, "requests")
    }

    /// `items` invocations submitted by `token` (one, or a batch's items once they are counted).
    pub fn admit_items(&self, token: &str, items: usize) -> Result<(), ApiError> {
        let n = u32::try_from(items).unwrap_or(u32::MAX);
        self.take(self.items.as_ref(), token, n, "invocations")
    }

    fn take(&self, bucket: Option<&Bucket>, token: &str, n: u32, what: &str) -> Result<(), ApiError> {
        let (Some(bucket), Some(n)) = (bucket, NonZeroU32::new(n)) else { return Ok(()) };
        match bucket.check_key_n(&token.to_string(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(limited(token, what, wait))
            }
            Err(capacity) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "{n} {what} at once is more than token '{token}' may ever submit at once ({capacity}); split it"
                ),
            )),
        }
    }
}

fn limited(token: &str, what: &str, wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("token '{token}' is over its rate of {what}; try again in {seconds} s"),
    )
    .retry_after(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, request_burst: u32, item_burst: u32) -> IntakeLimits {
        IntakeLimits::new(&RateLimitConfig {
            requests_per_second: per_second,
            request_burst,
            items_per_second: per_second,
            item_burst,
        })
    }

    #[test]
    fn each_token_has_its_own_buckets() {
        let limits = limits(1, 3, 10);
        for _ in 0..3 {
            limits.admit_request("a").unwrap();
        }
        let e = limits.admit_request("a").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "rate_limited"));
        assert!(e.retry_after.is_some_and(|s| (1..=2).contains(&s.get())), "{:?}", e.retry_after);
        limits.admit_request("b").expect("another token is not affected");
        limits.admit_items("a", 10).unwrap();
        assert_eq!(limits.admit_items("a", 1).unwrap_err().code, "rate_limited");
        assert_eq!(limits.admit_items("b", 11).unwrap_err().code, "batch_too_large", "more than the burst");
    }

    #[test]
    fn zero_per_second_turns_a_bucket_off() {
        let limits = limits(0, 0, 0);
        for _ in 0..1000 {
            limits.admit_request("a").unwrap();
            limits.admit_items("a", 1_000_000).unwrap();
        }
    }
}
