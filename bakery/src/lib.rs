//! Recipes into sysext images: recipe model and lint, staging, filesystem
//! image writing, and the operations the `bakery` CLI drives.

pub mod tree;
