//! Which limits apply to which keys: rules of (key pattern, limits), compiled against a store.

use crate::error::{CoreError, Result};
use crate::limit::LimitKind;
use crate::store::Store;

/// One limit as configured: a dimension name (`requests`, `tokens`, `cost_usd`, ...) and a kind.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    pub dimension: String,
    pub kind: LimitKind,
}

/// Limits for every key that matches `pattern` (`*` matches any run of characters).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub pattern: String,
    pub limits: Vec<LimitSpec>,
    /// Rules form independent layers (rate limits, budgets, ...): in each layer, the first
    /// rule whose pattern matches a key applies to it.
    pub layer: u8,
}

/// The most dimensions one limiter may name (a charge records its dimension in 16 bits).
pub const MAX_DIMENSIONS: usize = 4096;

/// The most layers a policy may use.
pub const MAX_LAYERS: u8 = 8;

/// A whole policy: in each layer, the first rule whose pattern matches a key applies to it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicySpec {
    /// Separates limiters that share one store; limiters with the same namespace, rule pattern
    /// and limit share state (that is how processes agree on one limit).
    pub namespace: String,
    pub rules: Vec<RuleSpec>,
}

pub struct Limit<S: Store> {
    pub dimension: usize,
    pub kind: LimitKind,
    pub label: String,
    pub(crate) scope: S::Scope,
}

pub struct Rule<S: Store> {
    pub pattern: String,
    pub layer: u8,
    pub limits: Vec<Limit<S>>,
}

pub struct Policy<S: Store> {
    /// Every dimension named by some limit, in first-seen order; amounts are indexed by it.
    pub dimensions: Vec<String>,
    pub rules: Vec<Rule<S>>,
    /// Whether any limit is a calendar quota (only then does a decision read the wall clock).
    pub has_quota: bool,
}

/// Name of the dimension that counts calls in flight.
pub const CONCURRENCY: &str = "concurrency";

/// Dimensions named `*_usd` are dollars at the API and integer micro-dollars inside.
pub fn units_per_api_unit(dimension: &str) -> u64 {
    if dimension.ends_with("_usd") {
        1_000_000
    } else {
        1
    }
}

impl<S: Store> Policy<S> {
    /// Compiles `spec`; dimensions listed in `known_dimensions` keep their indexes (a policy
    /// replaced at runtime only ever appends dimensions, so cached indexes stay valid).
    pub fn compile(spec: &PolicySpec, store: &S, known_dimensions: &[String]) -> Result<Policy<S>> {
        if spec.namespace.contains('\x1f') {
            return Err(CoreError::Config("namespace may not contain \\x1f".into()));
        }
        let mut dimensions: Vec<String> = known_dimensions.to_vec();
        let mut rules = Vec::with_capacity(spec.rules.len());
        for rule in &spec.rules {
            if rule.pattern.is_empty() {
                return Err(CoreError::Config("a rule's key pattern is empty".into()));
            }
            if rule.layer >= MAX_LAYERS {
                return Err(CoreError::Config(format!("rule layer must be below {MAX_LAYERS}")));
            }
            let mut limits = Vec::with_capacity(rule.limits.len());
            for (position, limit) in rule.limits.iter().enumerate() {
                validate_dimension(&limit.dimension)?;
                let is_concurrency = matches!(limit.kind, LimitKind::Concurrency { .. });
                if is_concurrency != (limit.dimension == CONCURRENCY) {
                    return Err(CoreError::Config(format!(
                        "dimension {:?}: only the {CONCURRENCY:?} dimension caps calls in flight",
                        limit.dimension
                    )));
                }
                if let LimitKind::Concurrency { max: 0 } = limit.kind {
                    return Err(CoreError::Config("concurrency must be at least 1".into()));
                }
                let dimension = match dimensions.iter().position(|d| *d == limit.dimension) {
                    Some(i) => i,
                    None if dimensions.len() >= MAX_DIMENSIONS => {
                        return Err(CoreError::Config(format!(
                            "more than {MAX_DIMENSIONS} dimensions in one limiter"
                        )));
                    }
                    None => {
                        dimensions.push(limit.dimension.clone());
                        dimensions.len() - 1
                    }
                };
                // A limit's identity: the same in every process that configures it alike, and
                // unchanged when only its numbers change, so runtime changes keep state.
                let ordinal = rule.limits[..position]
                    .iter()
                    .filter(|l| l.dimension == limit.dimension && l.kind.cell_kind() == limit.kind.cell_kind())
                    .count();
                let cell_kind = limit.kind.cell_kind();
                let label = format!(
                    "{}\x1f{}\x1f{}\x1f{}:{}#{}",
                    spec.namespace,
                    rule.layer,
                    rule.pattern,
                    cell_kind.tag(),
                    limit.dimension,
                    ordinal
                );
                let scope = store.scope(&label, cell_kind)?;
                limits.push(Limit {
                    dimension,
                    kind: limit.kind,
                    label,
                    scope,
                });
            }
            rules.push(Rule {
                pattern: rule.pattern.clone(),
                layer: rule.layer,
                limits,
            });
        }
        let has_quota = rules
            .iter()
            .flat_map(|r: &Rule<S>| &r.limits)
            .any(|l| matches!(l.kind, LimitKind::Quota(_)));
        Ok(Policy {
            dimensions,
            rules,
            has_quota,
        })
    }

    /// The limit a charge was made under (a charge of this policy names a limit it has).
    #[inline]
    pub(crate) fn limit(&self, charge: &crate::reservation::Charge) -> &Limit<S> {
        self.limit_at(charge.rule, charge.limit)
    }

    /// Limit `limit` of rule `rule` (indexes this policy has).
    #[inline]
    pub(crate) fn limit_at(&self, rule: u16, limit: u16) -> &Limit<S> {
        &self.rules[rule as usize].limits[limit as usize]
    }

    /// Whether this policy has the limit `charge` names.
    pub(crate) fn has_limit(&self, charge: &crate::reservation::Charge) -> bool {
        self.rules
            .get(charge.rule as usize)
            .is_some_and(|rule| (charge.limit as usize) < rule.limits.len())
    }

    /// The rules that apply to `key`: the first match in each layer.
    #[inline]
    pub fn rules_for<'p>(&'p self, key: &'p str) -> impl Iterator<Item = (usize, &'p Rule<S>)> + 'p {
        let mut matched_layers = 0u8;
        self.rules.iter().enumerate().filter(move |(_, rule)| {
            let bit = 1u8 << rule.layer;
            if matched_layers & bit == 0 && glob_match(&rule.pattern, key) {
                matched_layers |= bit;
                true
            } else {
                false
            }
        })
    }

    pub fn dimension_index(&self, name: &str) -> Option<usize> {
        self.dimensions.iter().position(|d| d == name)
    }
}

/// True for 1 to `max_bytes` letters, digits, `_`, `-` or `.`: the alphabet of dimension names
/// and shared-state names.
pub(crate) fn is_plain_name(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn validate_dimension(name: &str) -> Result<()> {
    if is_plain_name(name, 64) {
        Ok(())
    } else {
        Err(CoreError::Config(format!(
            "dimension name {name:?} must be 1-64 characters of letters, digits, '_', '-' or '.'"
        )))
    }
}

/// Glob match where `*` matches any (possibly empty) run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Runs on every decision, once per rule tried: no allocation, and the catch-all first.
    if pattern == "*" {
        return true;
    }
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    // The text between the prefix and the suffix must hold every middle part, in order; taking
    // each at its leftmost place leaves the most room for the rest.
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in middle.split('*').filter(|part| !part.is_empty()) {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("user:*", "user:42"));
        assert!(!glob_match("user:*", "team:1"));
        assert!(glob_match("*:gpt-4o", "model:gpt-4o"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("ab*ab", "abab"));
        assert!(!glob_match("ab*ab", "aba"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(glob_match("a**b", "ab"));
        assert!(!glob_match("ab*b", "ab"));
    }

    /// The reference: whether `pattern` matches `text` when `*` stands for any run of bytes,
    /// by trying every split (exponential, fine for short strings).
    fn reference(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        #[cfg_attr(miri, ignore = "proptest reads the working directory, which miri isolates; safe code")]
        fn globs_match_the_reference(pattern in "[ab*]{0,7}", text in "[ab]{0,9}") {
            proptest::prop_assert_eq!(
                glob_match(&pattern, &text),
                reference(pattern.as_bytes(), text.as_bytes())
            );
        }
    }
}
