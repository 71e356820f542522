//! Build facts: version, git revision and rustc, for `pinflow --version` and `pinflow_build_info`.

/// pinflow's version.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision it was built from (`unknown` outside git).
pub(crate) const REVISION: &str = env!("PINFLOW_GIT_REVISION");
/// `rustc --version` of the compiler that built it.
pub(crate) const RUSTC: &str = env!("PINFLOW_RUSTC_VERSION");
/// `pinflow -V`.
pub(crate) const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("PINFLOW_GIT_REVISION"),
    ", ",
    env!("PINFLOW_RUSTC_VERSION"),
    ")"
);
/// `pinflow --version`.
pub(crate) const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nrevision: ",
    env!("PINFLOW_GIT_REVISION"),
    "\nrustc: ",
    env!("PINFLOW_RUSTC_VERSION"),
);
