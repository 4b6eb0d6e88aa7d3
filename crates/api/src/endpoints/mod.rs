//! One module per API resource: turns a request body (and path id) into a VMM action, or a
//! GET into a read of the published snapshot.

pub mod actions;
pub mod balloon;
pub mod boot_source;
pub mod devices;
pub mod drives;
pub mod machine_config;
pub mod mmds;
pub mod network_interfaces;
pub mod pmem;
pub mod reads;
pub mod snapshot;
pub mod vm;
