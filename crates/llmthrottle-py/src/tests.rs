//! The binding's own tests, on an interpreter started by the test binary: the module is built
//! as Python would import it, then driven from Python source. They run in both builds, with
//! and without `layout-tricks`, and check that the two behave alike.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

/// Runs `code` with the native module bound to `native`.
fn run(code: &std::ffi::CStr) {
    Python::attach(|py| {
        let module = PyModule::new(py, "_native").unwrap();
        crate::_native(&module).unwrap();
        let globals = PyDict::new(py);
        globals.set_item("native", module).unwrap();
        globals
            .set_item("layout_tricks", cfg!(feature = "layout-tricks"))
            .unwrap();
        if let Err(error) = py.run(code, Some(&globals), None) {
            error.display(py);
            panic!("the Python side failed: {error}");
        }
    });
}

#[test]
fn try_acquire_admits_up_to_the_limit_then_says_when_to_retry() {
    run(c"
rules = [('*', [('requests', 'rate', '2/min', None), ('tokens', 'rate', '1k/min', None)])]
lim = native.Limiter(rules)
first = lim.try_acquire('k', tokens=100)
assert first and first.reserved == {'requests': 1, 'tokens': 100}, first.reserved
assert lim.try_acquire('k', None, 200).remaining == {'requests': 0, 'tokens': 700}
denied = lim.try_acquire('k')
assert not denied and denied.limited_by == 'requests' and denied.retry_after > 0
assert lim.try_acquire(['a', 'b'], requests=2, max_wait=0)
first.cancel()
assert lim.try_acquire('k', tokens=1)
");
}

#[test]
fn try_acquire_refuses_bad_arguments_with_clear_errors() {
    run(c"
lim = native.Limiter([('*', [('requests', 'rate', '5/s', None)])])
def refused(kind, call):
    try:
        call()
    except kind as e:
        return str(e)
    raise AssertionError('accepted')
assert 'key' in refused(TypeError, lambda: lim.try_acquire())
assert 'multiple values' in refused(TypeError, lambda: lim.try_acquire('k', 1, requests=1))
refused(TypeError, lambda: lim.try_acquire('k', max_wait=None))
refused(TypeError, lambda: lim.try_acquire('k', 1, 2, 3))
refused(ValueError, lambda: lim.try_acquire('k', requests=-1))
refused(Exception, lambda: lim.try_acquire('k', nonesuch=1))
");
}

#[test]
fn try_acquire_shows_one_signature_in_either_build() {
    run(c"
import inspect
sig = str(inspect.signature(native.Limiter.try_acquire))
assert sig == '(self, key, /, requests=None, tokens=None, *, max_wait=0.0, **amounts)', sig
assert 'Decides at once' in native.Limiter.try_acquire.__doc__
before = native._results_built_in_place()
lim = native.Limiter([('*', [('requests', 'rate', '5/s', None)])])
lim.try_acquire('k'); lim.try_acquire('k')
after = native._results_built_in_place()
# The layout is learnt once per process: another test may have taught it already.
assert before in ((None, True) if layout_tricks else (False,)), before
assert after is layout_tricks, after
");
}
