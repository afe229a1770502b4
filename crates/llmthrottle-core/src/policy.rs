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
                return Err(CoreError::Config(format!(
                    "rule layer must be below {MAX_LAYERS}"
                )));
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
                    .filter(|l| {
                        l.dimension == limit.dimension
                            && l.kind.cell_kind() == limit.kind.cell_kind()
                    })
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

    /// The rules that apply to `key`: the first match in each layer.
    #[inline]
    pub fn rules_for<'p>(
        &'p self,
        key: &'p str,
    ) -> impl Iterator<Item = (usize, &'p Rule<S>)> + 'p {
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

fn validate_dimension(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(CoreError::Config(format!(
            "dimension name {name:?} must be 1-64 characters of letters, digits, '_', '-' or '.'"
        )))
    }
}

/// Glob match where `*` matches any (possibly empty) run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    if !pattern.contains('*') {
        return pattern == text;
    }
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let (last, middle) = parts.split_last().expect("pattern contains '*'");
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
    }
}
