//! Decisions over several keys and dimensions at once, all or nothing.
//!
//! A request is charged limit by limit, each with one compare-and-swap on its cell; when one
//! limit denies, every charge already made is given back before the denial is returned. So a
//! denied call charges nothing anywhere, and racing callers can never together exceed a limit
//! (each cell's own update is atomic); the price is that a caller may briefly see capacity that
//! a racing call is about to give back, and be denied where a serial order would have admitted.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::clock::{Clock, Now};
use crate::error::{CoreError, Result};
use crate::gcra::{self, RateOutcome};
use crate::limit::{key_too_long, LimitKind, MAX_KEY_BYTES, TOMBSTONE};
use crate::policy::{Limit, Policy, PolicySpec};
use crate::quota;
use crate::reservation::{add, refund, Charge, Held, Reservation};
use crate::store::{Hold, Store, Update};
use crate::versioned::Versioned;

/// The limit that decided a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitedBy {
    /// Index into the request's keys.
    pub key: usize,
    /// Index into the policy's dimensions.
    pub dimension: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Admitted, but to be used only after this wait (non-zero only when waiting was allowed).
    pub delay_ns: u64,
    /// Denied: the same request would be admitted after this long, if nothing else arrived.
    /// Zero when the denial came from a concurrency cap (it frees up on a release, not in time).
    pub retry_after_ns: u64,
    pub limited_by: Option<LimitedBy>,
    /// Time until every limit the request touched is back to full.
    pub reset_after_ns: u64,
    /// For each dimension the request was charged in: what is left, the least over keys.
    pub remaining: SmallVec<[(usize, u64); 3]>,
}

/// One key's state under one limit, for status and inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    pub dimension: String,
    pub kind: LimitKind,
    /// Amount that would be admitted right now.
    pub remaining: u64,
    /// Amount counted against the limit right now (in flight for concurrency).
    pub used: u64,
    pub reset_after_ns: u64,
}

struct Step<'k> {
    key_index: usize,
    key: &'k str,
    rule: u16,
    limit: u16,
    amount: u64,
}

pub struct Engine<S: Store> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    policy: Versioned<Policy<S>>,
    /// Serialises policy replacements, so each compiles against the dimensions of the last.
    policy_update: std::sync::Mutex<()>,
}

impl<S: Store> Engine<S> {
    pub fn new(store: Arc<S>, clock: Arc<dyn Clock>, spec: &PolicySpec) -> Result<Self> {
        let policy = Policy::compile(spec, &*store, &[])?;
        Ok(Self {
            store,
            clock,
            policy: Versioned::new(policy),
            policy_update: std::sync::Mutex::new(()),
        })
    }

    /// Replaces the limits; state of limits that keep their identity (namespace, rule pattern,
    /// dimension and kind) carries over, so a changed rate applies to the existing level.
    pub fn set_policy(&self, spec: &PolicySpec) -> Result<()> {
        let _serialised = self.policy_update.lock().unwrap_or_else(|e| e.into_inner());
        let policy = Policy::compile(spec, &*self.store, &self.policy.load().dimensions)?;
        self.policy.store(policy);
        Ok(())
    }

    /// The policy in force (a replaced one stays readable for as long as the engine lives).
    pub fn policy(&self) -> &Policy<S> {
        self.policy.load()
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// The monotonic clock always; the wall clock only when a calendar quota needs it.
    #[inline]
    fn now_for(&self, needs_wall: bool) -> Now {
        Now {
            monotonic_ns: self.clock.monotonic_ns(),
            wall_ns: if needs_wall { self.clock.wall_ns() } else { 0 },
        }
    }

    /// Tries to charge `amounts` (indexed by the policy's dimensions) to every limit of every key.
    /// With `max_wait_ns > 0`, a request that fits within that wait is admitted now, queued
    /// behind what was admitted before it, with `delay_ns` telling how long to wait.
    pub fn acquire(
        &self,
        keys: &[&str],
        amounts: &[u64],
        max_wait_ns: u64,
    ) -> Result<(Decision, Option<Reservation<S>>)> {
        let mut decision = Decision::default();
        let mut reservation = Reservation::default();
        let admitted = self.acquire_into(keys, amounts, max_wait_ns, &mut decision, &mut reservation)?;
        Ok((decision, admitted.then_some(reservation)))
    }

    /// [`Engine::acquire`] writing its answer where the caller keeps it: `decision` and
    /// `reservation` must be fresh (`Default`). Returns whether the call was admitted; when it
    /// was not, `reservation` holds nothing to settle. A caller that builds its own result
    /// object around the two (the Python binding does) saves moving them into it, which costs
    /// more than the decision's arithmetic.
    ///
    /// Tried and dropped: asking the store to prefetch every cell of the decision before
    /// reading the first (and before the clock), so that the cache misses of a decision among
    /// many keys overlap. With 100k keys in shared memory a 2-dim decision gained about 10%,
    /// 1 dim nothing, and every decision on a cached key paid 8-27 ns for the second hash and
    /// probe.
    pub fn acquire_into(
        &self,
        keys: &[&str],
        amounts: &[u64],
        max_wait_ns: u64,
        decision: &mut Decision,
        reservation: &mut Reservation<S>,
    ) -> Result<bool> {
        debug_assert!(reservation.charges.is_empty() && reservation.held.is_empty());
        let (policy_version, policy) = self.policy.load_indexed();
        let now = self.now_for(policy.has_quota);
        let mut steps = Steps::new();
        plan(policy, keys, amounts, &mut steps)?;
        let session = &mut self.store.session();
        reservation.policy_version = policy_version;
        reservation.generation = self.store.generation();
        reservation.settled = false;
        decision.allowed = true;
        for step in &steps {
            let limit = policy.limit_at(step.rule, step.limit);
            // Only rate limits (layer 0) queue a call ahead; a budget or other layer denies.
            let wait_ns = if policy.rules[step.rule as usize].layer == 0 {
                max_wait_ns
            } else {
                0
            };
            let outcome = self.charge(session, limit, step, now, wait_ns, reservation);
            match outcome {
                Ok(Some(admitted)) => {
                    let charge = reservation.charges.last().expect("charge() pushed it");
                    note_admitted(decision, limit, charge, admitted, now);
                }
                // Denied, or the store failed (a full table): either way nothing stays charged.
                Ok(None) | Err(_) => {
                    reservation.settled = true;
                    self.give_back_all(session, policy, reservation, keys, now);
                    reservation.release_held();
                    return match outcome {
                        Err(error) => Err(error),
                        Ok(_) => {
                            *decision = self.explain_denial(session, policy, &steps, step, now);
                            Ok(false)
                        }
                    };
                }
            }
        }
        Ok(true)
    }

    /// Reconciles `reservation` with real usage: `actual[d]` (by dimension index) replaces the
    /// reserved amount: less is refunded, more is charged even past the limit (it was used).
    /// Dimensions given as `None` keep what was reserved; usage in a dimension the request
    /// reserved nothing in is charged to every `keys`' limit on it. Releases concurrency slots.
    ///
    /// A charge that cannot be made (a full shared table has no room for a cell that was
    /// reclaimed meanwhile) does not stop the others: every other charge and refund is made,
    /// then the first such error is returned.
    pub fn commit(&self, reservation: &mut Reservation<S>, keys: &[&str], actual: &[Option<u64>]) -> Result<()> {
        let policy = self.settling(reservation, keys)?;
        let now = self.clock.now();
        let session = &mut self.store.session();
        reservation.release_held();
        let own = reservation.generation == self.store.generation();
        let mut failed = FirstError::default();
        for charge in &reservation.charges {
            let Some(used) = actual.get(charge.dimension as usize).copied().flatten() else {
                continue;
            };
            let (limit, key) = (policy.limit(charge), keys[charge.key_index as usize]);
            if let LimitKind::Concurrency { .. } = limit.kind {
                continue;
            }
            if used > charge.amount {
                failed.keep(self.force_charge(session, limit, key, now, used - charge.amount));
            } else if used < charge.amount && own {
                self.give_back(session, limit, key, charge, now, charge.amount - used);
            }
        }
        for (dimension, used) in actual.iter().enumerate() {
            let Some(used) = used.filter(|u| *u > 0) else {
                continue;
            };
            if reservation.charges.iter().any(|c| c.dimension as usize == dimension) {
                continue;
            }
            failed.keep(self.charge_dimension(session, policy, keys, dimension, used, now));
        }
        failed.into_result()
    }

    /// Marks `reservation` settled and returns the policy it was made under, after checking
    /// that it can be: not settled before, and `keys` name at least the keys it charged.
    fn settling(&self, reservation: &mut Reservation<S>, keys: &[&str]) -> Result<&Policy<S>> {
        if reservation.settled {
            return Err(CoreError::AlreadySettled);
        }
        if keys.len() < reservation.keys_needed() {
            return Err(CoreError::InvalidInput(format!(
                "settling a reservation needs the {} key(s) it was acquired for; {} given",
                reservation.keys_needed(),
                keys.len()
            )));
        }
        let policy = self
            .policy
            .get(reservation.policy_version)
            .filter(|policy| reservation.charges.iter().all(|c| policy.has_limit(c)))
            .ok_or_else(|| CoreError::InvalidInput("this reservation was made by another limiter".into()))?;
        reservation.settled = true;
        Ok(policy)
    }

    /// Gives `n` of `charge` back to `key`'s cell under `limit`, if the cell still exists.
    #[inline]
    fn give_back(&self, session: &mut S::Session<'_>, limit: &Limit<S>, key: &str, charge: &Charge, now: Now, n: u64) {
        self.store
            .update_existing_cell(session, &limit.scope, key, refund(limit.kind, charge, now, n));
    }

    /// Gives every charge of `reservation` back in full (its concurrency units are released
    /// separately, through `Reservation::release_held`).
    fn give_back_all(
        &self,
        session: &mut S::Session<'_>,
        policy: &Policy<S>,
        reservation: &Reservation<S>,
        keys: &[&str],
        now: Now,
    ) {
        if reservation.generation != self.store.generation() {
            return;
        }
        for charge in &reservation.charges {
            self.give_back(
                session,
                policy.limit(charge),
                keys[charge.key_index as usize],
                charge,
                now,
                charge.amount,
            );
        }
    }

    /// Charges usage that already happened (a call made without asking, or spend replayed from
    /// a ledger) to every limit of every key, in the dimensions given, even past the limits.
    /// Takes no concurrency slot. `actual` is indexed by the policy's dimensions. As in
    /// [`Engine::commit`], a charge that cannot be made does not stop the others.
    pub fn charge_usage(&self, keys: &[&str], actual: &[Option<u64>]) -> Result<()> {
        for key in keys {
            validate_key(key)?;
        }
        let policy = self.policy.load();
        let now = self.clock.now();
        let session = &mut self.store.session();
        let mut failed = FirstError::default();
        for (dimension, used) in actual.iter().enumerate() {
            if let Some(used) = used.filter(|u| *u > 0) {
                failed.keep(self.charge_dimension(session, policy, keys, dimension, used, now));
            }
        }
        failed.into_result()
    }

    fn charge_dimension(
        &self,
        session: &mut S::Session<'_>,
        policy: &Policy<S>,
        keys: &[&str],
        dimension: usize,
        used: u64,
        now: Now,
    ) -> Result<()> {
        let mut failed = FirstError::default();
        for key in keys {
            for limit in policy
                .rules_for(key)
                .flat_map(|(_, rule)| rule.limits.iter())
                .filter(|l| l.dimension == dimension)
            {
                failed.keep(self.force_charge(session, limit, key, now, used));
            }
        }
        failed.into_result()
    }

    /// Charges `amount` to `key`'s cell under `limit`, looking the key up again when a sweep
    /// reclaims the cell in between: usage that happened is never dropped.
    fn force_charge(
        &self,
        session: &mut S::Session<'_>,
        limit: &Limit<S>,
        key: &str,
        now: Now,
        amount: u64,
    ) -> Result<()> {
        while !self
            .store
            .update_cell(session, &limit.scope, key, now, add(limit.kind, now, amount))?
        {}
        Ok(())
    }

    /// The call never happened: gives every charge back and releases concurrency slots.
    /// `keys` are the keys it was acquired for.
    pub fn cancel(&self, reservation: &mut Reservation<S>, keys: &[&str]) -> Result<()> {
        let policy = self.settling(reservation, keys)?;
        let now = self.clock.now();
        let session = &mut self.store.session();
        reservation.release_held();
        self.give_back_all(session, policy, reservation, keys, now);
        Ok(())
    }

    /// What `acquire` would decide right now, without charging anything.
    pub fn peek(&self, keys: &[&str], amounts: &[u64]) -> Result<Decision> {
        let policy = self.policy.load();
        let now = self.clock.now();
        let mut steps = Steps::new();
        plan(policy, keys, amounts, &mut steps)?;
        let session = &mut self.store.session();
        let mut decision = Decision::default();
        if let Some((retry_after_ns, limited_by)) = self.worst_denial(session, policy, &steps, now) {
            decision.retry_after_ns = retry_after_ns;
            decision.limited_by = Some(limited_by);
        } else {
            decision.allowed = true;
            for step in &steps {
                let limit = policy.limit_at(step.rule, step.limit);
                let status = self.limit_status(session, policy, limit, step.key, now);
                let left = status.remaining.saturating_sub(step.amount);
                note_remaining(&mut decision, limit.dimension, left);
                let after = match limit.kind {
                    LimitKind::Rate(p) => status.reset_after_ns + p.cost_ns(step.amount),
                    _ => status.reset_after_ns,
                };
                decision.reset_after_ns = decision.reset_after_ns.max(after);
            }
        }
        Ok(decision)
    }

    /// The state of `key` under each limit of the rule that applies to it.
    /// The (key, limit, amount) steps a request would be charged, checked exactly as
    /// [`Engine::acquire`] checks them (keys, capacity), without touching the store: for a
    /// store outside this process (Redis) that makes the decision itself, by the same rules.
    pub fn plan(&self, keys: &[&str], amounts: &[u64]) -> Result<Vec<PlannedStep>> {
        let policy = self.policy.load();
        let mut steps = Steps::new();
        plan(policy, keys, amounts, &mut steps)?;
        Ok(steps
            .iter()
            .map(|s| planned(policy, s.key_index, s.rule, s.limit, s.amount))
            .collect())
    }

    /// Every limit that applies to `key`, as steps of amount 0 (for status).
    pub fn plan_limits(&self, key: &str) -> Result<Vec<PlannedStep>> {
        validate_key(key)?;
        let policy = self.policy.load();
        let mut steps = Vec::new();
        for (rule_index, rule) in policy.rules_for(key) {
            for limit_index in 0..rule.limits.len() {
                steps.push(planned(policy, 0, rule_index as u16, limit_index as u16, 0));
            }
        }
        Ok(steps)
    }

    /// The steps [`Engine::charge_usage`] would force: every limit of every key on each
    /// dimension with usage (concurrency caps take no usage).
    pub fn plan_usage(&self, keys: &[&str], actual: &[Option<u64>]) -> Result<Vec<PlannedStep>> {
        for key in keys {
            validate_key(key)?;
        }
        let policy = self.policy.load();
        let mut steps = Vec::new();
        for (key_index, key) in keys.iter().enumerate() {
            for (rule_index, rule) in policy.rules_for(key) {
                for (limit_index, limit) in rule.limits.iter().enumerate() {
                    let used = actual.get(limit.dimension).copied().flatten().unwrap_or(0);
                    if used > 0 && !matches!(limit.kind, LimitKind::Concurrency { .. }) {
                        steps.push(planned(policy, key_index, rule_index as u16, limit_index as u16, used));
                    }
                }
            }
        }
        Ok(steps)
    }

    pub fn status(&self, key: &str) -> Result<Vec<LimitStatus>> {
        validate_key(key)?;
        let policy = self.policy.load();
        let now = self.clock.now();
        let mut session = self.store.session();
        Ok(policy
            .rules_for(key)
            .flat_map(|(_, rule)| rule.limits.iter())
            .map(|limit| self.limit_status(&mut session, policy, limit, key, now))
            .collect())
    }

    fn limit_status(
        &self,
        session: &mut S::Session<'_>,
        policy: &Policy<S>,
        limit: &Limit<S>,
        key: &str,
        now: Now,
    ) -> LimitStatus {
        let value = self.current(session, limit, key);
        let dimension = policy.dimensions[limit.dimension].clone();
        let (remaining, used, reset_after_ns) = match limit.kind {
            LimitKind::Rate(p) => {
                let remaining = gcra::remaining(value, now.monotonic_ns, &p);
                (
                    remaining,
                    p.burst - remaining,
                    gcra::reset_after(value, now.monotonic_ns),
                )
            }
            LimitKind::Concurrency { max } => (max.saturating_sub(value), value, 0),
            LimitKind::Quota(q) => {
                let used = quota::used(value, q.period.index(now.wall_ns));
                let reset = if used > 0 {
                    q.period.remaining_ns(now.wall_ns)
                } else {
                    0
                };
                (q.limit.saturating_sub(used), used, reset)
            }
        };
        LimitStatus {
            dimension,
            kind: limit.kind,
            remaining,
            used,
            reset_after_ns,
        }
    }

    /// The value of `key`'s cell under `limit`, read without creating it (0: empty).
    fn current(&self, session: &mut S::Session<'_>, limit: &Limit<S>, key: &str) -> u64 {
        self.store
            .value(session, &limit.scope, key)
            .filter(|v| *v != TOMBSTONE)
            .unwrap_or(0)
    }

    /// One compare-and-swap loop on one cell. Admitted: the charge is pushed onto the
    /// reservation (built in place there) and what it left is returned; `Ok(None)` when the
    /// limit denies.
    #[inline]
    fn charge(
        &self,
        session: &mut S::Session<'_>,
        limit: &Limit<S>,
        step: &Step<'_>,
        now: Now,
        max_wait_ns: u64,
        reservation: &mut Reservation<S>,
    ) -> Result<Option<Admitted>> {
        if let LimitKind::Concurrency { max } = limit.kind {
            return self.hold(session, limit, step, now, max, reservation);
        }
        loop {
            let attempt = self
                .store
                .update_cell(session, &limit.scope, step.key, now, |current| {
                    if current == TOMBSTONE {
                        return Update::Keep(Attempt::Reclaimed);
                    }
                    let (next, mark, delay_ns) = match limit.kind {
                        LimitKind::Rate(p) => {
                            match gcra::decide(current, now.monotonic_ns, step.amount, &p, max_wait_ns) {
                                // The refundable part of a charge is measured from when it was
                                // made: a refund of an earlier charge can move this one's units
                                // earlier in the TAT, so its own end would over-state what is
                                // still undrained.
                                RateOutcome::Admit { new_tat, delay_ns } => {
                                    (new_tat, now.monotonic_ns + p.cost_ns(step.amount), delay_ns)
                                }
                                RateOutcome::Deny { .. } => return Update::Keep(Attempt::Denied),
                            }
                        }
                        LimitKind::Quota(q) => {
                            let index = q.period.index(now.wall_ns);
                            match quota::decide(current, index, step.amount, &q) {
                                Some(next) => (next, index, 0),
                                None => return Update::Keep(Attempt::Denied),
                            }
                        }
                        LimitKind::Concurrency { .. } => unreachable!("taken by Engine::hold"),
                    };
                    Update::Write(
                        next,
                        Attempt::Charged {
                            state: next,
                            mark,
                            delay_ns,
                        },
                    )
                })?;
            match attempt {
                Attempt::Charged { state, mark, delay_ns } => {
                    reservation.charges.push(Charge::new(step, limit, mark));
                    return Ok(Some(Admitted { state, delay_ns }));
                }
                Attempt::Denied => return Ok(None),
                Attempt::Reclaimed => {}
            }
        }
    }

    /// Takes one unit of a concurrency cap. The store takes the unit itself, so that a store
    /// shared between processes can record who holds it and give back the units of a process
    /// that dies; the reservation keeps the cell's handle to release it.
    fn hold(
        &self,
        session: &mut S::Session<'_>,
        limit: &Limit<S>,
        step: &Step<'_>,
        now: Now,
        max: u64,
        reservation: &mut Reservation<S>,
    ) -> Result<Option<Admitted>> {
        loop {
            let cell = self.store.cell(session, &limit.scope, step.key, now)?;
            match self.store.hold(&cell, max)? {
                Hold::Held { lease, count } => {
                    reservation.held.push(Held { cell, lease });
                    reservation.charges.push(Charge::new(step, limit, 0));
                    return Ok(Some(Admitted {
                        state: count,
                        delay_ns: 0,
                    }));
                }
                Hold::Full => return Ok(None),
                Hold::Reclaimed => {}
            }
        }
    }

    /// The limit that would deny the request now and when it would admit it, read without
    /// charging: the latest of every limit's own answer.
    fn worst_denial(
        &self,
        session: &mut S::Session<'_>,
        policy: &Policy<S>,
        steps: &[Step<'_>],
        now: Now,
    ) -> Option<(u64, LimitedBy)> {
        let mut worst: Option<(u64, LimitedBy)> = None;
        for step in steps {
            let limit = policy.limit_at(step.rule, step.limit);
            let value = self.current(session, limit, step.key);
            let retry = match limit.kind {
                LimitKind::Rate(p) => match gcra::decide(value, now.monotonic_ns, step.amount, &p, 0) {
                    RateOutcome::Admit { .. } => None,
                    RateOutcome::Deny { retry_after_ns } => Some(retry_after_ns),
                },
                LimitKind::Concurrency { max } => (value >= max).then_some(0),
                LimitKind::Quota(q) => {
                    let index = q.period.index(now.wall_ns);
                    quota::decide(value, index, step.amount, &q)
                        .is_none()
                        .then(|| q.period.remaining_ns(now.wall_ns))
                }
            };
            if let Some(retry) = retry {
                let by = LimitedBy {
                    key: step.key_index,
                    dimension: limit.dimension,
                };
                if worst.is_none_or(|(w, _)| retry > w) {
                    worst = Some((retry, by));
                }
            }
        }
        worst
    }

    fn explain_denial(
        &self,
        session: &mut S::Session<'_>,
        policy: &Policy<S>,
        steps: &[Step<'_>],
        denied: &Step<'_>,
        now: Now,
    ) -> Decision {
        let (retry_after_ns, limited_by) = self.worst_denial(session, policy, steps, now).unwrap_or_else(|| {
            // Every limit has room again: the denial came from a racing call that has since
            // given its charge back. Report the limit that denied, with nothing to wait for.
            let dimension = policy.limit_at(denied.rule, denied.limit).dimension;
            (
                0,
                LimitedBy {
                    key: denied.key_index,
                    dimension,
                },
            )
        });
        Decision {
            retry_after_ns,
            limited_by: Some(limited_by),
            ..Decision::default()
        }
    }
}

/// One step of a planned request: what a store outside this process needs to decide it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub key_index: usize,
    /// The limit's identity in every store (namespace, layer, pattern, kind, dimension).
    pub label: String,
    pub layer: u8,
    pub dimension: usize,
    pub kind: LimitKind,
    pub amount: u64,
}

fn planned<S: Store>(policy: &Policy<S>, key_index: usize, rule: u16, limit: u16, amount: u64) -> PlannedStep {
    let (layer, limit) = (policy.rules[rule as usize].layer, policy.limit_at(rule, limit));
    PlannedStep {
        key_index,
        label: limit.label.clone(),
        layer,
        dimension: limit.dimension,
        kind: limit.kind,
        amount,
    }
}

fn note_remaining(decision: &mut Decision, dimension: usize, left: u64) {
    match decision.remaining.iter_mut().find(|(d, _)| *d == dimension) {
        Some((_, value)) => *value = (*value).min(left),
        None => decision.remaining.push((dimension, left)),
    }
}

impl Charge {
    /// The charge of `step` under `limit`.
    #[inline(always)]
    fn new<S: Store>(step: &Step<'_>, limit: &Limit<S>, mark: u64) -> Self {
        Charge {
            rule: step.rule,
            limit: step.limit,
            dimension: limit.dimension as u16,
            key_index: step.key_index as u16,
            amount: step.amount,
            mark,
        }
    }
}

/// What one compare-and-swap loop on a cell came to.
enum Attempt {
    Charged {
        state: u64,
        mark: u64,
        delay_ns: u64,
    },
    Denied,
    /// The cell was reclaimed under the loop: look the key up again.
    Reclaimed,
}

/// What one admitted charge left behind, for the decision (not kept in the reservation).
struct Admitted {
    /// The cell's value right after the charge.
    state: u64,
    delay_ns: u64,
}

#[inline]
fn note_admitted<S: Store>(decision: &mut Decision, limit: &Limit<S>, charge: &Charge, admitted: Admitted, now: Now) {
    decision.delay_ns = decision.delay_ns.max(admitted.delay_ns);
    let state = admitted.state;
    let (left, reset) = match limit.kind {
        LimitKind::Rate(p) => (
            gcra::remaining(state, now.monotonic_ns, &p),
            gcra::reset_after(state, now.monotonic_ns),
        ),
        LimitKind::Concurrency { max } => (max.saturating_sub(state), 0),
        LimitKind::Quota(q) => (
            q.limit.saturating_sub(quota::used(state, charge.mark)),
            q.period.remaining_ns(now.wall_ns),
        ),
    };
    decision.reset_after_ns = decision.reset_after_ns.max(reset);
    note_remaining(decision, limit.dimension, left);
}

pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(CoreError::InvalidInput("key must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(key_too_long(key));
    }
    Ok(())
}

/// Most keys one call may name (a charge records its key's index in 16 bits).
pub const MAX_KEYS: usize = u16::MAX as usize;

type Steps<'k> = SmallVec<[Step<'k>; 4]>;

/// The first error of a settling that goes on past failures: usage that happened is charged
/// wherever it can be, and the caller still learns that some of it could not be.
#[derive(Default)]
struct FirstError(Option<CoreError>);

impl FirstError {
    fn keep(&mut self, result: Result<()>) {
        if let Err(error) = result {
            self.0.get_or_insert(error);
        }
    }

    fn into_result(self) -> Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Every (key, limit) pair the request touches with a non-zero amount, checked for capacity
/// before anything is charged. Fills the caller's `steps` (returning them would copy them).
#[inline]
fn plan<'k, S: Store>(policy: &Policy<S>, keys: &[&'k str], amounts: &[u64], steps: &mut Steps<'k>) -> Result<()> {
    if keys.is_empty() {
        return Err(CoreError::InvalidInput("at least one key is required".into()));
    }
    if keys.len() > MAX_KEYS {
        return Err(CoreError::InvalidInput(format!(
            "{} keys given; at most {MAX_KEYS} are allowed in one call",
            keys.len()
        )));
    }
    for (key_index, key) in keys.iter().enumerate() {
        validate_key(key)?;
        if keys[..key_index].contains(key) {
            return Err(CoreError::InvalidInput(format!("key {key:?} is given twice")));
        }
        for (rule_index, rule) in policy.rules_for(key) {
            for (limit_index, limit) in rule.limits.iter().enumerate() {
                let amount = match limit.kind {
                    LimitKind::Concurrency { .. } => 1,
                    _ => amounts.get(limit.dimension).copied().unwrap_or(0),
                };
                if amount == 0 {
                    continue;
                }
                if amount > limit.kind.capacity() {
                    return Err(CoreError::ExceedsCapacity {
                        key: (*key).to_owned(),
                        dimension: policy.dimensions[limit.dimension].clone(),
                        requested: amount,
                        capacity: limit.kind.capacity(),
                    });
                }
                steps.push(Step {
                    key_index,
                    key,
                    rule: rule_index as u16,
                    limit: limit_index as u16,
                    amount,
                });
            }
        }
    }
    Ok(())
}
