//! Test kit for multi-process clusters: the cluster orchestration of the workspace's test kit
//! (`testkit::cluster`: data and session nodes of the real binary on a random 127.x.y.z
//! prefix, SIGKILLed, paused and restarted, the membership they watch, reads through the
//! public API). It lives in the kit's library, where a helper that one test binary does not
//! use is not dead code; add cluster helpers there.

pub use testkit::cluster::*;
