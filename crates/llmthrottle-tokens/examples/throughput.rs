//! `cargo run --release -p llmthrottle-tokens --example throughput -- FILE`: MB/s (per CPU second) of
//! the exact counters and the estimator on one file, single thread (a quick check; the full comparison
//! with tiktoken is `benches/bench_tokens.py`).

/// This thread's CPU time in seconds: other processes on the machine do not inflate it.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: throughput FILE");
    let text = std::fs::read_to_string(path).expect("readable UTF-8 file");
    for name in llmthrottle_tokens::ENCODING_NAMES {
        let enc = llmthrottle_tokens::get_encoding(name).expect("built-in");
        let best = |f: &dyn Fn() -> usize| {
            let mut best = f64::MAX;
            let mut result = 0;
            for _ in 0..5 {
                let start = thread_cpu_seconds();
                result = f();
                best = best.min(thread_cpu_seconds() - start);
            }
            (result, text.len() as f64 / best / 1e6)
        };
        let (count, count_mbs) = best(&|| enc.count(&text));
        // THROUGHPUT_COUNT_ONLY=1 skips encode (for profiling the counter alone).
        let count_only = std::env::var_os("THROUGHPUT_COUNT_ONLY").is_some();
        let (_, encode_mbs) = if count_only {
            (0, 0.0)
        } else {
            best(&|| enc.encode(&text).len())
        };
        let (estimate, estimate_mbs) = best(&|| enc.estimate(std::hint::black_box(&text)));
        println!(
            "{name}: count {count} at {count_mbs:.0} MB/s, encode {encode_mbs:.0} MB/s, \
             estimate {estimate} at {estimate_mbs:.0} MB/s"
        );
    }
}
