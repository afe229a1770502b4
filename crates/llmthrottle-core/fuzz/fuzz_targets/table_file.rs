#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // scripts/fuzz-table asks for the starting corpus: valid tables made on this host.
        if let Some(dir) = std::env::var_os("LLMTHROTTLE_FUZZ_SEED_DIR") {
            llmthrottle_fuzz::write_seeds(std::path::Path::new(&dir));
        }
    },
    |data: &[u8]| llmthrottle_fuzz::table_file(data)
);
