//! Exposes the target interpreter's configuration as cfgs, as PyO3 sees it: `in_place`
//! recycles objects only where the GIL serialises threads (`not(Py_GIL_DISABLED)`).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
