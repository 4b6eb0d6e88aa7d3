//! One module per API resource: turns a request body (and path id) into a VMM action. GETs
//! are reads of the snapshot the VMM loop published (`reads`), whatever their resource.

pub(crate) mod actions;
pub(crate) mod balloon;
pub(crate) mod boot_source;
pub(crate) mod cpu_config;
pub(crate) mod drives;
pub(crate) mod entropy;
pub(crate) mod hotplug_memory;
pub(crate) mod logger;
pub(crate) mod machine_config;
pub(crate) mod metrics;
pub(crate) mod mmds;
pub(crate) mod network_interfaces;
pub(crate) mod pmem;
pub(crate) mod reads;
pub(crate) mod serial;
pub(crate) mod snapshot;
pub(crate) mod vm;
pub(crate) mod vsock;
