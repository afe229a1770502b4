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
