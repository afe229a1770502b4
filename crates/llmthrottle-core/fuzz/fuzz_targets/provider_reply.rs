#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmthrottle_fuzz::provider_reply(data));
