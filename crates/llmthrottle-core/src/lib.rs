//! llmthrottle core.
