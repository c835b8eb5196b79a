//! Recipes into sysext images: recipe model and lint, staging, filesystem
//! image writing, and the operations the `bakery` CLI drives.

pub mod build;
pub mod keygen;
pub mod recipe;
pub mod seal;
pub mod release;
pub mod squashfs;
pub mod stage;
pub mod tree;
pub mod elf;
pub mod fetch;
pub mod unpack;
