//! What an admitted request holds: its charges, so that real usage can be reconciled later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::clock::{Clock, Now};
use crate::error::{CoreError, Result};
use crate::gcra;
use crate::limit::{LimitKind, TOMBSTONE};
use crate::policy::Policy;
use crate::quota;
use crate::store::Store;

/// One admitted charge on one cell.
pub struct Charge<S: Store> {
    pub(crate) cell: S::Cell,
    pub(crate) rule: u16,
    pub(crate) limit: u16,
    pub(crate) dimension: usize,
    pub(crate) amount: u64,
    /// Rate: the TAT right after this charge; quota: the period it was charged in.
    pub(crate) mark: u64,
    pub(crate) delay_ns: u64,
    /// The cell's value right after this charge.
    pub(crate) state: u64,
}

/// Applies `update` to `cell` with a compare-and-swap loop; a reclaimed cell is left alone
/// (whatever it held has expired, so there is nothing to give back).
fn update(cell: &AtomicU64, update: impl Fn(u64) -> u64) {
    let mut current = cell.load(Ordering::Acquire);
    while current != TOMBSTONE {
        match cell.compare_exchange_weak(current, update(current), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

fn add<S: Store>(cell: &AtomicU64, kind: LimitKind, now: Now, n: u64) {
    match kind {
        LimitKind::Rate(p) => update(cell, |tat| gcra::force(tat, now.monotonic_ns, n, &p)),
        LimitKind::Quota(q) => {
            let index = q.period.index(now.wall_ns);
            update(cell, |state| quota::force(state, index, n));
        }
        LimitKind::Concurrency { .. } => {}
    }
}

impl<S: Store> Charge<S> {
    fn kind(&self, policy: &Policy<S>) -> LimitKind {
        policy.rules[self.rule as usize].limits[self.limit as usize].kind
    }

    /// Returns `n` of this charge's amount (for a concurrency cap: releases the slot).
    pub(crate) fn give_back(&self, policy: &Policy<S>, now: Now, n: u64) {
        match self.kind(policy) {
            LimitKind::Rate(p) => update(&self.cell, |tat| {
                gcra::refund(tat, now.monotonic_ns, n, self.mark, &p)
            }),
            LimitKind::Concurrency { .. } => update(&self.cell, |count| count.saturating_sub(1)),
            LimitKind::Quota(_) => {
                let index = match self.kind(policy) {
                    LimitKind::Quota(q) => q.period.index(now.wall_ns),
                    _ => unreachable!(),
                };
                update(&self.cell, |state| quota::refund(state, index, self.mark, n));
            }
        }
    }
}

/// An admitted request's charges. Commit reconciles them with real usage, cancel gives all
/// back; dropping an unsettled reservation keeps the charges as made and releases its
/// concurrency slots, so a forgotten reservation can never leak capacity.
pub struct Reservation<S: Store> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    policy: Arc<Policy<S>>,
    /// The request's keys, joined; `key_ends[i]` is where key `i` ends.
    keys: String,
    key_ends: SmallVec<[usize; 2]>,
    charges: SmallVec<[Charge<S>; 4]>,
    settled: bool,
}

impl<S: Store> Reservation<S> {
    pub(crate) fn new(
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        policy: Arc<Policy<S>>,
        keys: &[&str],
        charges: SmallVec<[Charge<S>; 4]>,
    ) -> Self {
        let mut joined = String::with_capacity(keys.iter().map(|k| k.len()).sum());
        let mut key_ends = SmallVec::new();
        for key in keys {
            joined.push_str(key);
            key_ends.push(joined.len());
        }
        Self {
            store,
            clock,
            policy,
            keys: joined,
            key_ends,
            charges,
            settled: false,
        }
    }

    /// The policy the reservation was admitted under (its dimensions index `commit`'s amounts).
    pub fn policy(&self) -> &Arc<Policy<S>> {
        &self.policy
    }

    pub fn is_settled(&self) -> bool {
        self.settled
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.key_ends.iter().map(move |&end| {
            let key = &self.keys[start..end];
            start = end;
            key
        })
    }

    /// The amount reserved in `dimension` (the largest over keys).
    pub fn reserved(&self, dimension: usize) -> u64 {
        self.charges
            .iter()
            .filter(|c| c.dimension == dimension)
            .map(|c| c.amount)
            .max()
            .unwrap_or(0)
    }

    /// Reconciles with real usage: `actual[d]` (by the reservation policy's dimensions) replaces
    /// the reserved amount: less is refunded, more is charged even past the limit (it was used).
    /// Dimensions given as `None` keep what was reserved. Releases concurrency slots.
    pub fn commit(&mut self, actual: &[Option<u64>]) -> Result<()> {
        if self.settled {
            return Err(CoreError::AlreadySettled);
        }
        self.settled = true;
        let now = self.clock.now();
        for charge in &self.charges {
            match (charge.kind(&self.policy), actual.get(charge.dimension).copied().flatten()) {
                (LimitKind::Concurrency { .. }, _) => charge.give_back(&self.policy, now, 1),
                (_, None) => {}
                (kind, Some(used)) if used > charge.amount => {
                    add::<S>(&charge.cell, kind, now, used - charge.amount)
                }
                (_, Some(used)) => charge.give_back(&self.policy, now, charge.amount - used),
            }
        }
        self.charge_unreserved(actual, now)
    }

    /// Usage reported in a dimension the request reserved nothing in is charged as it is.
    fn charge_unreserved(&self, actual: &[Option<u64>], now: Now) -> Result<()> {
        for (dimension, used) in actual.iter().enumerate() {
            let Some(used) = used.filter(|u| *u > 0) else {
                continue;
            };
            if self.charges.iter().any(|c| c.dimension == dimension) {
                continue;
            }
            for key in self.keys() {
                let Some((_, rule)) = self.policy.rule_for(key) else {
                    continue;
                };
                for limit in rule.limits.iter().filter(|l| l.dimension == dimension) {
                    let cell = self.store.cell(&limit.scope, key, now)?;
                    add::<S>(&cell, limit.kind, now, used);
                }
            }
        }
        Ok(())
    }

    /// The call never happened: gives every charge back and releases concurrency slots.
    pub fn cancel(&mut self) -> Result<()> {
        if self.settled {
            return Err(CoreError::AlreadySettled);
        }
        self.settled = true;
        let now = self.clock.now();
        for charge in &self.charges {
            charge.give_back(&self.policy, now, charge.amount);
        }
        Ok(())
    }
}

impl<S: Store> Drop for Reservation<S> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let now = self.clock.now();
        for charge in &self.charges {
            if let LimitKind::Concurrency { .. } = charge.kind(&self.policy) {
                charge.give_back(&self.policy, now, 1);
            }
        }
    }
}

impl<S: Store> std::fmt::Debug for Reservation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("charges", &self.charges.len())
            .field("settled", &self.settled)
            .finish()
    }
}
