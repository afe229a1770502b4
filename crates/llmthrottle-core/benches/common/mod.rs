//! What the core benchmarks share.

use llmthrottle_core::*;

/// One rule for every key: a rate limit so high that every call is admitted, per dimension.
pub fn admit_everything(dimensions: &[&str]) -> PolicySpec {
    let rate = RateParams::new(Rate::parse("1G/s").unwrap(), None).unwrap();
    PolicySpec {
        namespace: "bench".into(),
        rules: vec![RuleSpec {
            pattern: "*".into(),
            layer: 0,
            limits: dimensions
                .iter()
                .map(|d| LimitSpec {
                    dimension: (*d).into(),
                    kind: LimitKind::Rate(rate),
                })
                .collect(),
        }],
    }
}

/// One decision as the Python binding makes it: written into a fresh decision and reservation
/// (`Engine::acquire_into`), the reservation dropped unsettled.
#[inline]
pub fn acquire_in_place<S: Store>(engine: &Engine<S>, key: &str, amounts: &[u64]) -> bool {
    let mut decision = Decision::default();
    let mut reservation = Reservation::default();
    let admitted = engine
        .acquire_into(&[key], amounts, 0, &mut decision, &mut reservation)
        .unwrap();
    std::hint::black_box((&decision, &reservation));
    admitted
}
