//! Token counting for llmthrottle.
