//! Behaviour of the engine: GCRA against a reference model, all-or-nothing acquisition,
//! races between threads, reservations and quotas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use llmthrottle_core::*;
use proptest::prelude::*;

const S: u64 = 1_000_000_000;

/// The store this behaviour runs on: the in-process one here. tests/shm.rs includes this file
/// as a module and supplies its own `store_under_test` (shared memory), found via `crate::`.
#[allow(dead_code)]
mod store_under_test {
    pub type TestStore = llmthrottle_core::LocalStore;
    pub fn new_store() -> TestStore {
        TestStore::new()
    }
}
use crate::store_under_test::{new_store, TestStore};

pub(crate) fn rate(text: &str, burst: Option<u64>) -> LimitKind {
    LimitKind::Rate(RateParams::new(Rate::parse(text).unwrap(), burst).unwrap())
}

pub(crate) fn spec(rules: Vec<(&str, Vec<(&str, LimitKind)>)>) -> PolicySpec {
    PolicySpec {
        namespace: "test".into(),
        rules: rules
            .into_iter()
            .map(|(pattern, limits)| RuleSpec {
                pattern: pattern.into(),
                layer: 0,
                limits: limits
                    .into_iter()
                    .map(|(dimension, kind)| LimitSpec {
                        dimension: dimension.into(),
                        kind,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn engine(rules: Vec<(&str, Vec<(&str, LimitKind)>)>) -> (Engine<TestStore>, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::default());
    let engine = Engine::new(Arc::new(new_store()), clock.clone(), &spec(rules)).unwrap();
    (engine, clock)
}

/// The reference: a token bucket holding `tokens_ns / emission` units, refilled one unit per
/// `emission` nanoseconds up to `burst`. Written as a bucket, not as a TAT, on purpose.
struct Bucket {
    emission: u128,
    burst: u128,
    tokens_ns: u128,
    at: u64,
}

impl Bucket {
    fn new(p: RateParams, at: u64) -> Self {
        Bucket {
            emission: p.emission_ns as u128,
            burst: p.burst as u128,
            tokens_ns: p.burst as u128 * p.emission_ns as u128,
            at,
        }
    }
    fn refill(&mut self, now: u64) {
        let cap = self.burst * self.emission;
        self.tokens_ns = (self.tokens_ns + (now - self.at) as u128).min(cap);
        self.at = now;
    }
    /// `Ok(())` if admitted, else the wait until it would be.
    fn take(&mut self, now: u64, n: u64) -> Result<(), u64> {
        self.refill(now);
        let need = n as u128 * self.emission;
        if self.tokens_ns >= need {
            self.tokens_ns -= need;
            Ok(())
        } else {
            Err((need - self.tokens_ns) as u64)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Every decision matches the reference bucket; a denial's retry_after is exact; and over
    /// every window the admitted amount stays within burst + window / emission.
    #[test]
    fn gcra_matches_reference(
        amount in 1.0f64..5000.0,
        period_s in 1u64..120,
        burst_extra in 0u64..50,
        steps in prop::collection::vec((0u64..3 * S, 1u64..100), 1..200),
    ) {
        let r = Rate { amount: amount.floor().max(1.0), period_ns: period_s * S };
        let params = RateParams::new(r, Some(1 + burst_extra)).unwrap();
        let (engine, clock) = engine(vec![("*", vec![("tokens", LimitKind::Rate(params))])]);
        let mut reference = Bucket::new(params, clock.now().monotonic_ns);
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap, n) in steps {
            clock.advance(gap);
            let n = 1 + n % params.burst;
            let now = clock.now().monotonic_ns;
            let (d, _) = engine.acquire(&["k"], &[n], 0).unwrap();
            match reference.take(now, n) {
                Ok(()) => {
                    prop_assert!(d.allowed, "engine denied what the reference admits");
                    admitted.push((now, n));
                }
                Err(wait) => {
                    prop_assert!(!d.allowed, "engine admitted what the reference denies");
                    prop_assert_eq!(d.retry_after_ns, wait);
                    // Exactness: one nanosecond early is still denied, on time is admitted.
                    clock.advance(wait - 1);
                    prop_assert!(!engine.peek(&["k"], &[n]).unwrap().allowed);
                    clock.advance(1);
                    prop_assert!(engine.peek(&["k"], &[n]).unwrap().allowed);
                    clock.set(Now { monotonic_ns: now, wall_ns: clock.now().wall_ns - wait });
                }
            }
        }
        for i in 0..admitted.len() {
            let mut total = 0u128;
            for &(t, n) in &admitted[i..] {
                total += n as u128;
                let window = (t - admitted[i].0) as u128;
                prop_assert!(
                    total * params.emission_ns as u128
                        <= (params.burst as u128 * params.emission_ns as u128) + window,
                    "admitted {} within {} ns", total, window
                );
            }
        }
    }

    /// A denied request over several keys and dimensions leaves every cell as it was.
    #[test]
    fn denial_charges_nothing(
        requests in prop::collection::vec((0usize..3, 0u64..40, 0u64..4), 1..60),
    ) {
        let (engine, clock) = engine(vec![
            ("user:*", vec![("requests", rate("5/s", None)), ("tokens", rate("100/s", None))]),
            ("team:*", vec![("tokens", rate("150/s", None)), ("concurrency", LimitKind::Concurrency { max: 3 })]),
        ]);
        let users = ["user:a", "user:b", "user:c"];
        let mut held = Vec::new();
        for (user, tokens, gap) in requests {
            clock.advance(gap * S / 10);
            let keys = [users[user], "team:x"];
            let before: Vec<_> = keys.iter().map(|k| engine.status(k).unwrap()).collect();
            let (d, r) = engine.acquire(&keys, &[1, tokens], 0).unwrap();
            if d.allowed {
                held.push((r.unwrap(), keys));
                if held.len() == 3 {
                    let (mut r, keys) = held.remove(0);
                    engine.commit(&mut r, &keys, &[]).unwrap();
                }
            } else {
                let after: Vec<_> = keys.iter().map(|k| engine.status(k).unwrap()).collect();
                prop_assert_eq!(before, after);
            }
        }
    }
}

#[test]
fn racing_threads_never_over_admit() {
    let (engine, _clock) = engine(vec![
        ("user:*", vec![("requests", rate("1000/min", Some(700)))]),
        ("team:*", vec![("requests", rate("1000/min", Some(500)))]),
    ]);
    let engine = Arc::new(engine);
    let per_user: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
    let per_user = Arc::new(per_user);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let engine = Arc::clone(&engine);
            let per_user = Arc::clone(&per_user);
            scope.spawn(move || {
                let user = format!("user:{}", t % 2);
                for _ in 0..2000 {
                    let (d, _) = engine.acquire(&[&user, "team:t"], &[1], 0).unwrap();
                    if d.allowed {
                        per_user[t].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let total: u64 = per_user.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    // Time stands still: exactly the team's burst, never more.
    assert_eq!(total, 500);
    let team = engine.status("team:t").unwrap();
    assert_eq!(team[0].remaining, 0);
    let users: u64 = ["user:0", "user:1"]
        .iter()
        .map(|u| engine.status(u).unwrap()[0].used)
        .sum();
    assert_eq!(users, 500, "rolled-back charges must leave no trace on the users");
}

#[test]
fn racing_settlements_leave_exactly_the_committed_usage() {
    // Time stands still, so every refund is whole: what stays charged on each key is exactly
    // the usage committed to it, whichever thread settled what, in whatever order.
    let (engine, _clock) = engine(vec![("*", vec![("tokens", rate("1M/min", None))])]);
    let engine = Arc::new(engine);
    let committed: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
    let committed = Arc::new(committed);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let engine = Arc::clone(&engine);
            let committed = Arc::clone(&committed);
            scope.spawn(move || {
                let keys = ["k0", "k1"];
                let mut held = Vec::new();
                for i in 0..3000u64 {
                    let (d, r) = engine.acquire(&keys, &[20], 0).unwrap();
                    assert!(d.allowed);
                    held.push(r.unwrap());
                    if held.len() > 3 {
                        let mut r = held.swap_remove(((i + t) % 3) as usize);
                        if (i + t) % 4 == 0 {
                            engine.cancel(&mut r, &keys).unwrap();
                        } else {
                            let used = (i * 7 + t) % 21;
                            engine.commit(&mut r, &keys, &[Some(used)]).unwrap();
                            for c in committed.iter() {
                                c.fetch_add(used, Ordering::Relaxed);
                            }
                        }
                    }
                }
                for mut r in held {
                    engine.cancel(&mut r, &keys).unwrap();
                }
            });
        }
    });
    for (key, c) in ["k0", "k1"].iter().zip(committed.iter()) {
        assert_eq!(engine.status(key).unwrap()[0].used, c.load(Ordering::Relaxed));
    }
}

#[test]
fn exceeds_capacity_is_not_a_denial() {
    let (engine, _) = engine(vec![("*", vec![("tokens", rate("30k/min", None))])]);
    let err = engine.acquire(&["k"], &[50_000], 0).unwrap_err();
    assert!(matches!(
        err,
        CoreError::ExceedsCapacity {
            requested: 50_000,
            capacity: 30_000,
            ..
        }
    ));
    assert_eq!(engine.status("k").unwrap()[0].remaining, 30_000);
}

#[test]
fn commit_reconciles_and_cancel_refunds() {
    let (engine, _) = engine(vec![("*", vec![("tokens", rate("1000/min", None))])]);
    let (_, r) = engine.acquire(&["k"], &[600], 0).unwrap();
    let mut r = r.unwrap();
    assert_eq!(engine.status("k").unwrap()[0].remaining, 400);
    engine.commit(&mut r, &["k"], &[Some(250)]).unwrap();
    assert_eq!(engine.status("k").unwrap()[0].remaining, 750);
    assert_eq!(
        engine.commit(&mut r, &["k"], &[Some(1)]),
        Err(CoreError::AlreadySettled)
    );

    let (_, r) = engine.acquire(&["k"], &[100], 0).unwrap();
    let mut r = r.unwrap();
    engine.commit(&mut r, &["k"], &[Some(300)]).unwrap();
    assert_eq!(engine.status("k").unwrap()[0].remaining, 450);

    let (_, r) = engine.acquire(&["k"], &[450], 0).unwrap();
    engine.cancel(&mut r.unwrap(), &["k"]).unwrap();
    assert_eq!(engine.status("k").unwrap()[0].remaining, 450);

    // Usage beyond what is left is still charged: the next call waits for it.
    let (_, r) = engine.acquire(&["k"], &[400], 0).unwrap();
    engine.commit(&mut r.unwrap(), &["k"], &[Some(900)]).unwrap();
    let (d, _) = engine.acquire(&["k"], &[1], 0).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, 451 * 60_000_000); // 451 units past full, 60 ms each
}

#[test]
fn a_late_refund_gives_back_nothing_of_a_newer_charge() {
    // Settling finds a key's cell again by key; once the charge has drained (its cell may
    // have been reclaimed and made anew), a refund must not credit the newer state.
    let (engine, clock) = engine(vec![("*", vec![("tokens", rate("10/s", Some(10)))])]);
    let (_, old) = engine.acquire(&["k"], &[5], 0).unwrap();
    clock.advance(10 * S);
    let (d, _new) = engine.acquire(&["k"], &[10], 0).unwrap();
    assert!(d.allowed);
    engine.cancel(&mut old.unwrap(), &["k"]).unwrap();
    assert!(!engine.acquire(&["k"], &[1], 0).unwrap().0.allowed);
}

#[test]
fn settling_needs_the_keys_of_its_own_limiter() {
    let rules = || vec![("*", vec![("tokens", rate("10/s", Some(10)))])];
    let (engine, _) = engine(rules());
    let (_, r) = engine.acquire(&["a", "b"], &[4], 0).unwrap();
    let mut r = r.unwrap();
    assert!(matches!(
        engine.commit(&mut r, &["a"], &[Some(1)]),
        Err(CoreError::InvalidInput(_))
    ));
    // Refused without settling: the reservation still settles with its keys.
    assert!(!r.is_settled());
    engine.cancel(&mut r, &["a", "b"]).unwrap();
    assert_eq!(engine.status("b").unwrap()[0].remaining, 10);

    // A reservation settled by an engine whose policy has no such limit is refused.
    let (other, _) = self::engine(vec![("*", vec![])]);
    let (_, r) = engine.acquire(&["a"], &[1], 0).unwrap();
    assert!(matches!(
        other.cancel(&mut r.unwrap(), &["a"]),
        Err(CoreError::InvalidInput(_))
    ));
}

#[test]
fn usage_in_an_unreserved_dimension_is_charged() {
    let (engine, _) = engine(vec![(
        "*",
        vec![("requests", rate("10/s", None)), ("tokens", rate("1000/s", None))],
    )]);
    let (_, r) = engine.acquire(&["a", "b"], &[1, 0], 0).unwrap();
    engine.commit(&mut r.unwrap(), &["a", "b"], &[None, Some(400)]).unwrap();
    for key in ["a", "b"] {
        assert_eq!(engine.status(key).unwrap()[1].used, 400);
    }
}

#[test]
fn concurrency_is_released_by_commit_cancel_and_drop() {
    let (engine, _) = engine(vec![("*", vec![("concurrency", LimitKind::Concurrency { max: 2 })])]);
    let (_, a) = engine.acquire(&["k"], &[], 0).unwrap();
    let (_, b) = engine.acquire(&["k"], &[], 0).unwrap();
    let (d, _) = engine.acquire(&["k"], &[], 0).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, 0);
    engine.commit(&mut a.unwrap(), &["k"], &[]).unwrap();
    let (_, c) = engine.acquire(&["k"], &[], 0).unwrap();
    assert!(c.is_some());
    drop(b);
    let (_, d) = engine.acquire(&["k"], &[], 0).unwrap();
    engine.cancel(&mut c.unwrap(), &["k"]).unwrap();
    drop(d);
    assert_eq!(engine.status("k").unwrap()[0].used, 0);
}

#[test]
fn waiting_reserves_a_place_in_line() {
    let (engine, _) = engine(vec![("*", vec![("requests", rate("10/s", Some(1)))])]);
    let (d, _) = engine.acquire(&["k"], &[1], 0).unwrap();
    assert!(d.allowed && d.delay_ns == 0);
    let (d, _) = engine.acquire(&["k"], &[1], S).unwrap();
    assert_eq!((d.allowed, d.delay_ns), (true, S / 10));
    let (d, _) = engine.acquire(&["k"], &[1], S).unwrap();
    assert_eq!((d.allowed, d.delay_ns), (true, 2 * S / 10));
    let (d, _) = engine.acquire(&["k"], &[1], S / 10).unwrap();
    assert_eq!((d.allowed, d.retry_after_ns), (false, 3 * S / 10));
}

#[test]
fn quotas_reset_at_the_calendar_boundary() {
    let (engine, clock) = engine(vec![(
        "*",
        vec![(
            "cost_usd",
            LimitKind::Quota(QuotaParams {
                limit: 1000,
                period: Period::Day,
            }),
        )],
    )]);
    let (d, _) = engine.acquire(&["k"], &[800], 0).unwrap();
    assert!(d.allowed);
    let (d, _) = engine.acquire(&["k"], &[300], 0).unwrap();
    assert!(!d.allowed);
    // FakeClock starts at midnight UTC: the day ends in 24 h.
    assert_eq!(d.retry_after_ns, 86_400 * S);
    clock.advance(86_400 * S);
    let (d, _) = engine.acquire(&["k"], &[300], 0).unwrap();
    assert!(d.allowed);
}

/// State is kept as time (when the bucket drains), so a new burst applies to the level at
/// once, and a new rate keeps the drain time and refills at the new pace from then on.
#[test]
fn runtime_policy_changes_keep_state() {
    let (engine, clock) = engine(vec![("*", vec![("requests", rate("10/min", None))])]);
    for _ in 0..10 {
        assert!(engine.acquire(&["k"], &[1], 0).unwrap().0.allowed);
    }
    engine
        .set_policy(&spec(vec![("*", vec![("requests", rate("10/min", Some(20)))])]))
        .unwrap();
    assert_eq!(engine.status("k").unwrap()[0].remaining, 10);
    engine
        .set_policy(&spec(vec![("*", vec![("requests", rate("20/min", Some(10)))])]))
        .unwrap();
    let status = &engine.status("k").unwrap()[0];
    assert_eq!((status.remaining, status.reset_after_ns), (0, 60 * S));
    // 60 s of debt against a 30 s tolerance: the first unit frees up after 33 s.
    clock.advance(33 * S - 1);
    assert_eq!(engine.status("k").unwrap()[0].remaining, 0);
    clock.advance(1);
    assert_eq!(engine.status("k").unwrap()[0].remaining, 1);
}

#[test]
fn bad_input_is_an_error() {
    let (engine, _) = engine(vec![("*", vec![("requests", rate("10/min", None))])]);
    assert!(matches!(
        engine.acquire(&[""], &[1], 0),
        Err(CoreError::InvalidInput(_))
    ));
    let long = "x".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        engine.acquire(&[&long], &[1], 0),
        Err(CoreError::InvalidInput(_))
    ));
    assert!(matches!(engine.acquire(&[], &[1], 0), Err(CoreError::InvalidInput(_))));
    assert!(matches!(
        engine.acquire(&["a", "a"], &[1], 0),
        Err(CoreError::InvalidInput(_))
    ));
    let bad_dimension = spec(vec![("*", vec![("to kens", rate("1/s", None))])]);
    assert!(matches!(engine.set_policy(&bad_dimension), Err(CoreError::Config(_))));
    let bad_concurrency = spec(vec![("*", vec![("concurrency", LimitKind::Concurrency { max: 0 })])]);
    assert!(matches!(engine.set_policy(&bad_concurrency), Err(CoreError::Config(_))));
}

#[test]
fn each_layer_applies_its_first_matching_rule() {
    let clock = Arc::new(FakeClock::default());
    let mut policy = spec(vec![
        ("team:vip", vec![("requests", rate("100/min", None))]),
        ("team:*", vec![("requests", rate("2/min", None))]),
    ]);
    let budget = LimitKind::Quota(QuotaParams {
        limit: 10,
        period: Period::Day,
    });
    policy.rules.push(RuleSpec {
        pattern: "team:*".into(),
        limits: vec![LimitSpec {
            dimension: "cost_usd".into(),
            kind: budget,
        }],
        layer: 1,
    });
    let engine = Engine::new(Arc::new(new_store()), clock, &policy).unwrap();
    // team:vip gets its own rate rule in layer 0 and the team budget in layer 1.
    let status = engine.status("team:vip").unwrap();
    assert_eq!(
        status.iter().map(|s| s.dimension.as_str()).collect::<Vec<_>>(),
        ["requests", "cost_usd"]
    );
    assert_eq!(status[0].remaining, 100);
    assert!(engine.acquire(&["team:vip"], &[1, 6], 0).unwrap().0.allowed);
    let (d, _) = engine.acquire(&["team:vip"], &[1, 6], 0).unwrap();
    assert!(!d.allowed);
    assert_eq!(engine.policy().dimensions[d.limited_by.unwrap().dimension], "cost_usd");
}

/// A refund after an earlier charge was refunded never gives back capacity that drained.
#[test]
fn refunds_never_over_credit() {
    let (engine, clock) = engine(vec![("*", vec![("tokens", rate("20/s", Some(20)))])]);
    let (_, a) = engine.acquire(&["k"], &[10], 0).unwrap();
    let (_, b) = engine.acquire(&["k"], &[10], 0).unwrap();
    engine.cancel(&mut a.unwrap(), &["k"]).unwrap();
    clock.advance(S / 2);
    assert!(engine.acquire(&["k"], &[20], 0).unwrap().0.allowed);
    engine.cancel(&mut b.unwrap(), &["k"]).unwrap();
    // 20 admitted at this instant already: the burst allows no more.
    assert!(!engine.acquire(&["k"], &[10], 0).unwrap().0.allowed);
}

/// Usage reported far beyond anything a limit allows still leaves a working limiter.
#[test]
fn huge_usage_saturates_without_breaking_the_key() {
    let (engine, _) = engine(vec![("*", vec![("tokens", rate("30k/min", None))])]);
    let (_, r) = engine.acquire(&["k"], &[1], 0).unwrap();
    engine.commit(&mut r.unwrap(), &["k"], &[Some(u64::MAX / 2)]).unwrap();
    let (d, _) = engine.acquire(&["k"], &[1], 0).unwrap();
    assert!(!d.allowed && d.retry_after_ns > 0);
}

/// Budgets (and any layer but rate limits) are never queued ahead, whatever the wait allowed.
#[test]
fn only_rate_limits_queue_ahead() {
    let clock = Arc::new(FakeClock::default());
    let mut policy = spec(vec![("*", vec![("requests", rate("10/s", Some(1)))])]);
    policy.rules.push(RuleSpec {
        pattern: "*".into(),
        limits: vec![LimitSpec {
            dimension: "budget_usd".into(),
            kind: rate("10/h", Some(10)),
        }],
        layer: 1,
    });
    let engine = Engine::new(Arc::new(new_store()), clock, &policy).unwrap();
    assert!(engine.acquire(&["k"], &[1, 8], 0).unwrap().0.allowed);
    let (d, _) = engine.acquire(&["k"], &[1, 0], 10 * S).unwrap();
    assert!(d.allowed && d.delay_ns == S / 10, "rate limits queue");
    let (d, _) = engine.acquire(&["k"], &[0, 8], 10_000 * S).unwrap();
    assert!(!d.allowed, "a budget without room denies even with a long wait allowed");
}

/// Usage reported for a key's dimension is charged, not dropped, even when the key's cell
/// is swept away in between; charge_usage takes no concurrency slot.
#[test]
fn usage_is_charged_without_admission() {
    let (engine, _) = engine(vec![(
        "*",
        vec![
            ("tokens", rate("1000/min", None)),
            ("concurrency", LimitKind::Concurrency { max: 1 }),
        ],
    )]);
    let (_, held) = engine.acquire(&["k"], &[0], 0).unwrap();
    engine.charge_usage(&["k", "j"], &[Some(300)]).unwrap();
    for key in ["k", "j"] {
        assert_eq!(engine.status(key).unwrap()[0].used, 300);
    }
    assert_eq!(engine.status("k").unwrap()[1].used, 1);
    drop(held);
}

#[test]
fn a_policy_over_too_many_dimensions_is_a_config_error() {
    let names: Vec<String> = (0..=llmthrottle_core::policy::MAX_DIMENSIONS)
        .map(|i| format!("d{i}"))
        .collect();
    let limits = names.iter().map(|n| (n.as_str(), rate("1/s", None))).collect();
    let error = Engine::new(
        Arc::new(new_store()),
        Arc::new(FakeClock::default()),
        &spec(vec![("*", limits)]),
    )
    .err()
    .expect("too many dimensions");
    // In-process: the dimension limit; a shared table's registry of limits fills up first.
    assert!(
        matches!(error, CoreError::Config(ref m) if m.contains("dimensions"))
            || matches!(error, CoreError::State(ref m) if m.contains("registry is full")),
        "{error:?}"
    );
}

#[test]
fn a_replaced_policy_keeps_serving_and_counting() {
    let (engine, _clock) = engine(vec![("*", vec![("requests", rate("3/h", Some(3)))])]);
    let (_, kept) = engine.acquire(&["k"], &[1], 0).unwrap();
    for _ in 0..50 {
        engine
            .set_policy(&spec(vec![("*", vec![("requests", rate("3/h", Some(3)))])]))
            .unwrap();
    }
    // The state carried over every replacement: two more fit, the fourth does not.
    assert!(engine.acquire(&["k"], &[1], 0).unwrap().0.allowed);
    assert!(engine.acquire(&["k"], &[1], 0).unwrap().0.allowed);
    assert!(!engine.acquire(&["k"], &[1], 0).unwrap().0.allowed);
    // A reservation made under the first policy still settles.
    engine.cancel(&mut kept.unwrap(), &["k"]).unwrap();
    assert!(engine.acquire(&["k"], &[1], 0).unwrap().0.allowed);
}
