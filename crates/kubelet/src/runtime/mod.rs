//! Containers on this node: OCI bundles ([`bundle`]), root filesystems stacked from image
//! layers ([`rootfs`]), `runc` ([`runc`]), and the per-container [`shim`] that owns each
//! container's output and exit status, and serves [`attach`]ed clients.

pub mod attach;
pub mod bundle;
pub mod console;
pub mod rootfs;
pub mod runc;
pub mod shim;
