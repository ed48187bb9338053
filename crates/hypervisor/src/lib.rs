//! Everything that touches a hypervisor or a container engine lives here, behind types that
//! the rest of vmfleet can hold without knowing QEMU, Firecracker or Docker.
//!
//! Today: the [`ImageCatalog`], the one place a request's image name becomes a file path.

mod catalog;

pub use catalog::{CatalogError, CatalogImage, ImageCatalog};
