"""The engine: `core`, the only module that touches the C core's `ffi`/`lib`,
and the pure-Python twins of csrc/ (unwind, redirect, sched, text), each held
to its C counterpart by tests."""
