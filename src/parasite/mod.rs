//! The embedded no_std blobs (built from `parasite/` by `build.rs`) and the code that drives
//! them: the dump parasite, injected into a frozen task, and the restorer, which switches a
//! restored task to its final address space.

pub mod blob;
