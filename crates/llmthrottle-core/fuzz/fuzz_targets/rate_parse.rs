#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmthrottle_fuzz::rate_parse(data));
